"""Triplet hinges on hand-built energies."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import fg_sbir_common
from sbir_jax import losses
from sbir_jax.core import sharding
from sbir_jax.tasks import fg_sbir


def test_triplet_hinge():
  value = losses.triplet_hinge(jnp.array([0.1, 1.0]), jnp.array([1.0, 0.2]), 0.3)
  # Anchor 0 is satisfied (0.3 + 0.1 - 1.0 < 0); anchor 1 costs 0.3 + 0.8.
  assert float(value) == pytest.approx((0.0 + 1.1) / 2)


def test_batch_negatives_hinge_ignores_invalid_pairs():
  energy = jnp.array([[0.1, 0.5, 0.2],
                      [0.9, 0.4, 0.0]])
  positive = jnp.array([0.1, 0.4])
  valid = jnp.array([[False, True, True],
                     [True, False, False]])
  # Valid hinges: max(0, .3+.1-.5)=0, max(0, .3+.1-.2)=.2, max(0, .3+.4-.9)=0.
  value = losses.batch_negatives_hinge(energy, positive, valid, 0.3)
  assert float(value) == pytest.approx(0.2 / 3)


def test_hardest_negative_hinge_takes_each_anchors_closest_valid_negative():
  energy = jnp.array([[0.1, 0.5, 0.2],
                      [0.9, 0.0, 0.0],
                      [0.3, 0.3, 0.3]])
  positive = jnp.array([0.1, 0.4, 0.2])
  valid = jnp.array([[False, True, True],
                     [True, False, False],
                     [False, False, False]])  # Anchor 2 has no negative.
  # Anchor 0: hardest valid 0.2 (the invalid 0.1 is skipped): .3+.1-.2 = .2;
  # anchor 1: only 0.9 is valid: max(0, .3+.4-.9) = 0.
  value = losses.hardest_negative_hinge(energy, positive, valid, 0.3)
  assert float(value) == pytest.approx(0.2 / 2)
  # The mean over all valid pairs is smaller: easy pairs dilute it.
  assert float(losses.batch_negatives_hinge(energy, positive, valid, 0.3)) < float(value)


def test_unknown_negatives_option_is_refused():
  config = fg_sbir_common.get_config('shoes', 'tiny')
  config.loss.negatives = 'hard'
  with pytest.raises(ValueError, match="config.loss.negatives='hard'.*'hardest'"):
    fg_sbir.Task(config, sharding.make_mesh())


def test_task_loss_with_hardest_negatives_is_at_least_the_batch_mean():
  # Same energies, two reductions: the hardest valid negative per anchor can
  # only raise the hinge above the mean over all valid pairs.
  config = fg_sbir_common.get_config('shoes', 'tiny,batch_negatives')
  rng = np.random.default_rng(0)
  size, b = config.data.crop_size, 8
  batch = {k: rng.integers(0, 256, (b, size, size, 1), np.uint8)
           for k in ('sketch', 'positive', 'negative')}
  batch.update({'positive_id': np.arange(b, dtype=np.int32),
                'match_id': np.arange(b, dtype=np.int32),
                'negative_id': np.arange(b, 2 * b, dtype=np.int32),
                'sketch_id': np.arange(b, dtype=np.int32)})
  hinges = {}
  for negatives in ('batch', 'hardest'):
    config.unlock()
    config.loss.negatives = negatives
    task = fg_sbir.Task(config, sharding.make_mesh())
    params, model_state = jax.jit(task.init_variables)(jax.random.key(0))
    _, (metrics, _) = jax.jit(task.loss_fn)(params, model_state, batch, jax.random.key(1))
    hinges[negatives] = float(metrics['hinge'])
  assert hinges['hardest'] > hinges['batch'] > 0, hinges
