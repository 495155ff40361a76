"""CVAE, CAAE, regression, k-means and the closed-form ESZSL / SAE baselines."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.linalg

from sbir_jax.models import zs_baselines
from sbir_jax.models import zs_caae
from sbir_jax.models import zs_cvae
from sbir_jax.tasks.zs_sbir import task as zs_task

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


def test_caae_loss_adds_the_adversarial_term_to_the_reconstruction():
  out = dict(img_hat=jnp.ones((2, 3)), sketch_hat=jnp.zeros((2, 3)))
  fake_logits = jnp.zeros(2)  # D = 1/2: minimax term log(1/2).
  total, parts = zs_caae.caae_loss(out, jnp.zeros((2, 3)), jnp.ones((2, 3)),
                                   fake_logits, sketch_recon_weight=10.0,
                                   adversarial_weight=2.0)
  assert parts['recon'] == pytest.approx(1.0)
  assert parts['sketch_recon'] == pytest.approx(1.0)
  assert parts['adversarial'] == pytest.approx(-np.log(2), rel=1e-6)
  assert total == pytest.approx(1.0 + 10.0 - 2.0 * np.log(2), rel=1e-6)


# CAAE's one loss is the generator's plus the discriminator's (each player
# sees the other through stop_gradient): both are replaced for CAAE.
@pytest.mark.parametrize('variant,patched', [
    ('tiny', ((zs_cvae, 'cvae_loss'),)),
    ('tiny,caae', ((zs_caae, 'caae_loss'), (zs_caae, 'discriminator_loss')))])
def test_the_trainer_minimises_the_tested_loss(variant, patched, monkeypatch):
  """The trainer's step takes its loss, and the gradient it descends, from
  `cvae_loss` / `caae_loss` + `discriminator_loss` (tested here) and from
  nothing else: with the generator's loss replaced by a constant (and the
  discriminator's by 0), the step reports that constant and a zero gradient."""
  from configs import zs_sketchy
  from sbir_jax.core import sharding
  from sbir_jax.core import trainer
  calls = []

  def constant(module, name, value):
    real = getattr(module, name)

    def constant_loss(*args, **kwargs):
      loss, parts = real(*args, **kwargs)
      calls.append(name)
      return 0.0 * loss + value, parts
    monkeypatch.setattr(module, name, constant_loss)
  for i, (module, name) in enumerate(patched):
    constant(module, name, 123.0 if i == 0 else 0.0)
  config = zs_sketchy.get_config(variant)
  mesh = sharding.make_mesh()
  task = zs_task.ZsSbirTask(config, mesh)
  rng = np.random.default_rng(0)
  batch = {k: np.abs(rng.normal(size=(8, task.config.features.dim))).astype(np.float32)
           for k in ('sketch', 'photo')}
  state = trainer.create_state(task, config, mesh)
  _, metrics = trainer.make_train_step(task, config, mesh)(state, batch)
  assert calls == [name for _, name in patched]
  assert float(metrics['loss']) == 123.0
  assert float(metrics['grad_norm']) == 0.0


def test_one_trainer_step_moves_each_caae_player_by_its_own_loss():
  """CAAE's single loss: one trainer step moves the generator (encoder /
  decoder) by the gradient of `caae_loss` with the discriminator fixed, and
  the discriminator, at its own optimizer group's rate, by the gradient of
  `discriminator_loss` on fixed codes (a prior sample against the encoder's).
  Plain SGD so that each update is -rate x gradient."""
  from configs import zs_sketchy
  from sbir_jax.core import trainer
  config = zs_sketchy.get_config('tiny,caae')
  config.optimizer.name, config.optimizer.learning_rate = 'sgd', 0.1
  config.optimizer.groups.discriminator.learning_rate = 0.5  # Its own rate.
  # One device: which gradient moves which player does not depend on the
  # mesh, and one device compiles faster than eight.
  mesh = jax.make_mesh((1,), ('data',), devices=jax.devices()[:1])
  task = zs_task.ZsSbirTask(config, mesh)
  rng = np.random.default_rng(0)
  batch = {k: np.abs(rng.normal(size=(8, config.features.dim))).astype(np.float32)
           for k in ('sketch', 'photo')}
  state = trainer.create_state(task, config, mesh)
  params, model_state = jax.tree.map(np.asarray, (state.params, state.model_state))
  new_state, metrics = trainer.make_train_step(task, config, mesh)(state, batch)

  # The step's randomness: fold_in(seed, step), split as the task's loss does.
  r_noise, r_dropout, r_prior = jax.random.split(
      jax.random.fold_in(jax.random.key(config.seed), 0), 3)
  lcfg, img, sketch = config.loss, batch['photo'], batch['sketch']

  def forward(model_params):
    out, _ = task.model.apply({'params': model_params, **model_state}, img, sketch,
                              True, mutable=['batch_stats'],
                              rngs={'noise': r_noise, 'dropout': r_dropout})
    return out

  def generator_loss(model_params):
    out = forward(model_params)
    fake = task.disc.apply({'params': params['discriminator']}, out['z'])
    return zs_caae.caae_loss(out, img, sketch, fake, lcfg.sketch_recon_weight,
                             lcfg.adversarial_weight, config.model.adversarial_loss)[0]

  def discriminator_loss(disc_params):
    z_fake = forward(params['model'])['z']  # Codes of the generator before the step.
    z_real = jax.random.normal(r_prior, z_fake.shape)
    return zs_caae.discriminator_loss(task.disc.apply({'params': disc_params}, z_real),
                                      task.disc.apply({'params': disc_params}, z_fake))[0]

  # Jitted: one compilation instead of op-by-op dispatch.
  (gen_loss, g_model), g_disc = jax.jit(lambda p: (
      jax.value_and_grad(generator_loss)(p['model']),
      jax.grad(discriminator_loss)(p['discriminator'])))(params)
  for grads in (g_model, g_disc):  # Both players really move.
    assert float(optax.global_norm(grads)) > 1e-6
  for name, grads, rate in (('model', g_model, 0.1), ('discriminator', g_disc, 0.5)):
    jax.tree.map(lambda new, old, g: np.testing.assert_allclose(
        new, old - rate * g, rtol=1e-4, atol=1e-6),
        new_state.params[name], params[name], grads)
  np.testing.assert_allclose(float(metrics['loss']), float(metrics['generator_loss'])
                             + float(metrics['disc_loss']), rtol=1e-6)
  np.testing.assert_allclose(float(metrics['generator_loss']), float(gen_loss),
                             rtol=1e-5)


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
  centres = np.asarray(zs_task.kmeans(x, 2, 5))
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


# --- ESZSL and SAE against their papers, computed another way ------------------
# Shapes (D features, A semantic dims): D != A so a transposed map has the wrong
# shape, D == A so it has the right shape and must fail on its values. C = 4
# classes < A, as with word vectors (a singular S S^T, as in real use). The
# regularisers are distinct and large enough to move the solution, so a swap
# of gamma and lambda, or a lost (1 + lambda), changes it.
SHAPES = ((7, 5), (6, 6), (5, 8))


def _random_case(d, a, seed=0, n=40, c=4):
  rng = np.random.default_rng(seed)
  x_NxD = rng.normal(size=(n, d))
  x_NxD /= np.linalg.norm(x_NxD, axis=1, keepdims=True)  # As the task feeds them.
  labels_N = np.concatenate([np.arange(c), rng.integers(0, c, n - c)])
  semantic_CxA = rng.normal(size=(c, a))
  return x_NxD, labels_N, semantic_CxA


def _assert_minimises(objective, w, seed=1, directions=5):
  """w minimises the convex quadratic `objective`: every directional
  derivative at w is 0. For a quadratic the central difference with step 1 is
  the exact derivative; it is compared with the curvature along the same
  direction, which is far from 0."""
  rng = np.random.default_rng(seed)
  base = objective(w)
  for _ in range(directions):
    r = rng.normal(size=w.shape)
    slope = 0.5 * (objective(w + r) - objective(w - r))
    curvature = objective(w + r) + objective(w - r) - 2 * base
    assert curvature > 1e-3
    assert abs(slope) <= 1e-9 * curvature, (slope, curvature)


@pytest.mark.parametrize('d,a', SHAPES)
def test_eszsl_is_the_papers_closed_form_and_minimises_its_objective(d, a):
  """Romera-Paredes & Torr (ICML 2015), eq. (6) with the paper's shapes:
  X (d, m), Y (m, z) in {-1, 1}, S (a, z); V = (X X^T + g I)^-1 X Y S^T
  (S S^T + l I)^-1 minimises ||X^T V S - Y||^2 + g ||V S||^2 + l ||X^T V||^2
  + g l ||V||^2 (eq. (5), beta = gamma lambda)."""
  x_NxD, labels_N, semantic_CxA = _random_case(d, a)
  gamma, lam = 0.3, 4.0
  v = zs_baselines.eszsl_projection(x_NxD, labels_N, semantic_CxA, gamma, lam)
  assert v.shape == (d, a)
  x, s = x_NxD.T, semantic_CxA.T  # The paper's X (d, m) and S (a, z).
  y = np.where(labels_N[:, None] == np.arange(len(semantic_CxA))[None], 1.0, -1.0)

  def objective(v):
    return (np.sum((x.T @ v @ s - y) ** 2) + gamma * np.sum((v @ s) ** 2)
            + lam * np.sum((x.T @ v) ** 2) + gamma * lam * np.sum(v ** 2))
  _assert_minimises(objective, v)
  # The normal equations (X X^T + g I) V (S S^T + l I) = X Y S^T, solved as one
  # linear system: vec(P V Q) = (Q^T kron P) vec(V), column-major vec.
  p, q = x @ x.T + gamma * np.eye(d), s @ s.T + lam * np.eye(a)
  vec = np.linalg.solve(np.kron(q.T, p), (x @ y @ s.T).reshape(-1, order='F'))
  np.testing.assert_allclose(v, vec.reshape(d, a, order='F'), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize('d,a', SHAPES)
def test_sae_solves_the_papers_sylvester_equation_and_minimises_its_objective(d, a):
  """Kodirov et al. (CVPR 2017), eqs. (4)-(6) with X (d, N), S (k, N) and the
  encoder W (k, d): W minimises ||X - W^T S||^2 + l ||W X - S||^2, i.e. solves
  S S^T W + W (l X X^T) = (1 + l) S X^T (the released SAE.m:
  A = S*S', B = lambda*X*X', C = (1+lambda)*S*X', W = sylvester(A, B, C))."""
  x_NxD, labels_N, semantic_CxA = _random_case(d, a)
  lam = 0.2
  w_t = zs_baselines.sae_projection(x_NxD, labels_N, semantic_CxA, lam)
  assert w_t.shape == (d, a)  # W^T: a feature row x maps to x W^T.
  x, s = x_NxD.T, semantic_CxA[labels_N].T  # (d, N), (k, N).

  def objective(w):
    return np.sum((x - w.T @ s) ** 2) + lam * np.sum((w @ x - s) ** 2)
  _assert_minimises(objective, w_t.T)
  reference = scipy.linalg.solve_sylvester(s @ s.T, lam * x @ x.T, (1 + lam) * s @ x.T)
  np.testing.assert_allclose(w_t.T, reference, rtol=1e-8, atol=1e-10)


def test_symmetric_sylvester_solver_matches_the_equation():
  rng = np.random.default_rng(1)
  a = rng.normal(size=(4, 4)); a = a @ a.T
  b = rng.normal(size=(6, 6)); b = b @ b.T
  c = rng.normal(size=(4, 6))
  w = zs_baselines.solve_symmetric_sylvester(a, b, c)
  np.testing.assert_allclose(a @ w + w @ b, c, atol=1e-8)
