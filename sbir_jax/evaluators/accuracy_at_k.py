"""acc@K for instance-level retrieval (FG-SBIR): query i's true match is one
gallery item, `targets[i]` (by default item i, the QMUL V1 layout).

acc@K is the fraction of queries whose true match ranks in the top K of the
gallery by energy (lower = closer). Ties count against the query (the rule of
`ranking.py`): the rank counts every other gallery item whose energy is lower
than **or equal to** the true match's, so a collapsed model (all energies
equal) ranks every true match last and scores acc@1 = 0, not 100. Several
queries may share a target (QMUL-Chair-V2: several sketches per photo), so
queries may outnumber the gallery when targets are given.
"""
from typing import Optional, Sequence

import numpy as np

from sbir_jax.evaluators import ranking


def true_match_ranks(energy_QxG: np.ndarray,
                     targets: Optional[np.ndarray] = None) -> np.ndarray:
  """0-based rank of the true match (column targets[q], default q) per query q."""
  energy_QxG = ranking.check_scores(energy_QxG, 'energy')
  num_queries, gallery = energy_QxG.shape
  if targets is None:
    if num_queries > gallery:
      raise ValueError(f'Energy matrix must be (queries, gallery) with queries '
                       f'<= gallery when query i matches item i; got '
                       f'{energy_QxG.shape}. Pass targets when queries share '
                       'gallery items.')
    targets = np.arange(num_queries)
  targets = np.asarray(targets)
  if targets.shape != (num_queries,) or not np.issubdtype(targets.dtype, np.integer):
    raise ValueError(f'targets must be ({num_queries},) integers, one gallery '
                     f'index per query; got {targets.shape} {targets.dtype}.')
  if num_queries and (targets.min() < 0 or targets.max() >= gallery):
    raise ValueError(f'targets must lie in [0, {gallery}); got '
                     f'[{targets.min()}, {targets.max()}].')
  true = energy_QxG[np.arange(num_queries), targets][:, None]
  # Every item at or below the true match's energy, less the true match itself.
  return np.sum(energy_QxG <= true, axis=1) - 1


def accuracy_at_k(energy_QxG: np.ndarray, ks: Sequence[int],
                  targets: Optional[np.ndarray] = None,
                  intervals: bool = True) -> dict[str, float]:
  """{'acc@K': percentage} for each K, with its 95% bootstrap interval over
  the queries ('acc@K_ci_low', 'acc@K_ci_high'; intervals=False drops them).
  See `true_match_ranks` for targets."""
  ranks = true_match_ranks(energy_QxG, targets)
  return ranking.summarise({f'acc@{k}': ranks < k for k in ks}, scale=100.0,
                           intervals=intervals)


class Evaluator:
  """acc@K (config.eval.ks) of a split; `predict_fn(variables, split)` gives
  {'distances': (Q, G) lower = closer, 'targets': (Q,) true gallery item}."""

  def __init__(self, predict_fn, split: str, config):
    self.predict_fn, self.split, self.ks = predict_fn, split, tuple(config.eval.ks)

  def run(self, variables: dict) -> dict[str, float]:
    out = self.predict_fn(variables, self.split)
    return accuracy_at_k(out['distances'], self.ks, targets=out['targets'])
