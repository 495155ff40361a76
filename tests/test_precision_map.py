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


def test_ties_rank_irrelevant_items_first():
  # Items 1 and 3 tie at 0.9, items 0 and 2 at 0.5. Of each tie the irrelevant
  # item ranks first: with items 0 and 3 relevant the order is 1, 3, 2, 0.
  scores = np.array([[0.5, 0.9, 0.5, 0.9]])
  m = pm.retrieval_metrics(scores, np.array([0]), np.array([0, 1, 1, 0]), ks=(2,),
                           intervals=False)
  assert m['P@2'] == pytest.approx(0.5)
  assert m['mAP@2'] == pytest.approx(0.5)  # Hit at rank 2: P@2 = 1/2, one hit.
  assert m['mAP@2_div_k'] == pytest.approx(0.25)
  assert m['mAP@all'] == pytest.approx((1 / 2 + 2 / 4) / 2)  # Ranks 2 and 4.
  # The tied items swapped in the gallery: the same ranks, not better ones.
  swapped = pm.retrieval_metrics(scores, np.array([0]), np.array([1, 0, 0, 1]),
                                 ks=(2,), intervals=False)
  assert swapped == pytest.approx(m)
  # Among items of the same relevance, gallery order decides: 0 before 1.
  np.testing.assert_array_equal(pm.ranked_relevance(
      np.array([[0.5, 0.5, 0.1]]), np.array([1]), np.array([0, 2, 1])),
      [[False, False, True]])


def test_a_constant_model_scores_the_worst_ranking():
  # 3 classes of 4: all scores equal puts every relevant item last.
  labels = np.repeat(np.arange(3), 4)
  m = pm.retrieval_metrics(np.zeros((12, 12)), labels, labels, ks=(4,),
                           intervals=False)
  assert m['P@4'] == 0.0 and m['mAP@4'] == 0.0
  assert m['mAP@all'] == pytest.approx(np.mean([(i + 1) / (8 + i + 1) for i in range(4)]))


def test_a_query_with_no_relevant_item_is_refused():
  with pytest.raises(ValueError, match=r'1 queries \(1\) have no item of the query'):
    pm.retrieval_metrics(np.zeros((2, 3)), np.array([0, 9]), np.array([0, 1, 0]), ks=(1,))


def test_nan_scores_and_empty_gallery_are_refused():
  scores = np.zeros((3, 2))
  scores[0, 0] = np.nan
  with pytest.raises(ValueError, match=r'NaN in 1 query rows \(0\)'):
    pm.retrieval_metrics(scores, np.zeros(3, int), np.zeros(2, int), ks=(1,))
  with pytest.raises(ValueError, match='gallery is empty'):
    pm.retrieval_metrics(np.zeros((3, 0)), np.zeros(3, int), np.zeros(0, int), ks=(1,))


def test_intervals_bracket_each_metric():
  rng = np.random.default_rng(1)
  labels = rng.integers(0, 4, 60)
  m = pm.retrieval_metrics(rng.normal(size=(60, 60)), labels, labels, ks=(5,))
  for name in ('P@5', 'mAP@5', 'mAP@all'):
    assert m[f'{name}_ci_low'] <= m[name] <= m[f'{name}_ci_high']
    assert m[f'{name}_ci_high'] > m[f'{name}_ci_low']


def test_no_hit_in_top_k_scores_zero_and_means_over_queries():
  scores = np.array([[0.9, 0.1, 0.0], [0.9, 0.1, 0.0]])
  m = pm.retrieval_metrics(scores, np.array([0, 1]), np.array([1, 1, 0]), ks=(1, 2),
                           intervals=False)
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
