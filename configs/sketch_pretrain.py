"""Sketch-a-Net pre-training on sketch recognition (TU-Berlin, QuickDraw).

  python -m sbir_jax.main --config=configs/sketch_pretrain.py:cpu
  python -m sbir_jax.main --config=configs/shoes.py:cpu,pretrained

The DSSA authors start from Sketch-a-Net pre-trained on TU-Berlin (250
classes, 20k sketches) and ImageNet edge maps; offline we pre-train on the
real sketches we have. Input size, normalisation and widths must equal the
FG-SBIR config that is initialised from this run, so the variants mirror
configs/fg_sbir_common.py's (`cpu` pairs with `cpu`).

Variants: cpu, tiny, quickdraw (add the QuickDraw bitmaps as more classes).
"""
import ml_collections

from configs import fg_sbir_common


def _apply_variant(config: ml_collections.ConfigDict, variant: str) -> None:
  if variant == 'cpu':  # Same inputs as fg_sbir_common's `cpu`.
    config.data.update(fg_sbir_common.CPU_INPUTS)
    config.input_scale = 1.0 / 255.0
    config.batch_size = 64
    config.num_train_steps = 1200
    config.optimizer.name = 'adam'
    config.optimizer.learning_rate = 3e-4
    config.optimizer.momentum = 0.0
    config.checkpoint_every_steps = 200
    config.log_every_steps = 50
  elif variant == 'quickdraw':
    config.data.sources = ('tu_berlin', 'quickdraw')
  elif variant == 'tiny':  # Matches fg_sbir_common's `tiny`; for tests.
    config.data.update(fg_sbir_common.TINY_INPUTS)
    config.model.update(fg_sbir_common.TINY_WIDTHS)
    config.batch_size = 16
    config.num_train_steps = 4
    config.checkpoint_every_steps = 2
    config.log_every_steps = 1
    config.eval.batch_size = 64
    config.eval.num_views = 1
  else:
    raise ValueError(f'Unknown config variant {variant!r}. Known: cpu, quickdraw, tiny.')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.task = 'sketch_classification'
  config.seed = 0
  config.data = dict(
      sources=('tu_berlin',),
      tu_berlin_dir=fg_sbir_common.default_manual_dir('tu_berlin_40'),
      quickdraw_dir=fg_sbir_common.default_manual_dir('quickdraw_14'),
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
  config.optimizer = dict(name='sgd', learning_rate=1e-2, momentum=0.9,
                          weight_decay=0.0, grad_clip_norm=0.0)
  config.batch_size = 128
  config.num_train_steps = 10000
  config.eval = dict(num_views=10, ks=(1, 5), batch_size=128)
  config.log_every_steps = 100
  config.checkpoint_every_steps = 1000
  config.keep_latest = 1
  for variant in filter(None, (arg or '').split(',')):
    _apply_variant(config, variant.strip())
  config.lock()
  return config
