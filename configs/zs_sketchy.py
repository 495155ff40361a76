"""ZS-SBIR on Sketchy (the paper's setting): 104 seen / 21 unseen classes.

Needs the full Sketchy database (+ Sketchy-Extended for the paper's gallery)
in a manual dir; see sbir_jax/datasets/sketchy.py for the layout. Variants:
cvae (default), caae, regression, kmeans, tiny (configs/zs_sbir_common.py),
and `sketchy_gallery` (retrieve from the Sketchy photos of the unseen classes
when Sketchy-Extended is not at hand; not the paper's gallery).

  python -m sbir_jax.main --config=configs/zs_sketchy.py:cvae \
      --config.data.manual_dir=/path/to/sketchy
"""
import ml_collections

from configs import fg_sbir_common
from configs import zs_sbir_common


def get_config(arg=None):
  config = zs_sbir_common.base_config()
  config.data = dict(
      source='sketchy',
      manual_dir=fg_sbir_common.default_manual_dir('sketchy'),
      tfds_data_dir=ml_collections.config_dict.placeholder(str),  # None = TFDS default.
      split_file=zs_sbir_common.data_path('zeroshot_splits',
                                          'zeroshot_classes_sketchy.txt'),
      # 'extended': Sketchy-Extended photos of the unseen classes (the paper);
      # 'sketchy': the Sketchy photos of the unseen classes.
      gallery='extended',
      # 0 = all. Caps keep CPU runs short; the paper uses every sketch.
      max_train_sketches_per_class=0,
      max_queries_per_class=0,
      semantic_file=zs_sbir_common.data_path('zeroshot_splits',
                                             'semantic_labels_sketchy.npy'),
      vocab_file=zs_sbir_common.data_path('zeroshot_splits', 'vocab_sketchy.txt'),
  )
  for variant in filter(None, (arg or '').split(',')):
    variant = variant.strip()
    if variant == 'sketchy_gallery':
      config.data.gallery = 'sketchy'
    elif not zs_sbir_common.apply_variant(config, variant):
      raise ValueError(f'Unknown config variant {variant!r}. Known: cvae, caae, '
                       'regression, kmeans, tiny, sketchy_gallery.')
    if variant == 'tiny':
      config.data.gallery = 'sketchy'
      config.data.max_train_sketches_per_class = 40
      config.data.max_queries_per_class = 16
  config.lock()
  return config
