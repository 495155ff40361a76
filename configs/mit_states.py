"""Composed query retrieval on MIT-States (TIRG's layout, from a manual dir).

Variants as configs/css.py (models, losses, cpu, tiny). The data is not
obtainable offline: set --config.data.manual_dir to the release root (holding
images/<adjective> <noun>/), default $SBIR_JAX_DATA/mit_states.
"""
import os

from configs import css
from configs import fg_sbir_common


def get_config(arg=None):
  return css.get_config(
      arg, source='mit_states', image_size=224,  # TIRG's ResNet input size.
      manual_dir=os.path.join(fg_sbir_common.default_data_root(), 'mit_states'))
