"""Real-data check of ZS-SBIR here: QuickDraw doodles -> TU-Berlin sketches.

Not the paper's benchmark (that needs the full Sketchy data: zs_sketchy.py).
The 12 classes that the shared QuickDraw (14) and TU-Berlin (40) subsets have
in common are split, once and for all, into 8 seen and 4 unseen classes.
Queries are QuickDraw doodles (28x28, a few strokes: the sparse, abstract
side, as sketches are to photos), the gallery is TU-Berlin sketches (150x150,
detailed drawings: the richer side, playing the photos' role). The models
learn doodle -> TU-Berlin features on the seen classes (pairs drawn within a
class: the two sources have no instance-level pairs) and are tested on the
unseen ones; features are the ImageNet EfficientNet-Lite0's (at 128x128).

  train:  QuickDraw train doodles of the seen classes, paired with TU-Berlin
          train sketches of the same class
  val:    QuickDraw test doodles of the seen classes vs TU-Berlin test
          sketches of the seen classes (checkpoint selection; never unseen)
  test:   up to `max_queries_per_class` QuickDraw doodles (train + test files)
          of each unseen class vs all 80 TU-Berlin sketches of each unseen class

K is 50 (not the paper's 200): each unseen class has only 80 gallery items.
Widths are the paper's scaled by 1280 / 4096 (the feature dimension ratio),
so each model trains in a few minutes on a 2-core CPU.

  python -m sbir_jax.main --config=configs/zs_doodle.py:cvae
"""
import ml_collections

from configs import variants
from configs.zs_sbir import common

SEEN_CLASSES = ('ant', 'bicycle', 'cat', 'cloud', 'crown', 'elephant', 'lion', 'sheep')
UNSEEN_CLASSES = ('butterfly', 'camel', 'helicopter', 'pizza')

VARIANTS: dict[str, variants.Spec] = {
    **common.VARIANTS,
    'tiny': {
        **common.VARIANTS['tiny'],
        'data.max_train_sketches_per_class': 20,
        'data.max_queries_per_class': 10,
    },
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = common.base_config(eval_splits=('val', 'test'))
  config.data = dict(
      source='doodle',
      quickdraw_dir=common.data_path('quickdraw_14'),
      tu_berlin_dir=common.data_path('tu_berlin_40'),
      seen_classes=SEEN_CLASSES,
      unseen_classes=UNSEEN_CLASSES,
      max_train_sketches_per_class=0,  # 0 = all 289 training doodles.
      max_queries_per_class=150,  # Unseen test queries per class (of 299).
      semantic_file=common.data_path('zeroshot_splits', 'semantic_labels_tuberlin.npy'),
      vocab_file=common.data_path('zeroshot_splits', 'vocab_tuberlin.txt'),
  )
  # 28x28 doodles and 150x150 sketches hold no detail a 224 input would add;
  # 128 costs a third of the extraction time (our choice).
  config.features.image_size = 128
  common.scale_widths(config, config.features.dim)
  config.model.disc_dims = (256, 256)  # Our choice (paper silent).
  config.num_train_steps = 450  # 25 epochs (the paper's) of the 2,312 training doodles.
  config.checkpoint_every_steps = 150
  config.log_every_steps = 50
  config.eval.ks = (10, 50)
  variants.apply(config, arg, VARIANTS, 'configs/zs_doodle.py')
  config.lock()
  return config
