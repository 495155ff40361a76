"""A trunk fine-tuned on the Sketchy seen classes, for zero-shot features.

Zero-shot SBIR (configs/zs_sketchy.py) trains its generative models on fixed
features. Later work fine-tunes the backbone on the seen classes' sketch-photo
pairs first (e.g. SAKE, ICCV 2019); this config does that with the FG-SBIR
trainer: the Sketchy data of configs/zs_sketchy.py (default: the shared real
subset), each sketch paired with the photo it was drawn from, split by class
exactly as the zero-shot task splits it (same split file, validation
fraction and seed): it trains on the 88 training classes, selects its
checkpoint on the 16 validation classes (instance acc@1, 10 views) and never
sees a test (unseen) class in training. Its test split, the unseen classes'
pairs, is only reported. The zero-shot variant `finetuned_trunk` then
extracts features with the selected checkpoint.

Variants: VARIANTS of configs/fg_sbir/common.py, plus
- `zs_trunk_cpu`: the recipe for this 2-core CPU. RGB photos through
  `rgb_shared_stem` (one ImageNet EfficientNet-Lite0 for both domains, a stem
  per domain: the photo side starts as exactly the untrained ImageNet
  features the zero-shot table starts from), 129 px crops, the first 8
  backbone layers frozen (as the FG-SBIR `imagenet_cpu` recipe), a
  category-level triplet loss (anchor sketch, its photo, every batch photo of
  another class as a negative: `loss.negative_classes='other'`), the
  Euclidean energy on unit embeddings (so ranking by it is the cosine ranking
  the zero-shot task uses), 400 steps of 32 (about 30 minutes here).
- `zs_trunk_tiny`: seconds-long runs for tests.

  python -m sbir_jax.main --config=configs/sketchy_seen.py:zs_trunk_cpu \\
      --workdir=workdir/sketchy_seen_trunk
"""
import ml_collections

from configs import variants
from configs.fg_sbir import common
from configs.zs_sbir import common as zs_common
from sbir_jax.models import rgb_dssa

FROZEN_BACKBONE_LAYERS = 8


def _category_level(config: ml_collections.ConfigDict) -> None:
  variants.apply(config, 'rgb_shared_stem', common.VARIANTS, 'configs/fg_sbir/common.py')
  config.loss.energy = 'euclidean'
  config.loss.negatives = 'batch'
  config.loss.negative_classes = 'other'


def _zs_trunk_cpu(config: ml_collections.ConfigDict) -> None:
  variants.apply(config, 'cpu', common.VARIANTS, 'configs/fg_sbir/common.py')
  _category_level(config)
  config.model.frozen_backbone_layers = FROZEN_BACKBONE_LAYERS
  config.frozen = tuple(rgb_dssa.frozen_prefixes(FROZEN_BACKBONE_LAYERS))
  config.num_train_steps = 400
  config.checkpoint_every_steps = 50


def _zs_trunk_tiny(config: ml_collections.ConfigDict) -> None:
  variants.apply(config, 'tiny', common.VARIANTS, 'configs/fg_sbir/common.py')
  _category_level(config)


VARIANTS: dict[str, variants.Spec] = {
    **common.VARIANTS,
    'zs_trunk_cpu': _zs_trunk_cpu,
    'zs_trunk_tiny': _zs_trunk_tiny,
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return common.get_config('sketchy', arg, source='sketchy_seen', data_fields=dict(
      # The zero-shot task's data and class split (configs/zs_sketchy.py).
      manual_dir=zs_common.data_path('sketchy_zs_subset'),
      split_file=zs_common.data_path('zeroshot_splits', 'zeroshot_classes_sketchy.txt'),
      val_class_fraction=zs_common.VAL_CLASS_FRACTION,
      val_split_seed=zs_common.VAL_SPLIT_SEED,
      triplet_sampling='true_match',  # Sketchy has no triplet annotations.
  ), more_variants=VARIANTS)
