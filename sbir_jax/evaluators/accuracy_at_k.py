"""acc@K for instance-level retrieval (FG-SBIR): query i's true match is one
gallery item, `targets[i]` (by default item i, the QMUL V1 layout).

acc@K is the fraction of queries whose true match ranks in the top K of the
gallery by energy (lower = closer). The rank counts gallery items with a
strictly lower energy, so exact ties are resolved in the query's favour
(ties do not occur with real-valued embeddings). Several queries may share a
target (QMUL-Chair-V2: several sketches per photo), so queries may outnumber
the gallery when targets are given.
"""
from typing import Optional, Sequence

import numpy as np


def true_match_ranks(energy_QxG: np.ndarray,
                     targets: Optional[np.ndarray] = None) -> np.ndarray:
  """0-based rank of the true match (column targets[q], default q) per query q."""
  energy_QxG = np.asarray(energy_QxG)
  if energy_QxG.ndim != 2:
    raise ValueError(f'Energy matrix must be 2-D (queries, gallery); got '
                     f'{energy_QxG.shape}.')
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
  return np.sum(energy_QxG < true, axis=1)


def accuracy_at_k(energy_QxG: np.ndarray, ks: Sequence[int],
                  targets: Optional[np.ndarray] = None) -> dict[str, float]:
  """{'acc@K': percentage} for each K; see `true_match_ranks` for targets."""
  ranks = true_match_ranks(energy_QxG, targets)
  return {f'acc@{k}': float(100.0 * np.mean(ranks < k)) for k in ks}
