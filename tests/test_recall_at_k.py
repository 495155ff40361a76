"""Recall@K with TIRG's protocol, on hand-built rankings and features."""
import numpy as np
import pytest

from sbir_jax.evaluators import recall_at_k


def test_recall_from_hand_built_ranked_labels():
  ranked = np.array([[7, 1, 2, 3, 4],   # Target 7 at rank 1.
                     [1, 2, 9, 3, 4],   # Target 9 at rank 3.
                     [1, 2, 3, 4, 5],   # Target 8 absent.
                     [5, 5, 5, 5, 6]])  # Target 6 at rank 5.
  got = recall_at_k.recall_from_ranked_labels(ranked, np.array([7, 9, 8, 6]), (1, 3, 5),
                                              intervals=False)
  assert got == {'recall@1': 25.0, 'recall@3': 50.0, 'recall@5': 75.0}


def test_any_image_with_the_target_label_is_a_hit():
  # Gallery images 1 and 2 are identical scenes (label 10): either counts.
  gallery = np.eye(4)
  labels = np.array([0, 10, 10, 30])
  query = np.array([[0.0, 0.0, 1.0, 0.0]])  # Nearest: image 2 (label 10).
  metrics, ranking = recall_at_k.recall_at_k(query, gallery, np.array([3]),
                                             np.array([10]), labels, (1,),
                                             intervals=False)
  assert ranking[0, 0] == 2 and metrics == {'recall@1': 100.0}


def test_only_the_query_image_is_removed_and_features_are_normalised():
  # The query's own image (0) is the closest and must not be returned; the
  # gallery norms differ wildly but ranking is by cosine.
  gallery = np.array([[1.0, 0.0], [100.0, 1.0], [0.0, 0.01], [-1.0, 0.0]])
  labels = np.array([0, 1, 2, 3])
  query = np.array([[2.0, 0.0]])
  metrics, ranking = recall_at_k.recall_at_k(query, gallery, np.array([0]),
                                             np.array([1]), labels, (1, 3),
                                             intervals=False)
  assert list(ranking[0]) == [1, 2, 3]
  assert metrics == {'recall@1': 100.0, 'recall@3': 100.0}
  # The source image is removed even if it carries the target label: a query
  # whose target is then nowhere in the gallery is refused, not scored 0.
  with pytest.raises(ValueError, match=r'1 queries \(0\) have no image'):
    recall_at_k.recall_at_k(query, gallery, np.array([0]), np.array([0]), labels, (1, 3))


def test_ties_rank_non_targets_first():
  # Every gallery image equally close (a collapsed model): the target is last.
  gallery = np.ones((5, 3))
  labels = np.array([0, 1, 2, 3, 4])
  metrics, ranking = recall_at_k.recall_at_k(
      np.ones((1, 3)), gallery, np.array([4]), np.array([0]), labels, (1, 3, 4),
      intervals=False)
  assert list(ranking[0]) == [1, 2, 3, 0]
  assert metrics == {'recall@1': 0.0, 'recall@3': 0.0, 'recall@4': 100.0}


def test_nan_features_are_refused():
  queries = np.array([[1.0, 0.0], [np.nan, 1.0]])
  with pytest.raises(ValueError, match=r'NaN in 1 query rows \(1\)'):
    recall_at_k.recall_at_k(queries, np.eye(2), np.array([0, 1]), np.array([1, 0]),
                            np.array([0, 1]), (1,))


def test_matches_a_brute_force_count():
  rng = np.random.default_rng(0)
  q, g = rng.normal(size=(30, 8)), rng.normal(size=(50, 8))
  sources, labels = rng.integers(50, size=30), rng.integers(12, size=50)
  targets = labels[(sources + 1 + rng.integers(49, size=30)) % 50]  # Present.
  metrics, _ = recall_at_k.recall_at_k(q, g, sources, targets, labels, (1, 5, 10, 50))
  qn = q / np.linalg.norm(q, axis=1, keepdims=True)
  gn = g / np.linalg.norm(g, axis=1, keepdims=True)
  for k in (1, 5, 10, 50):
    hits = 0
    for i in range(30):
      order = [j for j in np.argsort(-(gn @ qn[i])) if j != sources[i]]
      hits += targets[i] in labels[order[:k]]
    assert metrics[f'recall@{k}'] == pytest.approx(100 * hits / 30)
