"""Test setup: 8 simulated CPU devices (set before JAX starts) and the data root.

The real data lives outside the repo (default ../shared/data; set
SBIR_JAX_DATA to move it). Where it is absent, data tests skip and say how to
get it; with SBIR_JAX_REQUIRE_DATA=1 (as .ci/run sets) they fail instead.
"""
import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# One compilation cache per test run: the many tests that compile the same
# tiny models (every FG config's `tiny` variant is one DSSA) compile it once.
# Set through the environment, so the command-line runs that tests launch as
# subprocesses (train, then eval of the same checkpoint) share it too.
# SBIR_JAX_TEST_COMPILE_CACHE=0 turns it off.
if os.environ.get('SBIR_JAX_TEST_COMPILE_CACHE', '1') != '0':
  import tempfile  # noqa: E402
  os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                        tempfile.mkdtemp(prefix='sbir_jax_test_xla_cache_'))
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')

import jax  # noqa: E402  (after XLA_FLAGS)
import pytest  # noqa: E402

jax.config.update('jax_numpy_rank_promotion', 'raise')
REPO = os.path.dirname(os.path.abspath(__file__))
os.environ.setdefault('SBIR_JAX_DATA', os.path.join(REPO, '..', 'shared', 'data'))

from tests import helpers  # noqa: E402  (after SBIR_JAX_DATA is set)


@pytest.fixture(scope='session')
def qmul_v1_dir() -> str:
  return helpers.require_data('qmul_v1')


@pytest.fixture(scope='session')
def tfds_dir(tmp_path_factory) -> str:
  """One prepared TFDS data dir shared by all tests of a run."""
  return str(tmp_path_factory.mktemp('tfds'))
