"""Category-level retrieval metrics: precision@K, mAP@K (two definitions), mAP@all.

Used by zero-shot SBIR (Yelamarthi et al., ECCV 2018, section 5): a gallery
item is relevant to a query when it has the query's class.

Ranking and ties: the gallery is sorted by score, higher first (similarity,
e.g. cosine; pass `-distance` for distances). Ties never help (the rule of
`ranking.py`): among items with exactly equal scores the irrelevant ones rank
first, then gallery order, so the ranking is deterministic and a collapsed
model scores the worst ranking, not a lucky one. With real-valued features
exact ties are rare; the tests pin this rule on hand-made rankings. A query
with no relevant item in the gallery, NaN scores or an empty gallery are
refused with a message naming the rows, never scored.

Definitions, for one query with relevance r_1..r_n in rank order:
  P@K         = (1/K) sum_{i<=K} r_i.
  AP@K        (standard) = sum_{i<=K} r_i * P@i / (sum_{i<=K} r_i), and 0 when
              no relevant item is in the top K.
  AP@K /K     (the released ZS-SBIR code) = sum_{i<=K} r_i * P@i / K. It is
              never above the standard AP@K and reaches 1 only if all K
              retrieved items are relevant.
  AP@all      = AP@n with n the gallery size: the usual mAP (the denominator
              is then every relevant item in the gallery).
Every metric is the mean over queries.
"""
from typing import Sequence

import numpy as np

from sbir_jax.evaluators import ranking


def ranked_relevance(scores_QxG: np.ndarray, query_labels_Q: np.ndarray,
                     gallery_labels_G: np.ndarray,
                     k: int | None = None) -> np.ndarray:
  """(Q, k) bool: is the i-th ranked gallery item of the query's class.

  Ties rank irrelevant items first (`ranking.py`). k=None ranks the whole gallery.
  """
  scores_QxG = ranking.check_scores(scores_QxG)
  query_labels_Q = np.asarray(query_labels_Q)
  gallery_labels_G = np.asarray(gallery_labels_G)
  if scores_QxG.ndim != 2 or scores_QxG.shape != (len(query_labels_Q),
                                                  len(gallery_labels_G)):
    raise ValueError(f'scores must be (queries, gallery) = ({len(query_labels_Q)}, '
                     f'{len(gallery_labels_G)}); got {scores_QxG.shape}.')
  relevant_QxG = gallery_labels_G[None, :] == query_labels_Q[:, None]
  ranking.check_every_query_has_a_hit(relevant_QxG, "item of the query's class")
  order_QxG = ranking.order_ties_against(scores_QxG, relevant_QxG)
  if k is not None:
    order_QxG = order_QxG[:, :k]
  return np.take_along_axis(relevant_QxG, order_QxG, axis=1)


def precision_at_k(relevance_QxN: np.ndarray, k: int) -> np.ndarray:
  """(Q,) P@K. If the gallery has fewer than K items, missing ranks count as misses."""
  return relevance_QxN[:, :k].sum(axis=1) / k


def average_precision(relevance_QxN: np.ndarray, k: int | None = None,
                      divide_by_k: bool = False) -> np.ndarray:
  """(Q,) AP@K from ranked relevance; k=None uses every rank given (AP@all).

  divide_by_k=True is the released ZS-SBIR code's variant (sum / K).
  """
  rel = np.asarray(relevance_QxN, np.float64)
  if k is not None:
    rel = rel[:, :k]
  ranks = np.arange(1, rel.shape[1] + 1)
  precision_at_i = np.cumsum(rel, axis=1) / ranks
  total = np.sum(precision_at_i * rel, axis=1)
  if divide_by_k:
    if k is None:
      raise ValueError('divide_by_k needs a k.')
    return total / k
  hits = rel.sum(axis=1)
  return np.divide(total, hits, out=np.zeros_like(total), where=hits > 0)


def per_query_metrics(scores_QxG: np.ndarray, query_labels_Q: np.ndarray,
                      gallery_labels_G: np.ndarray,
                      ks: Sequence[int]) -> dict[str, np.ndarray]:
  """Per-query P@K, mAP@K (both definitions) for each K, and mAP@all."""
  rel = ranked_relevance(scores_QxG, query_labels_Q, gallery_labels_G)
  out = {'mAP@all': average_precision(rel)}
  for k in ks:
    out[f'P@{k}'] = precision_at_k(rel, k)
    out[f'mAP@{k}'] = average_precision(rel, k)
    out[f'mAP@{k}_div_k'] = average_precision(rel, k, divide_by_k=True)
  return out


def retrieval_metrics(scores_QxG: np.ndarray, query_labels_Q: np.ndarray,
                      gallery_labels_G: np.ndarray, ks: Sequence[int],
                      intervals: bool = True) -> dict[str, float]:
  """Mean over queries of `per_query_metrics`, each with its 95% bootstrap
  interval over the queries (`<name>_ci_low`, `<name>_ci_high`)."""
  return ranking.summarise(
      per_query_metrics(scores_QxG, query_labels_Q, gallery_labels_G, ks),
      intervals=intervals)


class MetricAccumulator:
  """`retrieval_metrics` over query chunks (large galleries): per-query
  values are kept (a few floats a query) so the intervals are exact."""

  def __init__(self, gallery_labels_G: np.ndarray, ks: Sequence[int]):
    self.gallery_labels_G = np.asarray(gallery_labels_G)
    self.ks = tuple(ks)
    self._values: dict[str, list[np.ndarray]] = {}

  def add(self, scores_QxG: np.ndarray, query_labels_Q: np.ndarray) -> None:
    for name, v in per_query_metrics(scores_QxG, query_labels_Q,
                                     self.gallery_labels_G, self.ks).items():
      self._values.setdefault(name, []).append(v)

  def result(self, intervals: bool = True) -> dict[str, float]:
    if not self._values:
      raise ValueError('No queries were evaluated.')
    return ranking.summarise({name: np.concatenate(chunks)
                              for name, chunks in self._values.items()},
                             intervals=intervals)


class Evaluator:
  """P@K, mAP@K (both forms) and mAP@all of a split, streamed: `predict_fn(
  variables, split)` gives {'gallery_labels': (G,), 'batches': iterable of
  (scores (B, G) higher = closer, query labels (B,))}."""

  def __init__(self, predict_fn, split: str, config):
    self.predict_fn, self.split, self.ks = predict_fn, split, tuple(config.eval.ks)

  def run(self, variables: dict) -> dict[str, float]:
    out = self.predict_fn(variables, self.split)
    acc = MetricAccumulator(out['gallery_labels'], self.ks)
    for scores, labels in out['batches']:
      acc.add(scores, labels)
    return acc.result()
