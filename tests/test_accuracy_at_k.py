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


def test_targets_let_several_queries_share_a_gallery_item():
  # 4 sketches, 2 photos: sketches 0, 1 match photo 1; sketches 2, 3 photo 0.
  energy = np.array([[0.2, 0.1],   # match closest: rank 0
                     [0.1, 0.2],   # rank 1
                     [0.3, 0.9],   # rank 0
                     [0.5, 0.4]])  # rank 1
  targets = np.array([1, 1, 0, 0])
  np.testing.assert_array_equal(
      accuracy_at_k.true_match_ranks(energy, targets), [0, 1, 0, 1])
  assert accuracy_at_k.accuracy_at_k(energy, (1, 2), targets) == {
      'acc@1': 50.0, 'acc@2': 100.0}


def test_default_targets_are_the_diagonal():
  energy = np.random.default_rng(0).random((5, 7))
  np.testing.assert_array_equal(
      accuracy_at_k.true_match_ranks(energy),
      accuracy_at_k.true_match_ranks(energy, np.arange(5)))


@pytest.mark.parametrize('targets,message', [
    (np.array([0, 1]), r'\(3,\)'), (np.array([0, 1, 2]), r'\[0, 2\)'),
    (np.array([0.0, 1.0, 1.0]), 'integers')])
def test_bad_targets_are_refused(targets, message):
  with pytest.raises(ValueError, match=message):
    accuracy_at_k.accuracy_at_k(np.zeros((3, 2)), (1,), targets)
