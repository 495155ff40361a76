"""acc@K for instance-level retrieval (FG-SBIR): query i's true match is item i.

acc@K is the fraction of queries whose true match ranks in the top K of the
gallery by energy (lower = closer). The rank counts gallery items with a
strictly lower energy, so exact ties are resolved in the query's favour
(ties do not occur with real-valued embeddings).
"""
from typing import Sequence

import numpy as np


def true_match_ranks(energy_QxG: np.ndarray) -> np.ndarray:
  """0-based rank of the true match (column q) for each query q."""
  energy_QxG = np.asarray(energy_QxG)
  if energy_QxG.ndim != 2 or energy_QxG.shape[0] > energy_QxG.shape[1]:
    raise ValueError(f'Energy matrix must be (queries, gallery) with queries '
                     f'<= gallery; got {energy_QxG.shape}.')
  true = np.diagonal(energy_QxG)[:, None]
  return np.sum(energy_QxG < true, axis=1)


def accuracy_at_k(energy_QxG: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
  """{'acc@K': percentage} for each K."""
  ranks = true_match_ranks(energy_QxG)
  return {f'acc@{k}': float(100.0 * np.mean(ranks < k)) for k in ks}
