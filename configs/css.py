"""Composed query retrieval on CSS-style data (generated; not the CSS release).

`--config=configs/css.py:lbf_big,cpu`: comma-separated variants, in order, from
VARIANTS of configs/composed/common.py. Models: lbf_big (default), lbf_small,
tirg, image_only, text_only, concat. Losses: soft_triplet (default),
batch_classification. Sizes: cpu, tiny. Data: holdout (test texts focus on
(shape, colour) pairs never seen in train). LBF entities: object_boxes (the
scenes' object boxes instead of grid cells). Backbone: efficientnet.
"""
import ml_collections

from configs.composed import common

VARIANTS = common.VARIANTS


def get_config(arg: str | None = None, source: str = 'css_style', manual_dir: str = '',
               image_size: int = 64) -> ml_collections.ConfigDict:
  """configs/fashion200k.py and configs/mit_states.py used to call this with
  their source, data folder and image size (configs/composed/common.py now)."""
  return common.get_config(arg, source=source, manual_dir=manual_dir,
                           image_size=image_size)
