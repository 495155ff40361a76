"""Zero-shot SBIR (Yelamarthi et al., ECCV 2018): CVAE, CAAE, regression on fixed features.

Data: image sets (Sketchy via its TFDS builder, or QuickDraw + TU-Berlin)
-> fixed features, extracted once and cached (`features.py`) ->
in-memory feature arrays. Training pairs a seen-class sketch with its photo
(Sketchy: the photo it was drawn from) or with a random item of its class
(the doodle check, where no instance pairs exist), drawn with numpy keyed by
(seed, step): a resumed run sees the batches an uninterrupted one would.

Retrieval (section 4.3): for each query sketch draw `num_samples` z ~ N(0, I),
decode them with the sketch into photo features, and either average them
('average', the released code) and rank the gallery by cosine, or cluster
them with k-means ('kmeans', the paper) and rank each gallery item by its
smallest cosine distance to a centre. Metrics: P@K, mAP@K (standard and /K),
mAP@all (`evaluators/precision_map.py`), on the unseen classes' gallery.
Every evaluation also reports the parameter-free baselines: untrained
features (raw cosine), ESZSL and SAE (closed form on class word vectors).

Train state: params {'model': ..., 'discriminator': ... (CAAE)}, the
CVAE's BatchNorm statistics in model_state. CAAE's two players share one
loss: the discriminator's term sees the latent codes through stop_gradient
and the generator's sees the discriminator's parameters through
stop_gradient, so one gradient moves each player by its own loss, and the
optimizer's `discriminator` group gives it its own rate.
"""
import dataclasses
import functools
import os
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from sbir_jax import image_sets
from sbir_jax import ops
from sbir_jax import pictures
from sbir_jax.core import precision
from sbir_jax.core import sharding
from sbir_jax.tasks.zs_sbir import baselines
from sbir_jax.tasks.zs_sbir import features
from sbir_jax.datasets import quickdraw
from sbir_jax.datasets import sketchy
from sbir_jax.datasets import tu_berlin
from sbir_jax.models import zs_baselines
from sbir_jax.models import zs_caae
from sbir_jax.models import zs_cvae

RETRIEVALS = ('average', 'kmeans')


@dataclasses.dataclass(frozen=True)
class TrainData:
  sketches: np.ndarray  # (N, D) float32
  sketch_labels: np.ndarray  # (N,) str
  photos: np.ndarray  # (M, D)
  photo_labels: np.ndarray  # (M,) str
  photo_of_sketch: np.ndarray | None  # (N,) int: instance pairs, or None: by class.

  def __len__(self) -> int:
    return len(self.sketches)


@dataclasses.dataclass(frozen=True)
class EvalData:
  queries: np.ndarray  # (Q, D)
  query_labels: np.ndarray  # (Q,) str
  gallery: np.ndarray  # (G, D)
  gallery_labels: np.ndarray  # (G,) str
  # The images behind the features (for pictures), where the source has them.
  query_images: image_sets.ImageSet | None = None
  gallery_images: image_sets.ImageSet | None = None

  def __len__(self) -> int:
    return len(self.queries)


def _capped(mask: np.ndarray, labels: np.ndarray, ids: np.ndarray,
            cap: int) -> np.ndarray:
  """`mask` keeping only the first `cap` ids (sorted) of each class; 0 = all."""
  if not cap:
    return mask
  keep = np.zeros(len(labels), bool)
  for c in np.unique(labels[mask]):
    members = np.flatnonzero(mask & (labels == c))
    keep[members[np.argsort(ids[members])[:cap]]] = True
  return keep


def _in(labels: np.ndarray, classes) -> np.ndarray:
  return np.isin(labels, np.asarray(list(classes)))


# --- Data sources ---------------------------------------------------------------
def _gallery_set(builder, data: ml_collections.ConfigDict, photo):
  """The photos the unseen classes are retrieved from (config.data.gallery)."""
  has_extended = 'extended' in builder.info.splits
  if data.gallery == 'auto':
    if has_extended:
      return sketchy.image_set(builder, 'extended')
    logging.info('No Sketchy-Extended folder in %s: the gallery is the Sketchy '
                 "photos of the unseen classes (config.data.gallery='sketchy'), "
                 "not the paper's Sketchy-Extended.", data.manual_dir)
    return photo
  if data.gallery == 'extended':
    if not has_extended:
      raise sketchy.SketchyError(
          f'config.data.gallery="extended" but {data.manual_dir} has no '
          'extended/ folder (Sketchy-Extended photos). Add it, or use the '
          'Sketchy photos: --config.data.gallery=sketchy (variant sketchy_gallery).')
    return sketchy.image_set(builder, 'extended')
  if data.gallery == 'sketchy':
    return photo
  raise ValueError(f'config.data.gallery={data.gallery!r}; use auto, extended or sketchy.')


def load_sketchy(data: ml_collections.ConfigDict, store_for) -> dict:
  """train / val / test of the Sketchy zero-shot split.

  Seen = every class not listed as unseen; `sketchy.class_splits` holds some
  seen classes out as pseudo-unseen ones (their sketches query their photos),
  so checkpoints and hyper-parameters are chosen without the test classes.
  """
  builder = sketchy.build(data.manual_dir, data.tfds_data_dir)
  sketch = sketchy.image_set(builder, 'sketch')
  photo = sketchy.image_set(builder, 'photo')
  classes = sketchy.class_splits(sketch.labels, data)
  train_classes, val_classes, unseen = classes['train'], classes['val'], classes['test']
  gallery_set = _gallery_set(builder, data, photo)
  sketchy.check_gallery(gallery_set.labels, unseen,
                        f'{gallery_set.name} of {data.manual_dir}')
  store = store_for(data.manual_dir)

  train_mask = _capped(_in(sketch.labels, train_classes), sketch.labels, sketch.ids,
                       data.max_train_sketches_per_class)
  train_sketch = sketch.select(train_mask)
  # Only the photos the training sketches were drawn from are ever used.
  train_photo, photo_of_sketch = sketchy.paired_photos(train_sketch, photo,
                                                       data.manual_dir, 'training')

  def retrieval(classes, gallery_images) -> EvalData:
    query = sketch.select(_capped(_in(sketch.labels, classes), sketch.labels,
                                  sketch.ids, data.max_queries_per_class))
    gallery = gallery_images.select(_in(gallery_images.labels, classes))
    return EvalData(store.get(query), query.labels, store.get(gallery), gallery.labels,
                    query, gallery)

  return {
      'train': TrainData(store.get(train_sketch), train_sketch.labels,
                         store.get(train_photo), train_photo.labels, photo_of_sketch),
      # The photos of the held-out seen classes: Sketchy-Extended has no
      # seen-class split of its own to draw a validation gallery from.
      'val': retrieval(val_classes, photo),
      'test': retrieval(unseen, gallery_set),
  }


def load_doodle(data: ml_collections.ConfigDict, store_for) -> dict:
  """QuickDraw doodles (queries) -> TU-Berlin sketches (gallery); configs/zs_doodle.py."""
  seen, unseen = list(data.seen_classes), list(data.unseen_classes)
  both = sorted(set(seen) & set(unseen))
  if both:
    raise ValueError(f'Classes {both} are both seen and unseen; fix '
                     'config.data.seen_classes / unseen_classes.')
  doodles = quickdraw.load(data.quickdraw_dir, ('train', 'test'), seen + unseen)
  tu = tu_berlin.load(data.tu_berlin_dir, ('train', 'test'), seen + unseen)
  store = store_for(data.quickdraw_dir, data.tu_berlin_dir)

  def split_of(s: image_sets.ImageSet, name: str) -> np.ndarray:
    return np.char.startswith(s.ids.astype(str), name + '/')

  def subset(s, mask):
    chosen = s.select(mask)
    return store.get(chosen), chosen.labels

  train_q = subset(doodles, _capped(
      split_of(doodles, 'train') & _in(doodles.labels, seen), doodles.labels,
      doodles.ids, data.max_train_sketches_per_class))
  train_g = subset(tu, split_of(tu, 'train') & _in(tu.labels, seen))
  val_q = subset(doodles, split_of(doodles, 'test') & _in(doodles.labels, seen))
  val_g = subset(tu, split_of(tu, 'test') & _in(tu.labels, seen))
  test_q = subset(doodles, _capped(_in(doodles.labels, unseen), doodles.labels,
                                   doodles.ids, data.max_queries_per_class))
  test_g = subset(tu, _in(tu.labels, unseen))
  sketchy.check_gallery(test_g[1], unseen, data.tu_berlin_dir)
  return {'train': TrainData(*train_q, *train_g, None),
          'val': EvalData(*val_q, *val_g),
          'test': EvalData(*test_q, *test_g)}


# --- Retrieval maths (traced inside jit) ------------------------------------------
def kmeans(x_SxD: jax.Array, k: int, iterations: int) -> jax.Array:
  """(k, D) Lloyd's k-means centres, started from the first k points.

  The points are random decoder samples, so the first k are a random start.
  A cluster that empties keeps its previous centre.
  """
  def step(_, c_KxD):
    d_SxK = jnp.sum((x_SxD[:, None] - c_KxD[None]) ** 2, axis=-1)
    onehot_SxK = jax.nn.one_hot(jnp.argmin(d_SxK, axis=1), k)
    counts_K = onehot_SxK.sum(axis=0)
    means_KxD = (onehot_SxK.T @ x_SxD) / jnp.maximum(counts_K, 1.0)[:, None]
    return jnp.where(counts_K[:, None] > 0, means_KxD, c_KxD)
  return jax.lax.fori_loop(0, iterations, step, x_SxD[:k])


# --- The task ----------------------------------------------------------------------
class ZsSbirTask:
  """The zero-shot SBIR task (contract: sbir_jax/core/task.py)."""
  modes = {}

  def __init__(self, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
    self.config = config
    self.mesh = mesh
    m = config.model
    if config.eval.retrieval not in RETRIEVALS:
      raise ValueError(f'config.eval.retrieval={config.eval.retrieval!r}; choose '
                       f'one of {RETRIEVALS}.')
    d = config.features.dim
    common = dict(feature_dim=d, encoder_dims=tuple(m.encoder_dims),
                  latent_dim=m.latent_dim, decoder_dims=tuple(m.decoder_dims),
                  regulariser_dims=tuple(m.regulariser_dims),
                  dropout_rate=m.dropout_rate)
    dtype = precision.compute_dtype(config)  # None: float32.
    if m.name == 'cvae':
      self.model = zs_cvae.CVAE(**common, dtype=dtype)
    elif m.name == 'caae':
      self.model = zs_caae.CAAE(**common, dtype=dtype)
      self.disc = zs_caae.Discriminator(tuple(m.disc_dims), dtype=dtype)
      zs_caae.generator_adversarial_loss(jnp.zeros(1), m.adversarial_loss)  # Validates.
    elif m.name == 'regression':
      self.model = zs_baselines.Regression(d, tuple(m.regression_dims), dtype=dtype)
    else:
      raise ValueError(f'config.model.name={m.name!r}; the zs_sbir task knows '
                       'cvae, caae, regression.')
    self.feature_stores: list[features.FeatureStore] = []

  # --- data ----------------------------------------------------------------------
  def _store_for(self, *sources: str) -> features.FeatureStore:
    cfg = self.config.features
    store = features.FeatureStore(cfg, self.mesh, features.cache_dir(cfg, *sources))
    self.feature_stores.append(store)
    return store

  @functools.cached_property
  def splits(self) -> dict:
    """Loaded on first use (features extracted or read from the cache)."""
    data = self.config.data
    if data.source == 'sketchy':
      splits = load_sketchy(data, self._store_for)
    elif data.source == 'doodle':
      splits = load_doodle(data, self._store_for)
    else:
      raise ValueError(f'config.data.source={data.source!r}; use sketchy or doodle.')
    if self.config.features.unit_norm:
      splits = {name: _unit_norm(split) for name, split in splits.items()}
    return splits

  def load_data(self) -> dict[str, str]:
    out = {}
    for name, split in self.splits.items():
      if isinstance(split, TrainData):
        out[f'{name} sketches/photos'] = f'{len(split)}/{len(split.photos)}'
      else:
        out[f'{name} queries/gallery'] = f'{len(split)}/{len(split.gallery)}'
    return out

  def batch_spec(self) -> dict[str, jax.ShapeDtypeStruct]:
    rows = self.config.batch_size // jax.process_count()
    feature = jax.ShapeDtypeStruct((rows, self.config.features.dim), np.float32)
    return {'sketch': feature, 'photo': feature}

  def train_batches(self, start_step: int) -> Iterator[dict]:
    train = self.splits['train']
    batch = self.config.batch_size
    rows = sharding.process_rows(batch)
    by_class = None
    if train.photo_of_sketch is None:  # Pair with a random photo of the class.
      by_class = {c: np.flatnonzero(train.photo_labels == c)
                  for c in np.unique(train.sketch_labels)}
      missing = [c for c, v in by_class.items() if not len(v)]
      if missing:
        raise ValueError(f'No gallery-side training item of class(es) {missing}.')
    step = start_step
    while True:
      rng = np.random.default_rng([self.config.seed, step])
      idx = rng.integers(0, len(train), batch)
      if by_class is None:
        photo = train.photo_of_sketch[idx]
      else:
        u = rng.random(batch)
        photo = np.array([by_class[c][int(x * len(by_class[c]))] for c, x in
                          zip(train.sketch_labels[idx].tolist(), u)])
      yield {'sketch': train.sketches[idx][rows], 'photo': train.photos[photo][rows]}
      step += 1

  # --- variables and loss -------------------------------------------------------
  def _model_inputs(self, n: int = 1):
    zeros = jnp.zeros((n, self.config.features.dim))
    if self.config.model.name == 'regression':
      return (zeros,)
    return (zeros, zeros, False)

  def init_variables(self, rng: jax.Array) -> tuple[Any, Any]:
    r_model, r_noise, r_disc = jax.random.split(rng, 3)
    variables = dict(self.model.init({'params': r_model, 'noise': r_noise},
                                     *self._model_inputs()))
    params = {'model': variables.pop('params')}
    if self.config.model.name == 'caae':
      params['discriminator'] = self.disc.init(
          r_disc, jnp.zeros((1, self.config.model.latent_dim)))['params']
    return params, variables

  def loss_fn(self, params, model_state, batch: dict, rng: jax.Array):
    """The model's loss (CAAE: plus its discriminator's; module docstring)."""
    name, lcfg = self.config.model.name, self.config.loss
    r_noise, r_dropout, r_prior = jax.random.split(rng, 3)
    img, sketch = batch['photo'], batch['sketch']
    if name == 'regression':
      pred = self.model.apply({'params': params['model']}, sketch)
      loss = jnp.mean(zs_cvae.mse(pred, img))
      return loss, ({'recon': loss}, model_state)
    out, updates = self.model.apply(
        {'params': params['model'], **model_state}, img, sketch, True,
        mutable=['batch_stats'], rngs={'noise': r_noise, 'dropout': r_dropout})
    if name == 'cvae':
      loss, parts = zs_cvae.cvae_loss(out, img, sketch, lcfg.sketch_recon_weight,
                                      lcfg.kl_weight)
      return loss, (parts, dict(updates))
    # CAAE: the adversarial term replaces the KL; the discriminator is fixed here.
    disc_params = jax.lax.stop_gradient(params['discriminator'])
    fake = self.disc.apply({'params': disc_params}, out['z'])
    generator_loss, parts = zs_caae.caae_loss(
        out, img, sketch, fake, lcfg.sketch_recon_weight, lcfg.adversarial_weight,
        self.config.model.adversarial_loss)
    # ... and its own loss sees fixed codes (a prior sample against the encoder's).
    z_fake = jax.lax.stop_gradient(out['z'])
    z_real = jax.random.normal(r_prior, z_fake.shape)
    d_loss, d_acc = zs_caae.discriminator_loss(
        self.disc.apply({'params': params['discriminator']}, z_real),
        self.disc.apply({'params': params['discriminator']}, z_fake))
    parts = dict(parts, generator_loss=generator_loss, disc_loss=d_loss,
                 disc_accuracy=d_acc)
    return generator_loss + d_loss, (parts, dict(updates))

  # --- evaluation ------------------------------------------------------------------
  @functools.cache
  def _score_fn(self, retrieval: str):
    """(params, queries (B, D) sharded, gallery (G, D) unit rows, rng) -> (B, G) cosine."""
    ecfg, name = self.config.eval, self.config.model.name
    if retrieval not in RETRIEVALS:
      raise ValueError(f'Retrieval {retrieval!r}; choose one of {RETRIEVALS}.')

    def score(variables, queries_BxD, gallery_GxD, rng):
      model_vars = _model_variables(variables)
      if name == 'regression':
        pred_BxD = self.model.apply(model_vars, queries_BxD)
        return ops.l2_normalize(pred_BxD) @ gallery_GxD.T
      b, s = queries_BxD.shape[0], ecfg.num_samples
      z_BxSxZ = jax.random.normal(rng, (b, s, self.config.model.latent_dim))
      sketch_BxSxD = jnp.broadcast_to(queries_BxD[:, None], (b, s, queries_BxD.shape[1]))
      decoded_BxSxD = self.model.apply(model_vars, z_BxSxZ, sketch_BxSxD,
                                       method=self.model.decode)
      if retrieval == 'average':
        return ops.l2_normalize(decoded_BxSxD.mean(axis=1)) @ gallery_GxD.T
      centres_BxKxD = jax.vmap(lambda x: kmeans(x, ecfg.num_clusters,
                                                ecfg.kmeans_iterations))(decoded_BxSxD)
      # Smallest cosine distance to a centre = largest cosine similarity.
      return jnp.max(ops.l2_normalize(centres_BxKxD) @ gallery_GxD.T, axis=1)

    rep = sharding.replicated(self.mesh)
    return jax.jit(score, in_shardings=(rep, sharding.batch_sharding(self.mesh), rep, rep),
                   out_shardings=rep)

  def score_batches(self, variables: dict, split: str,
                    retrieval: str | None = None) -> Iterator[tuple]:
    """(scores (B, G), query labels (B,)) per eval batch of the split's queries;
    `retrieval` defaults to config.eval.retrieval."""
    data: EvalData = self.splits[split]
    score_fn = self._score_fn(retrieval or self.config.eval.retrieval)
    batch = self.config.eval.batch_size
    gallery = jax.device_put(np.asarray(ops.l2_normalize(data.gallery), np.float32),
                             sharding.replicated(self.mesh))
    base_rng = jax.random.key(self.config.seed + 1)  # Same samples at every eval.
    chunks = sharding.row_chunks(data.queries, batch)
    for i, (n, queries) in enumerate(sharding.padded_global_batches(
        chunks, batch, self.mesh)):
      scores = score_fn(variables, queries, gallery, jax.random.fold_in(base_rng, i))
      yield np.asarray(scores)[:n], data.query_labels[i * batch:i * batch + n]

  @property
  def predict_fns(self) -> dict:
    """'scores': streamed query x gallery scores (precision_map);
    'scores_<retrieval>' (generative models): the same with that retrieval
    from the decoded samples, so one trained model reports both;
    'features': the split's fixed features and the fitted ESZSL / SAE maps
    (the parameter-free baselines, `baselines.py`)."""
    def scores(retrieval=None):
      return lambda variables, split: {
          'gallery_labels': self.splits[split].gallery_labels,
          'batches': self.score_batches(variables, split, retrieval)}
    by_retrieval = {} if self.config.model.name == 'regression' else {
        f'scores_{r}': scores(r) for r in RETRIEVALS}
    return {
        'scores': scores(),
        **by_retrieval,
        'features': lambda variables, split: {
            'data': self.splits[split], 'semantic_maps': self.semantic_maps,
            'semantic_settings': self.semantic_settings},
    }

  def semantic_maps(self, kind: str):
    """ESZSL / SAE maps, fitted once on the training split."""
    return self._fitted_semantic_baseline(kind)[0]

  def semantic_settings(self, kind: str) -> dict[str, float]:
    """The hyper-parameters of `semantic_maps(kind)`."""
    return self._fitted_semantic_baseline(kind)[1]

  @functools.cache
  def _fitted_semantic_baseline(self, kind: str):
    """(maps, settings): the config's, or with eval.tune_baselines the
    candidate with the best validation mAP@all (ties: the first)."""
    train = self.splits['train']
    classes = set(train.sketch_labels.tolist()) | set(train.photo_labels.tolist())
    semantic = baselines.load_semantics(self.config.data, classes)
    candidates = baselines.candidate_settings(kind, self.config.eval)
    if len(candidates) > 1 and 'val' not in self.splits:
      raise ValueError('config.eval.tune_baselines needs a val split to choose on; '
                       'this data has none. Set it to False.')
    best = None
    for settings in candidates:
      maps = baselines.fit_semantic_baseline(kind, train, semantic, settings)
      if len(candidates) == 1:
        return maps, settings
      score = baselines.baseline_metrics(kind, self.splits['val'], lambda _: maps,
                                         (1,))['mAP@all']
      if best is None or score > best[0]:
        best = (score, maps, settings)
    logging.info('%s hyper-parameters chosen on val (mAP@all %.4f): %s', kind, best[0],
                 best[2])
    return best[1], best[2]

  def write_outputs(self, variables: dict, workdir: str) -> None:
    """`retrieval_unseen.png`: the first test sketch (by file name) of each
    of config.eval.picture_classes with its top photos (the paper's Fig. 3)."""
    data: EvalData = self.splits['test']
    classes = [c for c in self.config.eval.picture_classes if c in set(data.query_labels)]
    if not classes or data.query_images is None or jax.process_index() != 0:
      return
    picked = [min(np.flatnonzero(data.query_labels == c),
                  key=lambda i: data.query_images.ids[i]) for c in classes]
    scores = np.concatenate([s for s, _ in self.score_batches(variables, 'test')])
    top = np.argsort(-scores[picked], axis=1, kind='stable')[:, :self.config.eval.picture_top_k]
    size = 160
    queries = next(data.query_images.reader(np.sort(picked), size, len(picked)))
    queries = queries[np.argsort(np.argsort(picked))]  # Back to the order of `classes`.
    order = np.unique(top)
    photos = next(data.gallery_images.reader(order, size, len(order)))
    by_index = dict(zip(order.tolist(), photos))
    ranked = [[by_index[i] for i in row] for row in top.tolist()]
    correct = data.gallery_labels[top] == np.array(classes)[:, None]
    title = (f'{self.config.model.name}: unseen-class sketch, then its top '
             f'{top.shape[1]} photos (red outline: wrong class)')
    path = os.path.join(workdir, 'retrieval_unseen.png')
    pictures.category_results_sheet(queries, classes, ranked, correct, title).save(path)
    logging.info('Wrote %s', path)


def _unit_norm(split: TrainData | EvalData) -> TrainData | EvalData:
  """The split with every feature scaled to norm sqrt(D): unit length, and
  entries of the order of 1 for the models' squared errors."""
  fields = (('sketches', 'photos') if isinstance(split, TrainData)
            else ('queries', 'gallery'))
  return dataclasses.replace(split, **{
      f: ops.l2_normalize(getattr(split, f)) * np.sqrt(getattr(split, f).shape[1])
      for f in fields})


def _model_variables(variables: dict) -> dict:
  """The generator's flax variables from the state's (params['model'] + model_state)."""
  return {'params': variables['params']['model'],
          **{k: v for k, v in variables.items() if k != 'params'}}
