"""Triplet hinges on hand-built energies."""
import jax.numpy as jnp
import pytest

from sbir_jax import losses


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
