"""Zero-shot SBIR (Yelamarthi et al., ECCV 2018): CVAE, CAAE, regression on fixed features.

Data: image sets (Sketchy via its TFDS builder, or QuickDraw + TU-Berlin)
-> fixed features, extracted once and cached (`sbir_jax/features.py`) ->
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

This task brings its own state and train step (the trainer's hooks
`create_state` / `train_step`): the CVAE has BatchNorm statistics and the
CAAE a discriminator with its own optimiser. `state.params` holds every
variable collection: {'model': {'params', ['batch_stats']}, 'disc': {...}}.
"""
import dataclasses
import functools
import os
from typing import Any, Iterator

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from sbir_jax import features
from sbir_jax import image_sets
from sbir_jax import sharding
from sbir_jax.datasets import quickdraw
from sbir_jax.datasets import sketchy
from sbir_jax.datasets import tu_berlin
from sbir_jax.evaluators import precision_map
from sbir_jax.models import zs_baselines
from sbir_jax.models import zs_caae
from sbir_jax.models import zs_cvae

RETRIEVALS = ('average', 'kmeans')


@flax.struct.dataclass
class ZsTrainState:
  step: jax.Array
  params: Any  # {'model': variables, 'disc': variables ({} without a discriminator)}.
  opt_state: Any  # {'model': ..., 'disc': ...}


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
def load_sketchy(data: ml_collections.ConfigDict, store_for) -> dict:
  """train / test of the Sketchy zero-shot split (seen = every class not unseen)."""
  builder = sketchy.build(data.manual_dir, data.tfds_data_dir)
  sketch = sketchy.image_set(builder, 'sketch')
  photo = sketchy.image_set(builder, 'photo')
  unseen = sketchy.read_unseen_classes(data.split_file)
  seen, unseen = sketchy.zero_shot_split(sketch.labels, unseen, data.manual_dir)
  if data.gallery == 'extended':
    if 'extended' not in builder.info.splits:
      raise sketchy.SketchyError(
          f'config.data.gallery="extended" but {data.manual_dir} has no '
          'extended/ folder (Sketchy-Extended photos). Add it, or use the '
          'Sketchy photos: --config.data.gallery=sketchy (variant sketchy_gallery).')
    gallery_set = sketchy.image_set(builder, 'extended')
  elif data.gallery == 'sketchy':
    gallery_set = photo
  else:
    raise ValueError(f'config.data.gallery={data.gallery!r}; use extended or sketchy.')
  sketchy.check_gallery(gallery_set.labels, unseen,
                        f'{gallery_set.name} of {data.manual_dir}')
  store = store_for(data.manual_dir)

  train_mask = _capped(_in(sketch.labels, seen), sketch.labels, sketch.ids,
                       data.max_train_sketches_per_class)
  train_sketch = sketch.select(train_mask)
  # Only the photos the training sketches were drawn from are ever used.
  photo_mask = np.isin(photo.ids, train_sketch.photo_ids)
  train_photo = photo.select(photo_mask)
  position = {k: i for i, k in enumerate(train_photo.ids.tolist())}
  photo_of_sketch = np.array([position[p] for p in train_sketch.photo_ids.tolist()])
  query = sketch.select(_capped(_in(sketch.labels, unseen), sketch.labels,
                                sketch.ids, data.max_queries_per_class))
  gallery = gallery_set.select(_in(gallery_set.labels, unseen))
  return {
      'train': TrainData(store.get(train_sketch), train_sketch.labels,
                         store.get(train_photo), train_photo.labels, photo_of_sketch),
      'test': EvalData(store.get(query), query.labels,
                       store.get(gallery), gallery.labels),
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
def _l2n(x, axis=-1):
  return x / (jnp.linalg.norm(x, axis=axis, keepdims=True) + 1e-12)


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


def fit_semantic_baseline(kind: str, train: TrainData, semantic: dict,
                          ecfg: ml_collections.ConfigDict):
  """(sketch map, photo map) into word-vector space, fitted on seen classes."""
  classes = sorted(set(train.sketch_labels.tolist()) | set(train.photo_labels.tolist()))
  s_CxA = np.stack([semantic[c] for c in classes])
  index = {c: i for i, c in enumerate(classes)}

  def fit(x, labels):
    x = x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)
    y = np.array([index[c] for c in labels.tolist()])
    if kind == 'eszsl':
      return zs_baselines.eszsl_projection(x, y, s_CxA, ecfg.eszsl_gamma, ecfg.eszsl_lambda)
    return zs_baselines.sae_projection(x, y, s_CxA, ecfg.sae_lambda)
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


# --- The task ----------------------------------------------------------------------
class ZsSbirTask:
  """Everything the trainer needs that is specific to zero-shot SBIR."""

  def __init__(self, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
    self.config = config
    self.mesh = mesh
    m = config.model
    if config.eval.retrieval not in RETRIEVALS:
      raise ValueError(f'config.eval.retrieval={config.eval.retrieval!r}; choose '
                       f'one of {RETRIEVALS}.')
    self.selection_metric = f'val_{config.eval.selection}'
    d = config.features.dim
    common = dict(feature_dim=d, encoder_dims=tuple(m.encoder_dims),
                  latent_dim=m.latent_dim, decoder_dims=tuple(m.decoder_dims),
                  regulariser_dims=tuple(m.regulariser_dims),
                  dropout_rate=m.dropout_rate)
    if m.name == 'cvae':
      self.model = zs_cvae.CVAE(**common)
    elif m.name == 'caae':
      self.model = zs_caae.CAAE(**common)
      self.disc = zs_caae.Discriminator(tuple(m.disc_dims))
      zs_caae.generator_adversarial_loss(jnp.zeros(1), m.adversarial_loss)  # Validates.
    elif m.name == 'regression':
      self.model = zs_baselines.Regression(d, tuple(m.regression_dims))
    else:
      raise ValueError(f'config.model.name={m.name!r}; the zs_sbir task knows '
                       'cvae, caae, regression.')
    opt = config.optimizer
    self.tx = optax.adam(opt.learning_rate, b1=opt.b1, b2=opt.b2)
    self.disc_tx = optax.adam(opt.disc_learning_rate, b1=opt.b1, b2=opt.b2)
    self.feature_stores: list[features.FeatureStore] = []
    self._baseline_cache: dict[str, dict] = {}

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
      return load_sketchy(data, self._store_for)
    if data.source == 'doodle':
      return load_doodle(data, self._store_for)
    raise ValueError(f'config.data.source={data.source!r}; use sketchy or doodle.')

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

  # --- state and train step --------------------------------------------------------
  def _model_inputs(self, n: int = 1):
    zeros = jnp.zeros((n, self.config.features.dim))
    if self.config.model.name == 'regression':
      return (zeros,)
    return (zeros, zeros, False)

  def create_state(self, rng: jax.Array) -> ZsTrainState:
    r_model, r_noise, r_disc = jax.random.split(rng, 3)
    variables = dict(self.model.init({'params': r_model, 'noise': r_noise},
                                     *self._model_inputs()))
    params = {'model': variables, 'disc': {}}
    opt_state = {'model': self.tx.init(variables['params']), 'disc': {}}
    if self.config.model.name == 'caae':
      disc = dict(self.disc.init(r_disc, jnp.zeros((1, self.config.model.latent_dim))))
      params['disc'] = disc
      opt_state['disc'] = self.disc_tx.init(disc['params'])
    return ZsTrainState(step=jnp.zeros((), jnp.int32), params=params,
                        opt_state=opt_state)

  def init_params(self, rng: jax.Array) -> Any:
    return self.create_state(rng).params

  def train_step(self, state: ZsTrainState, batch: dict, rng: jax.Array):
    """One update of the model (and, for CAAE, then of the discriminator)."""
    name, lcfg = self.config.model.name, self.config.loss
    r_noise, r_dropout, r_prior = jax.random.split(rng, 3)
    img, sketch = batch['photo'], batch['sketch']
    model_vars = state.params['model']
    extra = {k: v for k, v in model_vars.items() if k != 'params'}

    def loss_fn(p):
      if name == 'regression':
        pred = self.model.apply({'params': p}, sketch)
        loss = jnp.mean(zs_cvae.mse(pred, img))
        return loss, ({'recon': loss}, extra, None)
      out, updates = self.model.apply(
          {'params': p, **extra}, img, sketch, True, mutable=['batch_stats'],
          rngs={'noise': r_noise, 'dropout': r_dropout})
      if name == 'cvae':
        loss, parts = zs_cvae.cvae_loss(out, img, sketch, lcfg.sketch_recon_weight,
                                        lcfg.kl_weight)
      else:  # CAAE: the adversarial term replaces the KL.
        fake = self.disc.apply(state.params['disc'], out['z'])
        loss, parts = zs_caae.caae_loss(out, img, sketch, fake,
                                        lcfg.sketch_recon_weight,
                                        lcfg.adversarial_weight,
                                        self.config.model.adversarial_loss)
      return loss, (parts, dict(updates), out['z'])

    (loss, (metrics, new_extra, z)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(model_vars['params'])
    updates, model_opt = self.tx.update(grads, state.opt_state['model'],
                                        model_vars['params'])
    new_params = {'model': {'params': optax.apply_updates(model_vars['params'], updates),
                            **new_extra},
                  'disc': state.params['disc']}
    new_opt = {'model': model_opt, 'disc': state.opt_state['disc']}
    metrics = dict(metrics, loss=loss, grad_norm=optax.global_norm(grads))

    if name == 'caae':
      z_fake = jax.lax.stop_gradient(z)
      z_real = jax.random.normal(r_prior, z_fake.shape)
      disc_vars = state.params['disc']

      def disc_loss_fn(p):
        real = self.disc.apply({'params': p}, z_real)
        fake = self.disc.apply({'params': p}, z_fake)
        return zs_caae.discriminator_loss(real, fake)

      (d_loss, d_acc), d_grads = jax.value_and_grad(disc_loss_fn, has_aux=True)(
          disc_vars['params'])
      d_updates, disc_opt = self.disc_tx.update(d_grads, state.opt_state['disc'],
                                                disc_vars['params'])
      new_params['disc'] = {'params': optax.apply_updates(disc_vars['params'], d_updates)}
      new_opt['disc'] = disc_opt
      metrics.update(disc_loss=d_loss, disc_accuracy=d_acc)
    return (ZsTrainState(step=state.step + 1, params=new_params, opt_state=new_opt),
            metrics)

  # --- evaluation ------------------------------------------------------------------
  @functools.cached_property
  def _score_fn(self):
    """(params, queries (B, D) sharded, gallery (G, D) unit rows, rng) -> (B, G) cosine."""
    ecfg, name = self.config.eval, self.config.model.name

    def score(params, queries_BxD, gallery_GxD, rng):
      model_vars = params['model']
      if name == 'regression':
        pred_BxD = self.model.apply(model_vars, queries_BxD)
        return _l2n(pred_BxD) @ gallery_GxD.T
      b, s = queries_BxD.shape[0], ecfg.num_samples
      z_BxSxZ = jax.random.normal(rng, (b, s, self.config.model.latent_dim))
      sketch_BxSxD = jnp.broadcast_to(queries_BxD[:, None], (b, s, queries_BxD.shape[1]))
      decoded_BxSxD = self.model.apply(model_vars, z_BxSxZ, sketch_BxSxD,
                                       method=self.model.decode)
      if ecfg.retrieval == 'average':
        return _l2n(decoded_BxSxD.mean(axis=1)) @ gallery_GxD.T
      centres_BxKxD = jax.vmap(lambda x: kmeans(x, ecfg.num_clusters,
                                                ecfg.kmeans_iterations))(decoded_BxSxD)
      # Smallest cosine distance to a centre = largest cosine similarity.
      return jnp.max(_l2n(centres_BxKxD) @ gallery_GxD.T, axis=1)

    rep = sharding.replicated(self.mesh)
    return jax.jit(score, in_shardings=(rep, sharding.batch_sharding(self.mesh), rep, rep),
                   out_shardings=rep)

  def _chunks(self, queries: np.ndarray):
    """(start, n, host-local padded rows) per eval batch of queries."""
    batch = self.config.eval.batch_size
    sharding.check_batch_size(batch, 'config.eval.batch_size')
    rows = sharding.process_rows(batch)
    for start in range(0, len(queries), batch):
      chunk = queries[start:start + batch]
      n = len(chunk)
      padded = np.concatenate([chunk, np.zeros((batch - n,) + chunk.shape[1:], chunk.dtype)])
      yield start, n, padded[rows]

  def evaluate(self, params, split: str) -> dict[str, float]:
    data: EvalData = self.splits[split]
    ks = tuple(self.config.eval.ks)
    gallery = jax.device_put(
        np.asarray(data.gallery / (np.linalg.norm(data.gallery, axis=1, keepdims=True)
                                   + 1e-12), np.float32),
        sharding.replicated(self.mesh))
    acc = precision_map.MetricAccumulator(data.gallery_labels, ks)
    base_rng = jax.random.key(self.config.seed + 1)  # Same samples at every eval.
    for i, (start, n, local) in enumerate(self._chunks(data.queries)):
      scores = self._score_fn(params, sharding.to_global(local, self.mesh), gallery,
                              jax.random.fold_in(base_rng, i))
      acc.add(np.asarray(scores)[:n], data.query_labels[start:start + n])
    results = acc.result()
    if split not in self._baseline_cache:
      self._baseline_cache[split] = self._baselines(data, ks)
    results.update(self._baseline_cache[split])
    return results

  @functools.cache
  def _semantic_maps(self, kind: str):
    """ESZSL / SAE maps, fitted once on the training split."""
    train = self.splits['train']
    classes = set(train.sketch_labels.tolist()) | set(train.photo_labels.tolist())
    semantic = load_semantics(self.config.data, classes)
    return fit_semantic_baseline(kind, train, semantic, self.config.eval)

  def _baselines(self, data: EvalData, ks) -> dict[str, float]:
    """The parameter-free baselines on `data` (computed once per split)."""
    out = {}
    unit = lambda x: x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)
    for kind in self.config.eval.baselines:
      if kind == 'untrained':
        q, g = unit(data.queries), unit(data.gallery)
      elif kind in ('eszsl', 'sae'):
        sketch_map, photo_map = self._semantic_maps(kind)
        q, g = unit(unit(data.queries) @ sketch_map), unit(unit(data.gallery) @ photo_map)
      else:
        raise ValueError(f'Unknown baseline {kind!r} in config.eval.baselines; '
                         'known: untrained, eszsl, sae.')
      acc = precision_map.MetricAccumulator(data.gallery_labels, ks)
      for start in range(0, len(q), 1024):
        acc.add(q[start:start + 1024] @ g.T, data.query_labels[start:start + 1024])
      out.update({f'{kind}_{k}': v for k, v in acc.result().items()})
    return out
