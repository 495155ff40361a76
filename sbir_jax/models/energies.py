"""Learnable retrieval energies of DSSA (ICCV 2017, Sec. 3.3, HOLEF).

Each energy gives D(s, p) between sketch and photo embeddings in two shapes:
`pairwise` for every sketch against every photo (ranking, (B, N)) and
`paired` for row-aligned pairs (triplet loss, (B,)). All are written so that
no (B, d, d) tensor is formed:

- euclidean:    sum_i (s_i - p_i)^2
- weighted:     sum_i w_i (s_i - p_i)^2, w initialised to 1. w >= 0 is
                kept by w = softplus(v) with v the parameter `w_pre_softplus`:
                a gradient exists everywhere (a clamp max(w, 0) has none once
                a weight reaches 0, and sqrt of it gives NaN there).
- mahalanobis:  ||M (s - p)||^2, i.e. W = M^T M, M initialised to I
- holef:        sum_ij W_ij (s_i - p_j)^2, W initialised to I. Expanding the
                square gives r.s^2 + c.p^2 - 2 s^T W p with r, c the row and
                column sums of W: one matrix product for all pairs.

The pieces of these expansions are plain functions (`squared_norms`,
`mahalanobis_map`, `holef_sketch_term`, `holef_photo_term`), shared with the
search-time scores of `tasks/fg_sbir/scoring.py`.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from sbir_jax.core import precision

ENERGIES = ('euclidean', 'weighted', 'mahalanobis', 'holef')
WEIGHTED_PARAM = 'w_pre_softplus'


def weighted_energy_weights(w_pre_softplus: jax.Array) -> jax.Array:
  """The weights w >= 0 of the weighted energy from its parameter."""
  return jax.nn.softplus(w_pre_softplus)


def _inverse_softplus_of_one(_, shape) -> jax.Array:
  """The parameter value at which every weight is 1 (the paper's start)."""
  return jnp.full(shape, jnp.log(jnp.expm1(1.0)))


def squared_norms(x_BxD: jax.Array) -> jax.Array:
  """||x||^2 of every row, (B,)."""
  return jnp.sum(x_BxD * x_BxD, axis=-1)


def mahalanobis_map(M_DxD: jax.Array, x_BxD: jax.Array) -> jax.Array:
  """Every row x -> M x: the mahalanobis energy is squared Euclidean after it."""
  return x_BxD @ M_DxD.T


def holef_sketch_term(W_DxD: jax.Array, s_BxD: jax.Array) -> jax.Array:
  """r.s^2 of the HOLEF expansion (r the row sums of W), (B,)."""
  return (s_BxD ** 2) @ W_DxD.sum(axis=1)


def holef_photo_term(W_DxD: jax.Array, p_NxD: jax.Array) -> jax.Array:
  """c.p^2 of the HOLEF expansion (c the column sums of W), (N,)."""
  return (p_NxD ** 2) @ W_DxD.sum(axis=0)


class Energy(nn.Module):
  """The energy named by `kind`, with its learnable parameters (if any)."""
  kind: str
  dim: int

  def setup(self):
    if self.kind not in ENERGIES:
      raise ValueError(f'Unknown energy {self.kind!r}; choose one of {ENERGIES} '
                       '(config.loss.energy).')
    if self.kind == 'weighted':
      self.w_pre_softplus = self.param(WEIGHTED_PARAM, _inverse_softplus_of_one,
                                       (self.dim,))
    elif self.kind in ('mahalanobis', 'holef'):
      self.W = self.param('W', lambda _, shape: jnp.eye(shape[0]),
                          (self.dim, self.dim))

  def _weighted_inputs(self, s: jax.Array, p: jax.Array):
    """Maps (s, p) so that the energy becomes squared Euclidean (or None)."""
    if self.kind == 'euclidean':
      return s, p
    if self.kind == 'mahalanobis':
      return mahalanobis_map(self.W, s), mahalanobis_map(self.W, p)
    return None

  def pairwise(self, s_BxD: jax.Array, p_NxD: jax.Array) -> jax.Array:
    """Energy of every sketch against every photo, (B, N); in float32
    whatever the compute dtype of the embeddings."""
    s_BxD, p_NxD = precision.to_float32((s_BxD, p_NxD))
    if self.kind == 'weighted':  # No square root of w: finite gradients at w -> 0.
      w = weighted_energy_weights(self.w_pre_softplus)
      return ((s_BxD ** 2) @ w)[:, None] + ((p_NxD ** 2) @ w)[None, :] \
          - 2.0 * (s_BxD * w[None, :]) @ p_NxD.T
    mapped = self._weighted_inputs(s_BxD, p_NxD)
    if mapped is not None:
      s, p = mapped
      return (squared_norms(s)[:, None] + squared_norms(p)[None, :]
              - 2.0 * s @ p.T)
    return (holef_sketch_term(self.W, s_BxD)[:, None]
            + holef_photo_term(self.W, p_NxD)[None, :]
            - 2.0 * s_BxD @ self.W @ p_NxD.T)

  def paired(self, s_BxD: jax.Array, p_BxD: jax.Array) -> jax.Array:
    """Energy of row-aligned pairs, (B,); in float32 like `pairwise`."""
    s_BxD, p_BxD = precision.to_float32((s_BxD, p_BxD))
    if self.kind == 'weighted':
      w = weighted_energy_weights(self.w_pre_softplus)
      return ((s_BxD - p_BxD) ** 2) @ w
    mapped = self._weighted_inputs(s_BxD, p_BxD)
    if mapped is not None:
      s, p = mapped
      return squared_norms(s - p)
    return (holef_sketch_term(self.W, s_BxD) + holef_photo_term(self.W, p_BxD)
            - 2.0 * jnp.sum((s_BxD @ self.W) * p_BxD, axis=-1))

  def regulariser(self) -> jax.Array:
    """||W - I||_1 + ||W - I||_F for HOLEF (0 for the other energies)."""
    if self.kind != 'holef':
      return jnp.zeros(())
    delta = self.W - jnp.eye(self.dim)
    # Clamped so the gradient at W = I (the initial value) is 0, not NaN.
    frobenius = jnp.sqrt(jnp.maximum(jnp.sum(delta * delta), 1e-12))
    return jnp.sum(jnp.abs(delta)) + frobenius

  def __call__(self, s_BxD: jax.Array, p_NxD: jax.Array) -> jax.Array:
    return self.pairwise(s_BxD, p_NxD)


def holef_literal(W_DxD: jax.Array, s_BxD: jax.Array, p_NxD: jax.Array) -> jax.Array:
  """The HOLEF definition by outer subtraction; (B, N, D, D): for tests only."""
  diff = s_BxD[:, None, :, None] - p_NxD[None, :, None, :]
  return jnp.sum(W_DxD[None, None] * diff ** 2, axis=(-2, -1))
