"""Recall@K for composed-query retrieval, with TIRG's protocol (test_retrieval.py).

Queries and gallery features are L2-normalised and ranked by dot product; the
only gallery image removed from a query's ranking is its own reference image;
a query is a hit at K if any of its top K images has the target's label (TIRG
compares captions: on CSS the caption is str(label), so duplicate scenes count
as the target). Recall@K is the percentage of hits, with its 95% bootstrap
interval over the queries. Ties never help (the rule of `ranking.py`): among
images with equal scores, those without the target's label rank first. A
query whose target label is nowhere in its gallery (its own image removed)
is refused, never scored as a miss.
"""
from typing import Sequence

import numpy as np

from sbir_jax import ops
from sbir_jax.evaluators import ranking

DEFAULT_KS = (1, 5, 10, 50)


def rank_gallery(queries_QxD: np.ndarray, gallery_GxD: np.ndarray,
                 source_ids_Q: np.ndarray, top: int,
                 target_labels_Q: np.ndarray, gallery_labels_G: np.ndarray
                 ) -> np.ndarray:
  """(Q, top) gallery indices, best first, each query's own image removed;
  equal scores rank the images without the target's label first."""
  sims_QxG = ranking.check_scores(
      ops.l2_normalize(queries_QxD) @ ops.l2_normalize(gallery_GxD).T)
  rows = np.arange(len(sims_QxG))
  source_ids_Q = np.asarray(source_ids_Q)
  sims_QxG[rows, source_ids_Q] = -np.inf
  target_QxG = (np.asarray(gallery_labels_G)[None, :]
                == np.asarray(target_labels_Q)[:, None])
  target_QxG[rows, source_ids_Q] = False
  ranking.check_every_query_has_a_hit(
      target_QxG, "image with the target's label (besides the query's own)")
  top = min(top, sims_QxG.shape[1] - 1)
  return ranking.order_ties_against(sims_QxG, target_QxG)[:, :top]


def recall_from_ranked_labels(ranked_labels_QxT: np.ndarray,
                              target_labels_Q: np.ndarray,
                              ks: Sequence[int] = DEFAULT_KS,
                              intervals: bool = True) -> dict[str, float]:
  """{'recall@K': %} (and its 95% interval) from each query's ranked labels."""
  hits_QxT = np.asarray(ranked_labels_QxT) == np.asarray(target_labels_Q)[:, None]
  return ranking.summarise({f'recall@{k}': hits_QxT[:, :k].any(axis=1) for k in ks},
                           scale=100.0, intervals=intervals)


def recall_at_k(queries_QxD: np.ndarray, gallery_GxD: np.ndarray,
                source_ids_Q: np.ndarray, target_labels_Q: np.ndarray,
                gallery_labels_G: np.ndarray, ks: Sequence[int] = DEFAULT_KS,
                intervals: bool = True) -> tuple[dict[str, float], np.ndarray]:
  """Recall@K (TIRG's protocol) and the (Q, max K) ranking it came from."""
  ranking_QxT = rank_gallery(queries_QxD, gallery_GxD, source_ids_Q, max(ks),
                             target_labels_Q, gallery_labels_G)
  labels = np.asarray(gallery_labels_G)[ranking_QxT]
  return (recall_from_ranked_labels(labels, target_labels_Q, ks, intervals),
          ranking_QxT)


class Evaluator:
  """Recall@K (config.eval.ks) of a split; `predict_fn(variables, split)`
  gives the arguments of `recall_at_k` by name (queries, gallery,
  source_ids, target_labels, gallery_labels)."""

  def __init__(self, predict_fn, split: str, config):
    self.predict_fn, self.split, self.ks = predict_fn, split, tuple(config.eval.ks)

  def run(self, variables: dict) -> dict[str, float]:
    out = self.predict_fn(variables, self.split)
    metrics, _ = recall_at_k(out['queries'], out['gallery'], out['source_ids'],
                             out['target_labels'], out['gallery_labels'], self.ks)
    return metrics
