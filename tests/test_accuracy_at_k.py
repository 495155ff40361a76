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
  acc = accuracy_at_k.accuracy_at_k(energy, (1, 2, 3), intervals=False)
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
  assert accuracy_at_k.accuracy_at_k(energy, (1, 2), targets, intervals=False) == {
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


def test_ties_count_against_the_query():
  # Query 0's true match ties with item 2: item 2 ranks ahead (rank 1).
  # Query 1: every energy equal (a collapsed model): the true match is last.
  energy = np.array([[0.3, 0.9, 0.3],
                     [0.5, 0.5, 0.5]])
  np.testing.assert_array_equal(accuracy_at_k.true_match_ranks(energy), [1, 2])
  assert accuracy_at_k.accuracy_at_k(energy, (1, 2), intervals=False) == {
      'acc@1': 0.0, 'acc@2': 50.0}


def test_a_constant_model_scores_zero_not_hundred():
  acc = accuracy_at_k.accuracy_at_k(np.ones((115, 115)), (1, 10))
  assert acc['acc@1'] == 0.0 and acc['acc@10'] == 0.0


def test_intervals_bracket_the_mean_and_shrink_with_more_queries():
  rng = np.random.default_rng(0)

  def width(n):
    energy = rng.random((n, n)) - 0.5 * np.eye(n)  # About half the matches first.
    acc = accuracy_at_k.accuracy_at_k(energy, (1,))
    assert acc['acc@1_ci_low'] <= acc['acc@1'] <= acc['acc@1_ci_high']
    return acc['acc@1_ci_high'] - acc['acc@1_ci_low']

  small, large = width(40), width(1000)
  assert 10 < small < 45 and large < small / 3  # ~1/sqrt(n) shrinkage.


def test_nan_energies_are_refused_naming_the_rows():
  energy = np.zeros((4, 4))
  energy[2, 1] = np.nan
  with pytest.raises(ValueError, match=r'NaN in 1 query rows \(2\)'):
    accuracy_at_k.accuracy_at_k(energy, (1,))


def test_an_empty_gallery_is_refused():
  with pytest.raises(ValueError, match='gallery is empty'):
    accuracy_at_k.accuracy_at_k(np.zeros((3, 0)), (1,), np.zeros(3, int))
