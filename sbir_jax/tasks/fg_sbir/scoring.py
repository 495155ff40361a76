"""Search-time scores: the energies of `models/energies.py` as score = -energy.

A `Scorer` is inner product, negative squared Euclidean, or one of DSSA's
learnable energies (HOLEF, Sec. 3.3; weighted, as HOLEF with W = diag(w);
Mahalanobis). Every kind is split as `q' g^T + bias(g) + const(q)`: the
queries are transformed (for HOLEF q' = 2 q W), the gallery rows are kept as
embedded with their bias computed once, and ranking costs one matrix product,
with no (N, d, d) tensor. The bias and constant are the terms of the energies'
own expansions (`energies.holef_photo_term`, `energies.mahalanobis_map`, ...),
so a score is the model's energy with the sign flipped, not a second
derivation of it.
"""
import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from sbir_jax.models import energies

SCORE_KINDS = ('inner_product', 'euclidean', 'holef', 'mahalanobis')


@dataclasses.dataclass(frozen=True, eq=False)
class Scorer:
  """score(q, g), higher = closer; for the energies it is exactly -energy.

  kind: one of SCORE_KINDS. W_DxD: HOLEF's W (kind='holef') or the
  Mahalanobis map M with energy ||M (s - p)||^2 (kind='mahalanobis').
  """
  kind: str
  W_DxD: Optional[np.ndarray] = None

  def __post_init__(self):
    if self.kind not in SCORE_KINDS:
      raise ValueError(f'Unknown score kind {self.kind!r}; use one of {SCORE_KINDS}.')
    if (self.kind in ('holef', 'mahalanobis')) != (self.W_DxD is not None):
      raise ValueError(f'Score kind {self.kind!r} needs W_DxD exactly when it is '
                       'holef or mahalanobis.')


def scorer_for_energy(kind: str, energy_params: Optional[dict]) -> Scorer:
  """The Scorer equal to -Energy(kind) (models/energies.py) with its params."""
  if kind == 'euclidean':
    return Scorer('euclidean')
  if kind == 'holef':
    return Scorer('holef', np.asarray(energy_params['W'], np.float32))
  if kind == 'weighted':
    # sum_i w_i (s_i - p_i)^2 is HOLEF with W = diag(w), w as the model has it.
    w = energies.weighted_energy_weights(
        jnp.asarray(energy_params[energies.WEIGHTED_PARAM], jnp.float32))
    return Scorer('holef', np.diag(np.asarray(w)))
  if kind == 'mahalanobis':
    return Scorer('mahalanobis', np.asarray(energy_params['W'], np.float32))
  raise ValueError(f'No retrieval score for energy {kind!r}.')


def gallery_bias(kind: str, W_DxD, g_NxD: jax.Array) -> jax.Array:
  """The score term that depends on the gallery row only, (N,)."""
  if kind == 'inner_product':
    return jnp.zeros(g_NxD.shape[:1], g_NxD.dtype)
  if kind == 'euclidean':
    return -energies.squared_norms(g_NxD)
  if kind == 'holef':
    return -energies.holef_photo_term(W_DxD, g_NxD)
  return -energies.squared_norms(energies.mahalanobis_map(W_DxD, g_NxD))


def query_terms(kind: str, W_DxD, q_BxD: jax.Array):
  """(q' such that the cross term is q' g^T, the query-only term (B,))."""
  if kind == 'inner_product':
    return q_BxD, jnp.zeros(q_BxD.shape[:1], q_BxD.dtype)
  if kind == 'euclidean':
    return 2.0 * q_BxD, -energies.squared_norms(q_BxD)
  if kind == 'holef':  # The cross term of HOLEF is 2 s W p.
    return 2.0 * q_BxD @ W_DxD, -energies.holef_sketch_term(W_DxD, q_BxD)
  mapped = energies.mahalanobis_map(W_DxD, q_BxD)
  return 2.0 * mapped @ W_DxD, -energies.squared_norms(mapped)


def scores(scorer: Scorer, q_BxD: jax.Array, g_NxD: jax.Array) -> jax.Array:
  """All (B, N) scores in one product; a reference for small galleries."""
  W = None if scorer.W_DxD is None else jnp.asarray(scorer.W_DxD)
  q2, const_B = query_terms(scorer.kind, W, q_BxD)
  return q2 @ g_NxD.T + gallery_bias(scorer.kind, W, g_NxD)[None, :] + const_B[:, None]
