"""Sketch-a-Net pre-training on sketch recognition (TU-Berlin, QuickDraw).

  python -m sbir_jax.main --config=configs/sketch_pretrain.py:cpu
  python -m sbir_jax.main --config=configs/shoes.py:cpu,pretrained

The DSSA authors start from Sketch-a-Net pre-trained on TU-Berlin (250
classes, 20k sketches) and ImageNet edge maps; offline we pre-train on the
real sketches we have. Input size, normalisation and widths must equal the
FG-SBIR config that is initialised from this run, so the variants mirror
configs/fg_sbir/common.py's (`cpu` pairs with `cpu`).

Variants (VARIANTS below): cpu, quickdraw (add the QuickDraw bitmaps as more
classes), tiny.
"""
import ml_collections

from configs import base
from configs import variants
from configs.fg_sbir import common as fg

VARIANTS: dict[str, variants.Spec] = {
    'cpu': {  # Same inputs as configs/fg_sbir/common.py's `cpu`.
        **variants.prefixed('data', fg.CPU_INPUTS),
        'input_scale': 1.0 / 255.0,
        **base.cpu_trainer(learning_rate=3e-4, batch_size=64,
                           num_train_steps=1200, checkpoint_every_steps=200),
        'optimizer.momentum': 0.0,
    },
    'quickdraw': {'data.sources': ('tu_berlin', 'quickdraw')},
    'tiny': {  # Matches configs/fg_sbir/common.py's `tiny`; for tests.
        **variants.prefixed('data', fg.TINY_INPUTS),
        **variants.prefixed('model', fg.TINY_WIDTHS),
        'batch_size': 16,
        **base.TINY_TRAINER,
        'eval.batch_size': 64,
        'eval.num_views': 1,
    },
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = base.base_config('sketch_classification', batch_size=128,
                            num_train_steps=10000)
  config.data = dict(
      sources=('tu_berlin',),
      tu_berlin_dir=base.default_manual_dir('tu_berlin_40'),
      quickdraw_dir=base.default_manual_dir('quickdraw_14'),
      tfds_data_dir=ml_collections.config_dict.placeholder(str),
      val_fraction=0.1,
      val_split_seed=0,
      load_size=256,
      crop_size=225,
      flip=True,
  )
  config.pixel_mean = 250.42  # As the FG-SBIR configs: the init must see the same inputs.
  config.input_scale = 1.0
  config.model = dict(fc6_dim=512, dropout_rate=0.5, width_multiplier=1.0)
  config.optimizer.update(name='sgd', learning_rate=1e-2, momentum=0.9)
  config.eval = dict(num_views=10, ks=(1, 5), batch_size=128)
  base.add_evals(config, type='accuracy_at_k', pred='distances')
  config.selection_metric = 'val_acc@1'
  variants.apply(config, arg, VARIANTS, 'configs/sketch_pretrain.py')
  config.lock()
  return config
