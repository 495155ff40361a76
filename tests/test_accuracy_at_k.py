"""acc@K on hand-built energy matrices."""
import numpy as np
import pytest

from sbir_jax.evaluators import accuracy_at_k


def test_hand_built_ranks():
  # Query 0: true match closest (rank 0). Query 1: two closer (rank 2).
  # Query 2: one closer (rank 1).
  energy = np.array([[0.1, 0.5, 0.9],
                     [0.2, 0.8, 0.3],
                     [0.9, 0.1, 0.4]])
  np.testing.assert_array_equal(accuracy_at_k.true_match_ranks(energy), [0, 2, 1])
  acc = accuracy_at_k.accuracy_at_k(energy, (1, 2, 3))
  assert acc == pytest.approx({'acc@1': 100 / 3, 'acc@2': 200 / 3, 'acc@3': 100.0})


def test_more_queries_than_gallery_is_refused():
  with pytest.raises(ValueError, match='queries'):
    accuracy_at_k.accuracy_at_k(np.zeros((3, 2)), (1,))
