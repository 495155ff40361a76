"""Exact top-K search over a gallery kept on the devices, rows sharded on `data`.

The gallery is copied to the mesh once, as `chunks` separate arrays of
`devices x chunk_rows` consecutive rows, each sharded on `data` (padding rows
at the end score -inf), with the per-row bias of its `scoring.Scorer`
computed once. A search is one jitted `shard_map`. Every device walks its
piece of each chunk in turn (`lax.scan` over the chunk number, `lax.switch`
to that chunk's buffer): it scores a (queries x chunk_rows) tile, takes the
tile's top-K in two stages (the max of each block of `block_rows` scores, the
top-K of those maxima, then the top-K of the scores in just those K blocks:
the K best scores of a tile lie in the K blocks with the best maxima) and
merges it into a running (queries x K) list. Only one tile is alive at a
time: the full (queries x gallery) score matrix is never written to memory.
The devices' (devices x K) candidates are then all-gathered and merged by a
last top-K.

Why a buffer per chunk and not one array sliced by the scan: XLA:CPU copies
each dynamic slice of the gallery before the matmul reads it, a second pass
over the gallery: at 10^6 rows on the 2-core VM that search took 1.12 to
1.21x the bare matmul's time, against 0.90 to 1.01x with a buffer per chunk,
read in place (benchmarks/topk.py). The chunk count is capped (MAX_CHUNKS) to
bound the number of switch branches.

Exact: no approximation anywhere. Ties go to the lowest gallery row, as a
stable argsort orders them: within a device, blocks, candidates and lists
are merged in row order and `lax.top_k` keeps the first of equal values;
across devices the candidates are put in row order before the last top-K.
"""
import functools
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sbir_jax.core import sharding
from sbir_jax.tasks.fg_sbir import scoring

P = jax.sharding.PartitionSpec

# A (100 queries x 32768 rows) float32 tile is 13 MB; on the 2-core VM at
# 10^6 rows, tiles of 16384 to 65536 rows were within noise of each other and
# 8192 ~4% slower (more per-tile top-K passes, ~1.4 ms each; measured before
# the buffer-per-chunk layout, which changes neither).
CHUNK_ROWS = 32768
BLOCK_ROWS = 128
MAX_CHUNKS = 64  # Past 64 x CHUNK_ROWS rows a device, the tiles grow instead.


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def chunk_top_k(s_BxC: jax.Array, k: int, block_rows: int):
  """(best min(k, C) scores of each row, their columns), ties lowest column first.

  Two stages when the tile has more than k blocks: only k blocks of
  `block_rows` scores are ever fed to the second `lax.top_k`.
  """
  B, C = s_BxC.shape
  blocks = C // block_rows
  kc = min(k, C)
  if k >= blocks:  # Every block would be kept: one top-K is cheaper.
    return jax.lax.top_k(s_BxC, kc)
  s_BxNxR = s_BxC.reshape(B, blocks, block_rows)
  _, blk_BxK = jax.lax.top_k(s_BxNxR.max(axis=-1), k)
  # In row order, so that ties among the candidates go to the lowest row.
  blk_BxK = jnp.sort(blk_BxK, axis=1)
  cand_BxKR = jnp.take_along_axis(s_BxNxR, blk_BxK[:, :, None], axis=1).reshape(
      B, k * block_rows)
  top_BxK, pos_BxK = jax.lax.top_k(cand_BxKR, kc)
  col_BxK = (jnp.take_along_axis(blk_BxK, pos_BxK // block_rows, axis=1) * block_rows
             + pos_BxK % block_rows)
  return top_BxK, col_BxK


def top_k_over_chunks(q2_BxD: jax.Array, g_chunks: Sequence[jax.Array],
                      bias_chunks: Sequence[jax.Array], k: int, block_rows: int,
                      chunk_stride: int, precision: Any = None,
                      axis_name: Optional[str] = None):
  """Top-K of q2 g^T + bias over (C, D) gallery chunks, one tile at a time.

  Row p of chunk z is reported as z * chunk_stride + p. Returns (scores,
  rows), best first, ties lowest row first; min(k, rows in all chunks) each.
  axis_name: the shard_map axis the chunks vary along, if called inside one.
  """
  B, C = q2_BxD.shape[0], g_chunks[0].shape[0]
  L = min(k, C * len(g_chunks))

  def tile(z):
    # One branch a chunk: each reads its own buffer in place.
    return lambda: (jnp.dot(q2_BxD, g_chunks[z].T, precision=precision)
                    + bias_chunks[z][None, :])

  def merge(carry, z):
    top_BxL, idx_BxL = carry
    s_BxC = jax.lax.switch(z, [tile(i) for i in range(len(g_chunks))])
    ctop_BxK, col_BxK = chunk_top_k(s_BxC, k, block_rows)
    # The running list (earlier rows) first: ties go to it.
    all_top = jnp.concatenate([top_BxL, ctop_BxK], axis=1)
    all_idx = jnp.concatenate([idx_BxL, col_BxK + z * chunk_stride], axis=1)
    top_BxL, pick_BxL = jax.lax.top_k(all_top, L)
    return (top_BxL, jnp.take_along_axis(all_idx, pick_BxL, axis=1)), None

  init = (jnp.full((B, L), -jnp.inf, q2_BxD.dtype), jnp.zeros((B, L), jnp.int32))
  if axis_name is not None:  # The running list differs per device, like the rows.
    init = jax.lax.pcast(init, (axis_name,), to='varying')
  # A loop, not unrolled Python: XLA would run every matmul first and hold
  # all the tiles, the whole score matrix, at once.
  (top_BxL, idx_BxL), _ = jax.lax.scan(
      merge, init, jnp.arange(len(g_chunks), dtype=jnp.int32))
  return top_BxL, idx_BxL


class GalleryIndex:
  """A gallery kept on the devices, rows sharded on `data`; exact top-K search.

  Built once (one host->device copy, the per-row bias computed once); every
  `search` is one jitted call with no per-query loop. The compiled search is
  cached per (number of queries, k). `chunk_rows` (per device; a target, see
  MAX_CHUNKS) and `block_rows`: the scored tile and the first-stage block
  (module docstring); the results do not depend on them.
  """

  def __init__(self, embeddings_NxD: np.ndarray, scorer: scoring.Scorer,
               mesh: jax.sharding.Mesh,
               precision: Any = jax.lax.Precision.HIGHEST,
               chunk_rows: int = CHUNK_ROWS, block_rows: int = BLOCK_ROWS):
    embeddings_NxD = np.asarray(embeddings_NxD, np.float32)
    if embeddings_NxD.ndim != 2 or not len(embeddings_NxD):
      raise ValueError(f'Gallery embeddings must be a non-empty (N, D) array; '
                       f'got shape {embeddings_NxD.shape}.')
    if block_rows < 1 or chunk_rows % block_rows:
      raise ValueError(f'chunk_rows={chunk_rows} must be a multiple of '
                       f'block_rows={block_rows} >= 1.')
    self.scorer, self.mesh, self.precision = scorer, mesh, precision
    self._compiled = {}  # k -> jitted search (jit caches per query count).
    self.size, self.dim = embeddings_NxD.shape
    self.devices = devices = mesh.shape['data']
    # Chunks of at most chunk_rows a device, as even as whole blocks allow:
    # padding is under a block a chunk, not up to a chunk a device.
    rows = -(-self.size // devices)
    self.chunks = min(-(-rows // chunk_rows), MAX_CHUNKS)
    self.block_rows = block_rows
    self.chunk_rows = _round_up(-(-rows // self.chunks), block_rows)
    self.rows_per_device = self.chunk_rows * self.chunks
    stride = self.chunk_rows * devices  # Gallery rows in one chunk.
    row_sharding = jax.NamedSharding(mesh, P('data', None))
    self._replicated = sharding.replicated(mesh)

    def chunk_rows_at(first):
      def shard_rows(index):
        # Each device's rows, zero-padded at the end: no padded host copy
        # of the whole gallery is made.
        start, stop, _ = index[0].indices(stride)
        block = embeddings_NxD[first + start:first + stop]
        missing = (stop - start) - len(block)
        return np.pad(block, ((0, missing), (0, 0))) if missing else block
      return jax.make_array_from_callback((stride, self.dim), row_sharding, shard_rows)

    self._rows = tuple(chunk_rows_at(z * stride) for z in range(self.chunks))
    W = None if scorer.W_DxD is None else np.asarray(scorer.W_DxD, np.float32)
    self._W = None if W is None else jax.device_put(W, self._replicated)

    def bias_fn(rows, W_, first):
      bias = scoring.gallery_bias(scorer.kind, W_, rows)
      # Padding rows can never win: -inf.
      return jnp.where(first + jnp.arange(stride) < self.size, bias, -jnp.inf)

    bias_fn = jax.jit(bias_fn, out_shardings=jax.NamedSharding(mesh, P('data')))
    self._bias = tuple(bias_fn(rows, self._W, z * stride)
                       for z, rows in enumerate(self._rows))

  def _search_fn(self, k: int) -> Callable:
    if k not in self._compiled:
      self._compiled[k] = self._make_search_fn(k)
    return self._compiled[k]

  def _make_search_fn(self, k: int) -> Callable:
    kind, precision, chunk_rows = self.scorer.kind, self.precision, self.chunk_rows
    block_rows, stride = self.block_rows, self.chunk_rows * self.devices

    def local_top_k(rows, bias, q2_BxD):
      top_BxL, idx_BxL = top_k_over_chunks(q2_BxD, rows, bias, k, block_rows,
                                           stride, precision, axis_name='data')
      idx_BxL = idx_BxL + jax.lax.axis_index('data') * chunk_rows
      # Every device's candidates to every device; put in row order (a
      # device holds rows from every chunk), then the exact merge.
      top_BxM = jax.lax.all_gather(top_BxL, 'data', axis=1, tiled=True, to='invarying')
      idx_BxM = jax.lax.all_gather(idx_BxL, 'data', axis=1, tiled=True, to='invarying')
      idx_BxM, top_BxM = jax.lax.sort((idx_BxM, top_BxM), dimension=1, num_keys=1)
      top_BxK, pick_BxK = jax.lax.top_k(top_BxM, k)
      return top_BxK, jnp.take_along_axis(idx_BxM, pick_BxK, axis=1)

    chunk_specs = (P('data', None),) * self.chunks
    sharded = jax.shard_map(local_top_k, mesh=self.mesh,
                            in_specs=(chunk_specs, (P('data'),) * self.chunks, P()),
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
      # Chunk after chunk is gallery row order.
      scores_N = jnp.concatenate([jnp.dot(q2_1xD, g.T, precision=precision)[0] + b
                                  for g, b in zip(rows, bias)])
      return jnp.sum(scores_N > scores_N[row])
    return jax.jit(rank, out_shardings=self._replicated)
