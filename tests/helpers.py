"""Small shared pieces of the tests."""
import ml_collections

from configs import fg_sbir_common


def tiny_config(dataset: str, tfds_dir: str, qmul_v1_dir: str,
                variants: str = 'tiny') -> ml_collections.ConfigDict:
  """The `tiny` variant (seconds per run) reading the real shared files."""
  config = fg_sbir_common.get_config(dataset, variants)
  config.data.tfds_data_dir = tfds_dir
  config.data.manual_dir = qmul_v1_dir
  return config
