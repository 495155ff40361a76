"""Exact top-K search over a gallery kept on the devices, rows sharded on `data`.

The gallery is copied to the mesh once, padded to a multiple of the device
count (padding rows score -inf), with the per-row bias of its `scoring.Scorer`
computed once. A search is one jitted `shard_map`: every device takes the
top-K of its own rows with `lax.top_k`, the (devices x K) candidates are
all-gathered and merged by a second top-K. Exact: no approximation anywhere.
"""
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from sbir_jax.core import sharding
from sbir_jax.tasks.fg_sbir import scoring

P = jax.sharding.PartitionSpec


class GalleryIndex:
  """A gallery kept on the devices, rows sharded on `data`; exact top-K search.

  Built once (one host->device copy, the per-row bias computed once); every
  `search` is one jitted call with no per-query loop. The compiled search is
  cached per (number of queries, k).
  """

  def __init__(self, embeddings_NxD: np.ndarray, scorer: scoring.Scorer,
               mesh: jax.sharding.Mesh,
               precision: Any = jax.lax.Precision.HIGHEST):
    embeddings_NxD = np.asarray(embeddings_NxD, np.float32)
    if embeddings_NxD.ndim != 2 or not len(embeddings_NxD):
      raise ValueError(f'Gallery embeddings must be a non-empty (N, D) array; '
                       f'got shape {embeddings_NxD.shape}.')
    self.scorer, self.mesh, self.precision = scorer, mesh, precision
    self._compiled = {}  # k -> jitted search (jit caches per query count).
    self.size, self.dim = embeddings_NxD.shape
    devices = mesh.shape['data']
    self.rows_per_device = -(-self.size // devices)
    padded = self.rows_per_device * devices
    row_sharding = jax.NamedSharding(mesh, P('data', None))
    self._replicated = sharding.replicated(mesh)

    def shard_rows(index):
      # Each device's rows, zero-padded at the end: no padded host copy of
      # the whole gallery is made.
      start, stop, _ = index[0].indices(padded)
      block = embeddings_NxD[start:stop]
      missing = (stop - start) - len(block)
      return np.pad(block, ((0, missing), (0, 0))) if missing else block

    self._rows = jax.make_array_from_callback(
        (padded, self.dim), row_sharding, shard_rows)
    W = None if scorer.W_DxD is None else np.asarray(scorer.W_DxD, np.float32)
    self._W = None if W is None else jax.device_put(W, self._replicated)

    def bias_fn(rows, W_):
      bias = scoring.gallery_bias(scorer.kind, W_, rows)
      # Padding rows can never win: -inf.
      return jnp.where(jnp.arange(padded) < self.size, bias, -jnp.inf)

    self._bias = jax.jit(bias_fn, out_shardings=jax.NamedSharding(mesh, P('data')))(
        self._rows, self._W)

  def _search_fn(self, k: int) -> Callable:
    if k not in self._compiled:
      self._compiled[k] = self._make_search_fn(k)
    return self._compiled[k]

  def _make_search_fn(self, k: int) -> Callable:
    local_k = min(k, self.rows_per_device)
    rows_per_device, kind, precision = self.rows_per_device, self.scorer.kind, self.precision

    def local_top_k(g_nxD, bias_n, q2_BxD):
      scores_Bxn = jnp.dot(q2_BxD, g_nxD.T, precision=precision) + bias_n[None, :]
      top_BxL, idx_BxL = jax.lax.top_k(scores_Bxn, local_k)
      idx_BxL = idx_BxL + jax.lax.axis_index('data') * rows_per_device
      # Every device's candidates to every device, then the exact merge.
      top_BxM = jax.lax.all_gather(top_BxL, 'data', axis=1, tiled=True, to='invarying')
      idx_BxM = jax.lax.all_gather(idx_BxL, 'data', axis=1, tiled=True, to='invarying')
      top_BxK, pick_BxK = jax.lax.top_k(top_BxM, k)
      return top_BxK, jnp.take_along_axis(idx_BxM, pick_BxK, axis=1)

    sharded = jax.shard_map(local_top_k, mesh=self.mesh,
                            in_specs=(P('data', None), P('data'), P()),
                            out_specs=(P(), P()))

    def search(rows, bias, W, q_BxD):
      q2_BxD, const_B = scoring.query_terms(kind, W, q_BxD)
      top_BxK, idx_BxK = sharded(rows, bias, q2_BxD)
      return top_BxK + const_B[:, None], idx_BxK

    return jax.jit(search, out_shardings=(self._replicated, self._replicated))

  def _queries(self, q_BxD: np.ndarray) -> jax.Array:
    q_BxD = np.asarray(q_BxD, np.float32)
    if q_BxD.ndim != 2 or q_BxD.shape[1] != self.dim:
      raise ValueError(f'Queries must be (B, {self.dim}); got {q_BxD.shape}.')
    return jax.make_array_from_callback(q_BxD.shape, self._replicated,
                                        lambda index: q_BxD[index])

  def search_device(self, q_BxD: np.ndarray, k: int) -> tuple[jax.Array, jax.Array]:
    """Like `search`, but returns device arrays without waiting (benchmarks)."""
    if not 1 <= k <= self.size:
      raise ValueError(f'top_k={k} must be between 1 and the gallery size {self.size}.')
    return self._search_fn(k)(self._rows, self._bias, self._W, self._queries(q_BxD))

  def search(self, q_BxD: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores (B, k) best first, gallery row indices (B, k))."""
    top, idx = self.search_device(q_BxD, k)
    return np.asarray(top), np.asarray(idx)

  def rank_of(self, q_1xD: np.ndarray, row: int) -> int:
    """0-based rank of gallery row `row` for one query (rows scoring higher)."""
    if not 0 <= row < self.size:
      raise ValueError(f'Row {row} is not in the gallery of {self.size}.')
    return int(self._rank_fn(self._rows, self._bias, self._W, self._queries(q_1xD),
                             row))

  @functools.cached_property
  def _rank_fn(self) -> Callable:
    kind, precision = self.scorer.kind, self.precision

    def rank(rows, bias, W, q_1xD, row):
      q2_1xD, _ = scoring.query_terms(kind, W, q_1xD)
      scores_N = jnp.dot(q2_1xD, rows.T, precision=precision)[0] + bias
      return jnp.sum(scores_N > scores_N[row])
    return jax.jit(rank, out_shardings=self._replicated)
