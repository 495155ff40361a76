"""CVAE, CAAE, regression, k-means and the closed-form ESZSL / SAE baselines."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sbir_jax.models import zs_baselines
from sbir_jax.models import zs_caae
from sbir_jax.models import zs_cvae
from sbir_jax.tasks import zs_sbir

D = 12


def _cvae():
  return zs_cvae.CVAE(feature_dim=D, encoder_dims=(16, 8), latent_dim=4,
                      decoder_dims=(8,), regulariser_dims=(8,))


def test_cvae_shapes_bounds_and_per_example_noise():
  model = _cvae()
  x = jnp.ones((5, D))  # Five identical examples.
  variables = model.init({'params': jax.random.key(0), 'noise': jax.random.key(1)},
                         x, x, False)
  assert set(variables) == {'params', 'batch_stats'}
  # Paper widths: concat -> 16 -> 8 -> mu / logvar (4, tanh).
  assert variables['params']['encoder']['Dense_0']['kernel'].shape == (2 * D, 16)
  assert variables['params']['decoder']['Dense_0']['kernel'].shape == (4 + D, 8)
  out, _ = model.apply(variables, x, x, True, mutable=['batch_stats'],
                       rngs={'noise': jax.random.key(2), 'dropout': jax.random.key(3)})
  assert out['img_hat'].shape == out['sketch_hat'].shape == (5, D)
  assert jnp.all(jnp.abs(out['mu']) <= 1) and jnp.all(jnp.abs(out['logvar']) <= 1)
  assert jnp.all(out['img_hat'] >= 0)  # ReLU output, like fc7.
  # Identical inputs in eval mode: mu is the same, so z differs only by the
  # noise, which must differ per example (the released code shares one eps).
  out, _ = model.apply(variables, x, x, False, mutable=['batch_stats'],
                       rngs={'noise': jax.random.key(2)})
  np.testing.assert_allclose(out['mu'][0], out['mu'][1], rtol=1e-6)
  assert not np.allclose(out['z'][0], out['z'][1])


def test_kl_and_loss_terms():
  mu = jnp.array([[0.0, 0.0], [1.0, 0.0]])
  logvar = jnp.zeros((2, 2))
  np.testing.assert_allclose(zs_cvae.kl_to_standard_normal(mu, logvar), [0.0, 0.5])
  out = dict(img_hat=jnp.ones((2, 3)), sketch_hat=jnp.zeros((2, 3)), mu=mu, logvar=logvar)
  total, parts = zs_cvae.cvae_loss(out, jnp.zeros((2, 3)), jnp.ones((2, 3)))
  assert parts['recon'] == pytest.approx(1.0)
  assert parts['sketch_recon'] == pytest.approx(1.0)
  assert total == pytest.approx(1.0 + 0.25 + 10.0)


def test_caae_parts_and_adversarial_losses():
  model = zs_caae.CAAE(feature_dim=D, encoder_dims=(16, 8), latent_dim=4,
                       decoder_dims=(8,), regulariser_dims=(8,))
  x = jnp.ones((3, D))
  variables = model.init(jax.random.key(0), x, x, False)
  out = model.apply(variables, x, x, False)
  assert out['z'].shape == (3, 4)
  disc = zs_caae.Discriminator((8,))
  logits = disc.apply(disc.init(jax.random.key(1), out['z']), out['z'])
  assert logits.shape == (3,)
  # log(1 - D) at D = 1/2 is -log 2; non-saturating -log D is log 2.
  zero = jnp.zeros(2)
  np.testing.assert_allclose(zs_caae.generator_adversarial_loss(zero, 'minimax'),
                             -np.log(2), rtol=1e-6)
  np.testing.assert_allclose(zs_caae.generator_adversarial_loss(zero, 'non_saturating'),
                             np.log(2), rtol=1e-6)
  loss, acc = zs_caae.discriminator_loss(jnp.array([5.0]), jnp.array([-5.0]))
  assert loss < 0.02 and acc == 1.0
  with pytest.raises(ValueError, match='minimax or non_saturating'):
    zs_caae.generator_adversarial_loss(zero, 'wasserstein')


def test_kmeans_finds_two_clusters():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(10, 2)) * 0.01 + [5, 5]
  b = rng.normal(size=(10, 2)) * 0.01 - [5, 5]
  x = jnp.asarray(np.concatenate([a[:1], b[:1], a[1:], b[1:]]), jnp.float32)
  centres = np.asarray(zs_sbir.kmeans(x, 2, 5))
  np.testing.assert_allclose(sorted(centres[:, 0]), [b[:, 0].mean(), a[:, 0].mean()],
                             atol=1e-4)


def test_regression_maps_sketch_to_photo_dim():
  model = zs_baselines.Regression(feature_dim=7, hidden_dims=(5,))
  y = model.apply(model.init(jax.random.key(0), jnp.ones((2, 3))), jnp.ones((2, 3)))
  assert y.shape == (2, 7) and jnp.all(y >= 0)


def _separable(seed=0):
  rng = np.random.default_rng(seed)
  semantic = rng.normal(size=(3, 6))
  labels = np.repeat(np.arange(3), 20)
  mixing = rng.normal(size=(6, 10))
  x = semantic[labels] @ mixing + 0.01 * rng.normal(size=(60, 10))
  return x, labels, semantic


def test_eszsl_and_sae_project_onto_their_class_vectors():
  x, labels, semantic = _separable()
  for v in (zs_baselines.eszsl_projection(x, labels, semantic, 1e-3, 1e-3),
            zs_baselines.sae_projection(x, labels, semantic, 1e-3)):
    proj = x @ v
    predicted = np.argmax(proj @ semantic.T / np.linalg.norm(proj, axis=1,
                                                             keepdims=True), axis=1)
    assert np.mean(predicted == labels) == 1.0


def test_symmetric_sylvester_solver_matches_the_equation():
  rng = np.random.default_rng(1)
  a = rng.normal(size=(4, 4)); a = a @ a.T
  b = rng.normal(size=(6, 6)); b = b @ b.T
  c = rng.normal(size=(4, 6))
  w = zs_baselines.solve_symmetric_sylvester(a, b, c)
  np.testing.assert_allclose(a @ w + w @ b, c, atol=1e-8)
