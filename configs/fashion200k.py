"""Composed query retrieval on Fashion200k (TIRG's layout, from a manual dir).

Variants as configs/css.py (models, losses, cpu, tiny). The data is not
obtainable offline: set --config.data.manual_dir to the release root
(labels/, the image folders, test_queries.txt), default $SBIR_JAX_DATA/fashion200k.
"""
import os

from configs import css
from configs import fg_sbir_common


def get_config(arg=None):
  return css.get_config(
      arg, source='fashion200k', image_size=224,  # TIRG's ResNet input size.
      manual_dir=os.path.join(fg_sbir_common.default_data_root(), 'fashion200k'))
