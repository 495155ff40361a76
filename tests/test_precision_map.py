"""P@K, mAP@K (standard and the released code's /K), mAP@all on hand-made rankings."""
import numpy as np
import pytest

from sbir_jax.evaluators import precision_map as pm


def test_hand_computed_ranking():
  # Ranked relevance 1 0 1 0 1 for the single query.
  scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5]])
  rel = pm.ranked_relevance(scores, np.array([0]), np.array([0, 1, 0, 1, 0]))
  np.testing.assert_array_equal(rel, [[True, False, True, False, True]])
  m = pm.retrieval_metrics(scores, np.array([0]), np.array([0, 1, 0, 1, 0]), ks=(3,))
  assert m['P@3'] == pytest.approx(2 / 3)
  assert m['mAP@3'] == pytest.approx((1 + 2 / 3) / 2)  # 2 relevant in the top 3.
  assert m['mAP@3_div_k'] == pytest.approx((1 + 2 / 3) / 3)
  assert m['mAP@all'] == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)


def test_ranking_follows_scores_not_gallery_order():
  scores = np.array([[0.1, 0.3, 0.2]])
  rel = pm.ranked_relevance(scores, np.array([5]), np.array([5, 7, 5]))
  np.testing.assert_array_equal(rel, [[False, True, True]])  # Order 1, 2, 0.


def test_ties_keep_gallery_order():
  # Items 1 and 3 tie at 0.9, items 0 and 2 at 0.5: rank order 1, 3, 0, 2.
  scores = np.array([[0.5, 0.9, 0.5, 0.9]])
  m = pm.retrieval_metrics(scores, np.array([0]), np.array([0, 1, 1, 0]), ks=(2,))
  assert m['P@2'] == pytest.approx(0.5)
  assert m['mAP@2'] == pytest.approx(0.5)  # Hit at rank 2: P@2 = 1/2, one hit.
  assert m['mAP@2_div_k'] == pytest.approx(0.25)
  assert m['mAP@all'] == pytest.approx((1 / 2 + 2 / 3) / 2)  # Ranks 2 and 3.
  # The same scores with the tied items swapped in the gallery: rank 1, 3, 0, 2
  # now gives relevance 1 0 0 1.
  m = pm.retrieval_metrics(scores, np.array([0]), np.array([1, 0, 0, 1]), ks=(2,))
  assert m['mAP@2'] == pytest.approx(1.0)
  assert m['mAP@all'] == pytest.approx((1 + 2 / 4) / 2)


def test_no_hit_in_top_k_scores_zero_and_means_over_queries():
  scores = np.array([[0.9, 0.1, 0.0], [0.9, 0.1, 0.0]])
  m = pm.retrieval_metrics(scores, np.array([0, 1]), np.array([1, 1, 0]), ks=(1, 2))
  # Query 0 (class 0): relevance 0 0 1. Query 1 (class 1): 1 1 0.
  assert m['P@1'] == pytest.approx(0.5)
  assert m['mAP@2'] == pytest.approx(0.5)
  assert m['mAP@2_div_k'] == pytest.approx(0.5)  # Query 1: (1 + 1) / 2.
  assert m['mAP@all'] == pytest.approx((1 / 3 + 1) / 2)


def test_k_larger_than_gallery_counts_missing_ranks_as_misses():
  m = pm.retrieval_metrics(np.array([[1.0, 0.0]]), np.array([0]), np.array([0, 0]),
                           ks=(4,))
  assert m['P@4'] == pytest.approx(0.5)
  assert m['mAP@4'] == pytest.approx(1.0)
  assert m['mAP@4_div_k'] == pytest.approx(0.5)


def test_accumulator_over_chunks_equals_one_shot():
  rng = np.random.default_rng(0)
  scores = rng.normal(size=(7, 20))
  q, g = rng.integers(0, 3, 7), rng.integers(0, 3, 20)
  acc = pm.MetricAccumulator(g, ks=(5,))
  acc.add(scores[:3], q[:3])
  acc.add(scores[3:], q[3:])
  expected = pm.retrieval_metrics(scores, q, g, ks=(5,))
  assert acc.result() == pytest.approx(expected)


def test_bad_shape_is_refused():
  with pytest.raises(ValueError, match='queries, gallery'):
    pm.ranked_relevance(np.zeros((2, 3)), np.zeros(2), np.zeros(4))
