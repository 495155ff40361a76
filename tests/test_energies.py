"""The HOLEF expanded form equals its outer-subtraction definition."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sbir_jax.models import energies


def _energy(kind, dim, rng, perturb=True):
  module = energies.Energy(kind, dim)
  s = jax.random.normal(rng, (5, dim))
  params = module.init(rng, s, s)
  if perturb:  # Move away from the identity so the test is not trivial.
    params = jax.tree.map(
        lambda x: x + 0.3 * jax.random.normal(jax.random.key(7), x.shape), params)
  return module, params


def test_holef_expanded_equals_literal_definition():
  dim = 6
  module, params = _energy('holef', dim, jax.random.key(0))
  s = jax.random.normal(jax.random.key(1), (4, dim))
  p = jax.random.normal(jax.random.key(2), (3, dim))
  W = params['params']['W']
  literal = energies.holef_literal(W, s, p)
  expanded = module.apply(params, s, p, method=energies.Energy.pairwise)
  np.testing.assert_allclose(expanded, literal, rtol=1e-5, atol=1e-5)
  assert not np.allclose(W, np.eye(dim))


def test_holef_at_identity_is_squared_euclidean():
  module, params = _energy('holef', 5, jax.random.key(0), perturb=False)
  s = jax.random.normal(jax.random.key(1), (4, 5))
  p = jax.random.normal(jax.random.key(2), (3, 5))
  expected = jnp.sum((s[:, None] - p[None]) ** 2, -1)
  np.testing.assert_allclose(module.apply(params, s, p), expected, rtol=1e-5, atol=1e-5)
  assert float(module.apply(params, method=energies.Energy.regulariser)) == pytest.approx(0, abs=1e-5)


@pytest.mark.parametrize('kind', energies.ENERGIES)
def test_paired_is_diagonal_of_pairwise(kind):
  module, params = _energy(kind, 6, jax.random.key(3))
  s = jax.random.normal(jax.random.key(4), (5, 6))
  p = jax.random.normal(jax.random.key(5), (5, 6))
  pairwise = module.apply(params, s, p, method=energies.Energy.pairwise)
  paired = module.apply(params, s, p, method=energies.Energy.paired)
  np.testing.assert_allclose(paired, jnp.diagonal(pairwise), rtol=1e-4, atol=1e-4)


def test_mahalanobis_matches_definition():
  module, params = _energy('mahalanobis', 4, jax.random.key(0))
  M = params['params']['W']
  s = jax.random.normal(jax.random.key(1), (3, 4))
  p = jax.random.normal(jax.random.key(2), (2, 4))
  diff = s[:, None] - p[None]
  expected = jnp.einsum('bnd,de,bne->bn', diff, M.T @ M, diff)
  np.testing.assert_allclose(module.apply(params, s, p), expected, rtol=1e-4, atol=1e-4)


def test_holef_regulariser_value_and_gradient_at_identity():
  module, params = _energy('holef', 3, jax.random.key(0), perturb=False)
  grads = jax.grad(lambda v: module.apply(v, method=energies.Energy.regulariser))(params)
  assert np.all(np.isfinite(grads['params']['W']))
  W = params['params']['W'].at[0, 1].set(0.5)
  value = module.apply({'params': {'W': W}}, method=energies.Energy.regulariser)
  assert float(value) == pytest.approx(0.5 + 0.5, rel=1e-5)


def test_unknown_energy_is_refused():
  with pytest.raises(ValueError, match='Unknown energy'):
    energies.Energy('cosine', 4).init(jax.random.key(0), jnp.ones((1, 4)), jnp.ones((1, 4)))


def test_weighted_matches_its_literal_definition_with_nonnegative_weights():
  module, params = _energy('weighted', 6, jax.random.key(0))
  w = energies.weighted_energy_weights(params['params'][energies.WEIGHTED_PARAM])
  s = jax.random.normal(jax.random.key(1), (4, 6))
  p = jax.random.normal(jax.random.key(2), (3, 6))
  literal = jnp.sum(w[None, None] * (s[:, None] - p[None]) ** 2, axis=-1)
  np.testing.assert_allclose(module.apply(params, s, p), literal, rtol=1e-5, atol=1e-5)
  assert np.all(w >= 0) and not np.allclose(w, 1.0)


def test_weighted_starts_at_unit_weights():
  module, params = _energy('weighted', 4, jax.random.key(0), perturb=False)
  w = energies.weighted_energy_weights(params['params'][energies.WEIGHTED_PARAM])
  np.testing.assert_allclose(w, 1.0, rtol=1e-6)


@pytest.mark.parametrize('pre', [-60.0, -5.0, 0.0])
def test_weighted_gradients_are_finite_where_weights_reach_zero(pre):
  # softplus(-60) underflows to w = 0 in float32: the old sqrt(max(w, 0))
  # gave a NaN gradient there and training stopped.
  module = energies.Energy('weighted', 3)
  params = {'params': {energies.WEIGHTED_PARAM: jnp.full((3,), pre)}}
  s, p = jnp.array([[1.0, 0.0, 2.0]]), jnp.array([[1.0, 1.0, 0.0]])

  def loss(v, s):
    return (module.apply(v, s, p, method=energies.Energy.paired).sum()
            + module.apply(v, s, p, method=energies.Energy.pairwise).sum())

  grads_params, grads_s = jax.grad(loss, argnums=(0, 1))(params, s)
  assert np.all(np.isfinite(grads_params['params'][energies.WEIGHTED_PARAM]))
  assert np.all(np.isfinite(grads_s))
