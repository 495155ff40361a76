"""The one ranking rule every retrieval metric uses, input checks, and intervals.

Ties never help the query. Among gallery items with exactly equal scores, the
ones that do not count as a hit (not the true match, not of the query's
class, not of the target's label) rank first; items of the same kind keep
gallery order (a stable sort). A collapsed model, whose scores are all equal,
therefore scores the worst possible value, never the best: acc@1 = 0 on
FG-SBIR, as it would be for the last item of any order. With real-valued
embeddings exact ties are rare and the rule changes nothing.

Every metric also reports a 95% bootstrap interval over the queries
(`bootstrap_interval`): with 115 test sketches one sketch is 0.87 points, and
the interval says how far a figure can move with the query sample.
"""
from typing import Mapping

import numpy as np

NUM_RESAMPLES = 1000
INTERVAL_LEVEL = 0.95


def check_scores(scores_QxG: np.ndarray, what: str = 'scores') -> np.ndarray:
  """The matrix as a 2-D float array; refuses NaN and empty galleries.

  `what` names the matrix in the messages ('scores', 'energy').
  """
  scores_QxG = np.asarray(scores_QxG)
  if scores_QxG.ndim != 2:
    raise ValueError(f'The {what} matrix must be 2-D (queries, gallery); got '
                     f'shape {scores_QxG.shape}.')
  if scores_QxG.shape[1] == 0:
    raise ValueError(f'The gallery is empty ({what} shape {scores_QxG.shape}): '
                     'there is nothing to retrieve; check the gallery split.')
  if scores_QxG.shape[0] == 0:
    raise ValueError(f'No queries to evaluate ({what} shape {scores_QxG.shape}).')
  nan_rows = np.flatnonzero(np.isnan(scores_QxG).any(axis=1))
  if nan_rows.size:
    shown = ', '.join(map(str, nan_rows[:10])) + (' ...' if nan_rows.size > 10 else '')
    raise ValueError(f'The {what} matrix has NaN in {nan_rows.size} query rows '
                     f'({shown}); the model produced non-finite embeddings, so '
                     'these queries cannot be ranked. Check the checkpoint (a '
                     'diverged run) or the inputs of those queries.')
  return scores_QxG


def check_every_query_has_a_hit(has_hit_QxG: np.ndarray, what: str) -> None:
  """Refuses queries with nothing relevant in the gallery (they cannot score)."""
  missing = np.flatnonzero(~np.asarray(has_hit_QxG).any(axis=1))
  if missing.size:
    shown = ', '.join(map(str, missing[:10])) + (' ...' if missing.size > 10 else '')
    raise ValueError(f'{missing.size} queries ({shown}) have no {what} in the '
                     'gallery, so no ranking can find it; the query and gallery '
                     'splits do not match. Fix the gallery, or drop those queries.')


def order_ties_against(scores_QxG: np.ndarray, hit_QxG: np.ndarray) -> np.ndarray:
  """(Q, G) gallery indices, highest score first; equal scores put misses first."""
  # lexsort: the last key is primary; it is stable, so gallery order breaks
  # the remaining ties.
  return np.lexsort((np.asarray(hit_QxG, bool), -np.asarray(scores_QxG)), axis=-1)


def bootstrap_interval(values_Q: np.ndarray, num_resamples: int = NUM_RESAMPLES,
                       level: float = INTERVAL_LEVEL, seed: int = 0
                       ) -> tuple[float, float]:
  """Percentile bootstrap interval of the mean of per-query values."""
  values_Q = np.asarray(values_Q, np.float64)
  rng = np.random.default_rng(seed)
  picks_BxQ = rng.integers(0, len(values_Q), size=(num_resamples, len(values_Q)))
  means_B = values_Q[picks_BxQ].mean(axis=1)
  tail = 100.0 * (1.0 - level) / 2.0
  low, high = np.percentile(means_B, [tail, 100.0 - tail])
  return float(low), float(high)


def summarise(per_query: Mapping[str, np.ndarray], scale: float = 1.0,
              intervals: bool = True) -> dict[str, float]:
  """{name: mean * scale, name_ci_low / name_ci_high: its 95% interval}."""
  out = {}
  for name, values in per_query.items():
    out[name] = float(scale * np.mean(values))
    if intervals:
      low, high = bootstrap_interval(values)
      out[f'{name}_ci_low'], out[f'{name}_ci_high'] = scale * low, scale * high
  return out
