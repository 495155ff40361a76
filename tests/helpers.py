"""Small shared pieces of the tests."""
import os

import ml_collections
import pytest

from configs import fg_sbir_common


def tiny_config(dataset: str, tfds_dir: str, qmul_v1_dir: str,
                variants: str = 'tiny',
                source: str = 'qmul_v1') -> ml_collections.ConfigDict:
  """The `tiny` variant (seconds per run) reading the real shared files
  (`qmul_v1_dir`: the manual dir of `source`)."""
  config = fg_sbir_common.get_config(dataset, variants, source=source)
  config.data.tfds_data_dir = tfds_dir
  config.data.manual_dir = qmul_v1_dir
  return config


def skip_or_fail(message: str) -> None:
  """Skips (a new user's run) or fails (CI sets SBIR_JAX_REQUIRE_DATA=1)."""
  if os.environ.get('SBIR_JAX_REQUIRE_DATA') == '1':
    pytest.fail(message)
  pytest.skip(message)


def require_data(relative: str) -> str:
  """$SBIR_JAX_DATA/<relative>, or a skip that says how to get the data."""
  path = os.path.join(os.environ['SBIR_JAX_DATA'], relative)
  if not os.path.exists(path):
    skip_or_fail(f'Real data not found at {path}. Put the shared data there '
                 '(README "Data" and ../shared/data/README.md name the public '
                 'repositories it comes from), or set SBIR_JAX_DATA to the '
                 f'folder that holds {relative.split("/")[0]}/.')
  return path


def evaluate_split(config: ml_collections.ConfigDict, task, variables: dict,
                   split: str) -> dict:
  """The metrics of config.evals' evaluator of `split` on `variables`, without
  the split prefix ({'acc@1': ..}, reported by the trainer as 'test_acc@1')."""
  from sbir_jax.core import evaluation  # JAX-heavy: only where a test needs it.
  evaluators = [e for e in evaluation.make_evaluators(config, task) if e.split == split]
  assert len(evaluators) == 1, f'config.evals has {len(evaluators)} evals of {split!r}'
  return evaluators[0].evaluator.run(variables)
