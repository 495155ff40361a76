"""Composed query retrieval on Fashion200k (TIRG's layout, from a manual dir).

Variants as configs/css.py (VARIANTS of configs/composed/common.py). The data
is not obtainable offline: set --config.data.manual_dir to the release root
(labels/, the image folders, test_queries.txt), default $SBIR_JAX_DATA/fashion200k.
"""
import os

import ml_collections

from configs import base
from configs.composed import common

VARIANTS = common.VARIANTS


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return common.get_config(
      arg, source='fashion200k', image_size=224,  # TIRG's ResNet input size.
      manual_dir=os.path.join(base.default_data_root(), 'fashion200k'))
