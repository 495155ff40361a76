"""The parameter-free zero-shot baselines: untrained features, ESZSL and SAE.

An evaluator (`config.evals.<name>.type = 'sbir_jax.tasks.zs_sbir.baselines'`,
pred 'features'): untrained = the raw fixed features ranked by cosine;
ESZSL / SAE = sketches and photos mapped into class word-vector space by
closed-form maps fitted on the seen classes (`models/zs_baselines.py`).
Computed once per split (they have no trained parameters). With
`config.eval.tune_baselines`, the ESZSL / SAE hyper-parameters are chosen
on the validation classes (mAP@all over `GRID`), as the trained models'
are, and reported beside their metrics (`<kind>_<hyper-parameter>`).
"""
import os
from typing import Sequence

import ml_collections
import numpy as np

from sbir_jax import ops
from sbir_jax.evaluators import precision_map
from sbir_jax.models import zs_baselines

KINDS = ('untrained', 'eszsl', 'sae')
_QUERIES_PER_BLOCK = 1024
GRID = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)  # Each hyper-parameter, when tuned.


def candidate_settings(kind: str, ecfg: ml_collections.ConfigDict) -> list[dict[str, float]]:
  """The hyper-parameter settings to try: the config's, or the grid when tuned."""
  names = {'eszsl': ('eszsl_gamma', 'eszsl_lambda'), 'sae': ('sae_lambda',)}[kind]
  if not ecfg.tune_baselines:
    return [{n: float(ecfg[n]) for n in names}]
  grids = np.meshgrid(*[GRID] * len(names), indexing='ij')
  return [dict(zip(names, map(float, values)))
          for values in zip(*(g.ravel() for g in grids))]


def fit_semantic_baseline(kind: str, train, semantic: dict, settings: dict[str, float]):
  """(sketch map, photo map) into word-vector space, fitted on seen classes."""
  classes = sorted(set(train.sketch_labels.tolist()) | set(train.photo_labels.tolist()))
  s_CxA = np.stack([semantic[c] for c in classes])
  index = {c: i for i, c in enumerate(classes)}

  def fit(x, labels):
    x = ops.l2_normalize(x)
    y = np.array([index[c] for c in labels.tolist()])
    if kind == 'eszsl':
      return zs_baselines.eszsl_projection(x, y, s_CxA, settings['eszsl_gamma'],
                                           settings['eszsl_lambda'])
    return zs_baselines.sae_projection(x, y, s_CxA, settings['sae_lambda'])
  return fit(train.sketches, train.sketch_labels), fit(train.photos, train.photo_labels)


def load_semantics(data: ml_collections.ConfigDict, classes) -> dict:
  for path in (data.semantic_file, data.vocab_file):
    if not os.path.isfile(path):
      raise FileNotFoundError(
          f'{path} not found (class word vectors for the ESZSL / SAE baselines, '
          'from zeroshot_splits/ of the shared data). Set config.data.'
          'semantic_file / vocab_file, or drop the baselines: '
          "--config.eval.baselines=\"('untrained',)\".")
  vectors = np.load(data.semantic_file, allow_pickle=False)
  with open(data.vocab_file) as f:
    vocab = [line.strip() for line in f if line.strip()]
  if len(vocab) != len(vectors):
    raise ValueError(f'{data.vocab_file} has {len(vocab)} classes but '
                     f'{data.semantic_file} {len(vectors)} vectors.')
  table = dict(zip(vocab, vectors.astype(np.float64)))
  missing = sorted(set(classes) - set(table))
  if missing:
    raise ValueError(f'No word vector for class(es) {missing} in {data.vocab_file}; '
                     "drop the eszsl / sae baselines (--config.eval.baselines).")
  return table


def baseline_metrics(kind: str, data, semantic_maps, ks: Sequence[int]) -> dict[str, float]:
  """P@K / mAP of one baseline on an EvalData split."""
  if kind == 'untrained':
    q, g = ops.l2_normalize(data.queries), ops.l2_normalize(data.gallery)
  elif kind in ('eszsl', 'sae'):
    sketch_map, photo_map = semantic_maps(kind)
    q = ops.l2_normalize(ops.l2_normalize(data.queries) @ sketch_map)
    g = ops.l2_normalize(ops.l2_normalize(data.gallery) @ photo_map)
  else:
    raise ValueError(f'Unknown baseline {kind!r} in config.eval.baselines; '
                     f'known: {", ".join(KINDS)}.')
  acc = precision_map.MetricAccumulator(data.gallery_labels, ks)
  for start in range(0, len(q), _QUERIES_PER_BLOCK):
    block = slice(start, start + _QUERIES_PER_BLOCK)
    acc.add(q[block] @ g.T, data.query_labels[block])
  return acc.result()


class Evaluator:
  """Every baseline of config.eval.baselines on a split, as `<kind>_<metric>`."""

  def __init__(self, predict_fn, split: str, config: ml_collections.ConfigDict):
    self.predict_fn, self.split = predict_fn, split
    self.kinds, self.ks = tuple(config.eval.baselines), tuple(config.eval.ks)
    self._cache = None

  def run(self, variables: dict) -> dict[str, float]:
    if self._cache is None:  # Nothing trained: the same numbers every time.
      out = self.predict_fn(variables, self.split)
      self._cache = {f'{kind}_{k}': v for kind in self.kinds for k, v in
                     baseline_metrics(kind, out['data'], out['semantic_maps'],
                                      self.ks).items()}
      for kind in set(self.kinds) - {'untrained'}:  # The hyper-parameters used.
        self._cache.update(out['semantic_settings'](kind))
    return dict(self._cache)
