"""The chunked, two-stage exact top-K of `gallery_index` (8 simulated devices).

Integer embeddings make every score exact in float32, so ties are many and
real, and the ids must equal a stable argsort's (ties to the lowest row).
"""
import jax
import numpy as np
import pytest

from sbir_jax.tasks.fg_sbir import gallery_index
from sbir_jax.tasks.fg_sbir import scoring
from sbir_jax.core import sharding


def _integer_case(kind: str, seed: int = 0):
  rng = np.random.default_rng(seed)
  # 203 rows on 8 devices: 4 chunks of 8 rows a device (64 gallery rows a
  # chunk, device d holding rows 8d..8d+7 of it; 53 padding rows at the
  # end), 4 blocks of 2 rows a tile.
  g_NxD = rng.integers(-2, 3, (203, 6))
  q_BxD = rng.integers(-2, 3, (5, 6))
  if kind == 'inner_product':
    return g_NxD, q_BxD, None, q_BxD @ g_NxD.T
  W = np.eye(6, dtype=np.int64) + rng.integers(-1, 2, (6, 6))
  # HOLEF by its definition, sum_ij W_ij (s_i - p_j)^2, in exact integers.
  diff_BxNxDxD = q_BxD[:, None, :, None] - g_NxD[None, :, None, :]
  return g_NxD, q_BxD, W, -np.einsum('ij,bnij->bn', W, diff_BxNxDxD ** 2)


@pytest.mark.parametrize('kind', ['inner_product', 'holef'])
def test_chunked_top_k_equals_stable_argsort_with_ties(kind):
  assert jax.device_count() == 8
  g_NxD, q_BxD, W, expected_BxN = _integer_case(kind)
  scorer = scoring.Scorer(kind, None if W is None else W.astype(np.float32))
  index = gallery_index.GalleryIndex(g_NxD, scorer, sharding.make_mesh(),
                                     chunk_rows=8, block_rows=2)
  assert (index.chunks, index.chunk_rows) == (4, 8)
  order_BxN = np.argsort(-expected_BxN, axis=1, kind='stable')
  ranked = np.take_along_axis(expected_BxN, order_BxN, axis=1)
  # Ties straddle the cut at k=40 for some query: which tied row is returned
  # is tested, not only the scores.
  assert np.any(ranked[:, 39] == ranked[:, 40])
  # k=3: two stages (k < 4 blocks a chunk); 5: one top-K a chunk; 40 > a
  # chunk and > a device's rows; 203: the whole gallery, no padding row.
  for k in (3, 5, 40, 203):
    top_BxK, idx_BxK = index.search(q_BxD.astype(np.float32), k)
    np.testing.assert_array_equal(idx_BxK, order_BxN[:, :k])
    np.testing.assert_array_equal(top_BxK, ranked[:, :k].astype(np.float32))


def test_chunk_top_k_two_stages_equal_one():
  rng = np.random.default_rng(1)
  s_BxC = rng.integers(-3, 4, (7, 64)).astype(np.float32)  # Many ties.
  for k in (2, 15):  # 16 blocks of 4: always two stages.
    top, col = gallery_index.chunk_top_k(jax.numpy.asarray(s_BxC), k, block_rows=4)
    order = np.argsort(-s_BxC, axis=1, kind='stable')[:, :k]
    np.testing.assert_array_equal(col, order)
    np.testing.assert_array_equal(top, np.take_along_axis(s_BxC, order, axis=1))


def test_chunk_rows_must_be_a_multiple_of_block_rows():
  with pytest.raises(ValueError, match='multiple of block_rows'):
    gallery_index.GalleryIndex(np.ones((4, 3)), scoring.Scorer('inner_product'),
                               sharding.make_mesh(), chunk_rows=10, block_rows=4)


def test_search_never_holds_the_whole_score_matrix():
  # 8 devices x 4 chunks x 256 rows; 64 queries: a device's (64 x 1024)
  # scores are 256 KiB, one tile 64 KiB.
  rng = np.random.default_rng(2)
  g_NxD = rng.standard_normal((8 * 1024, 4)).astype(np.float32)
  index = gallery_index.GalleryIndex(g_NxD, scoring.Scorer('inner_product'),
                                     sharding.make_mesh(), chunk_rows=256, block_rows=16)
  assert index.chunks == 4
  q_BxD = np.zeros((64, 4), np.float32)
  compiled = index._search_fn(10).lower(index._rows, index._bias, index._W,
                                        index._queries(q_BxD)).compile()
  assert compiled.memory_analysis().temp_size_in_bytes < 64 * 1024 * 4
