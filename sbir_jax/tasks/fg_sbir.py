"""Fine-grained SBIR with DSSA: triplet batches, HOLEF-family loss, 10-view acc@K.

config.model.name picks the model: 'dssa' (one branch for sketches and photo
edge maps) or an RGB-photo design of `models/rgb_dssa.py` ('rgb_two_towers',
'rgb_shared_stem'), which embeds each domain through its own layers and keeps
its BatchNorm statistics in params['batch_stats'] (never trained by gradient).

The evaluator ranks with the energy the model was trained with (Euclidean,
weighted, Mahalanobis or HOLEF), averaged over the views: the distance of a
sketch-photo pair is the mean over views v of D(sketch view v, photo view v).
"""
import functools
from typing import Any, Iterator, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import traverse_util

from sbir_jax import input_pipeline
from sbir_jax import losses
from sbir_jax import sharding
from sbir_jax.evaluators import accuracy_at_k
from sbir_jax.models import convert_efficientnet
from sbir_jax.models import dssa
from sbir_jax.models import efficientnet_lite
from sbir_jax.models import rgb_dssa

RGB_MODELS = ('rgb_two_towers', 'rgb_shared_stem')


def _dssa_fields(config: ml_collections.ConfigDict) -> dict[str, Any]:
  m = config.model
  return dict(
      attention=m.attention, attention_shortcut=m.attention_shortcut,
      coarse_fine_fusion=m.coarse_fine_fusion, fc6_dim=m.fc6_dim,
      embed_dim=m.embed_dim, dropout_rate=m.dropout_rate,
      energy=config.loss.energy, width_multiplier=m.width_multiplier)


def build_model(config: ml_collections.ConfigDict) -> nn.Module:
  m = config.model
  if m.name == 'dssa':
    return dssa.DSSA(**_dssa_fields(config))
  if m.name not in RGB_MODELS:
    raise ValueError(f'config.model.name={m.name!r}; the fg_sbir task knows '
                     f'"dssa", {", ".join(map(repr, RGB_MODELS))}.')
  if 'frozen_batch_norm' not in m:
    raise ValueError(f'config.model.name={m.name!r} lacks its options (frozen_batch_norm, '
                     f'...): select it with the config variant, e.g. '
                     f'--config=configs/shoes_rgb.py:{m.name}.')
  rgb = dict(frozen_batch_norm=m.frozen_batch_norm, drop_connect_rate=m.drop_connect_rate)
  if m.name == 'rgb_two_towers':
    return rgb_dssa.TwoTowers(**_dssa_fields(config), **rgb)
  return rgb_dssa.SharedStem(embed_dim=m.embed_dim, energy=config.loss.energy, **rgb)


def _check_rgb_config(config: ml_collections.ConfigDict) -> None:
  """Refuses settings an RGB model cannot train with, naming the fix."""
  photo_input = config.data.get('photo_input', 'edge')
  if photo_input != 'rgb':
    raise ValueError(f'config.model.name={config.model.name!r} embeds RGB photos but '
                     f'config.data.photo_input={photo_input!r}; set it to "rgb".')
  # BatchNorm statistics and frozen layers get no gradient, but weight decay
  # would still shrink them unless the optimizer leaves them out.
  needed = ['batch_stats'] + rgb_dssa.frozen_prefixes(config.model.frozen_backbone_layers)
  frozen = tuple(config.get('frozen', ()))
  covered = lambda name: any(name == f or name.startswith(f + '/') for f in frozen)
  missing = [name for name in needed if not covered(name)]
  if config.optimizer.weight_decay and missing:
    raise ValueError(f'config.optimizer.weight_decay would shrink {missing}, which '
                     f'must not change; set --config.frozen="{tuple(needed)!r}" (or '
                     'config.optimizer.weight_decay=0).')


class FgSbirTask:
  """Everything the trainer needs that is specific to FG-SBIR."""
  selection_metric = 'val_acc@1'  # Checkpoint selection (ties: the latest).

  def __init__(self, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
    self.config = config
    self.mesh = mesh
    self.model = build_model(config)
    self.rgb = config.model.name in RGB_MODELS
    if self.rgb:
      _check_rgb_config(config)
      if not config.model.frozen_batch_norm:
        self.train_step = self._train_step_with_batch_stats  # Used by the trainer.
    self._views = {}  # split -> (sketch views, photo views), built once.

  @functools.cached_property
  def splits(self) -> dict[str, input_pipeline.PairSplit]:
    """Loaded on first use, so model-only uses (benchmarks) need no data."""
    return input_pipeline.load_splits(self.config.data)

  # --- model and loss ------------------------------------------------------
  def init_params(self, rng: jax.Array) -> Any:
    size = self.config.data.crop_size
    sketch = jnp.zeros((1, size, size, 1))
    if not self.rgb:
      return self.model.init(rng, sketch)['params']
    variables = self.model.init(rng, sketch, jnp.zeros((1, size, size, 3)))
    flat = traverse_util.flatten_dict(variables)
    flat.update(traverse_util.flatten_dict(
        rgb_dssa.imagenet_variables(variables, self._imagenet_weights)))
    variables = traverse_util.unflatten_dict(flat)
    return {**variables['params'], 'batch_stats': variables['batch_stats']}

  @functools.cached_property
  def _imagenet_weights(self) -> dict:
    """Converted EfficientNet-Lite0 variables (host numpy), read once."""
    return convert_efficientnet.load_pretrained(self.config.model.pretrained_weights or None)

  def _variables(self, params) -> dict:
    """Flax variables from the task's params (see the module docstring)."""
    if not self.rgb:
      return {'params': params}
    params = dict(params)
    batch_stats = params.pop('batch_stats')
    return {'params': params, 'batch_stats': batch_stats}

  def _normalize(self, images):
    return input_pipeline.normalize(images, self.config.pixel_mean,
                                    self.config.input_scale)

  def _prepare(self, images, domain: str):
    """Model input: RGB photos get EfficientNet's own scaling (at the crop
    size); sketches and edge maps the configured mean and scale."""
    if self.rgb and domain == 'photo':
      return efficientnet_lite.preprocess(images, size=None)
    return self._normalize(images)

  def _embed_triplets(self, params, batch: dict, rng: jax.Array):
    """(anchor, positive, negative) embeddings in training mode, and the
    BatchNorm statistics of this batch (None while they stay frozen)."""
    if not self.rgb:  # One branch: all three in one batch.
      x = jnp.concatenate([batch['sketch'], batch['positive'], batch['negative']])
      emb = self.model.apply({'params': params}, self._normalize(x), True,
                             method=dssa.DSSA.embed, rngs={'dropout': rng})
      return (*jnp.split(emb, 3), None)
    m = self.config.model
    variables = self._variables(params)
    variables = {
        'params': rgb_dssa.freeze_backbone_layers(variables['params'],
                                                  m.frozen_backbone_layers),
        'batch_stats': jax.lax.stop_gradient(variables['batch_stats'])}
    photos = jnp.concatenate([batch['positive'], batch['negative']])
    mutable = False if m.frozen_batch_norm else ['batch_stats']
    out = self.model.apply(variables, self._prepare(batch['sketch'], 'sketch'),
                           self._prepare(photos, 'photo'), True, method='embed_pair',
                           rngs={'dropout': rng}, mutable=mutable)
    (anchor, photo_emb), updates = out if mutable else (out, {})
    return (anchor, *jnp.split(photo_emb, 2), updates.get('batch_stats'))

  def loss_fn(self, params, batch: dict, rng: jax.Array):
    """Triplet loss with the configured energy (+ the HOLEF regulariser).

    Under jit over the mesh the batch is global, so with negatives='batch'
    each anchor meets the photos of every device's shard.
    """
    loss, (metrics, _) = self._loss_and_batch_stats(params, batch, rng)
    return loss, metrics

  def _train_step_with_batch_stats(self, state, batch: dict, rng: jax.Array):
    """The trainer's step, then this batch's BatchNorm running averages
    replace the old ones (only with config.model.frozen_batch_norm=False)."""
    (loss, (metrics, batch_stats)), grads = jax.value_and_grad(
        self._loss_and_batch_stats, has_aux=True)(state.params, batch, rng)
    state = state.apply_gradients(grads=grads)
    state = state.replace(params={**state.params, 'batch_stats': batch_stats})
    return state, dict(metrics, loss=loss, grad_norm=optax.global_norm(grads))

  def _loss_and_batch_stats(self, params, batch: dict, rng: jax.Array):
    anchor, positive, negative, batch_stats = self._embed_triplets(params, batch, rng)
    apply = functools.partial(self.model.apply, self._variables(params))
    pos_e = apply(anchor, positive, method='paired_energy')
    neg_e = apply(anchor, negative, method='paired_energy')
    margin = self.config.loss.margin
    if self.config.loss.negatives == 'sampled':  # The paper's triplets.
      hinge = losses.triplet_hinge(pos_e, neg_e, margin)
    else:  # 'batch': every photo of the batch that is not the anchor's match.
      photos = jnp.concatenate([positive, negative])
      photo_ids = jnp.concatenate([batch['positive_id'], batch['negative_id']])
      energy = apply(anchor, photos, method='pairwise_energy')
      valid = ((photo_ids[None, :] != batch['positive_id'][:, None])
               & (photo_ids[None, :] != batch['match_id'][:, None]))
      hinge = losses.batch_negatives_hinge(energy, pos_e, valid, margin)
    reg = self.config.loss.holef_lambda * apply(method='energy_regulariser')
    metrics = {'hinge': hinge, 'energy_reg': reg,
               'triplet_order_acc': jnp.mean(pos_e < neg_e)}
    return hinge + reg, (metrics, batch_stats)

  # --- data ------------------------------------------------------------------
  def train_batches(self, start_step: int) -> Iterator[dict]:
    ds = input_pipeline.triplet_dataset(
        self.splits['train'], self.config.data,
        global_batch_size=self.config.batch_size, seed=self.config.seed,
        start_step=start_step, process_index=jax.process_index(),
        process_count=jax.process_count())
    return input_pipeline.iterate(ds)

  # --- evaluation ------------------------------------------------------------
  @functools.cached_property
  def _embed_fns(self) -> dict:
    """domain -> jitted embedding; DSSA's one branch serves both (one compile)."""
    def make(domain):
      method = rgb_dssa.embed_method(domain) if self.rgb else dssa.DSSA.embed
      def embed(params, images):
        return self.model.apply(self._variables(params),
                                self._prepare(images, domain), method=method)
      return jax.jit(embed, out_shardings=sharding.replicated(self.mesh))
    if self.rgb:
      return {domain: make(domain) for domain in rgb_dssa.DOMAINS}
    return dict.fromkeys(rgb_dssa.DOMAINS, make('sketch'))

  @functools.cached_property
  def _view_energy_fn(self):
    def energy(params, sketch_VxQxD, photo_VxGxD):
      per_view = jax.vmap(lambda s, p: self.model.apply(
          self._variables(params), s, p, method='pairwise_energy'))(
              sketch_VxQxD, photo_VxGxD)
      return per_view.mean(axis=0)
    return jax.jit(energy)

  def embed_images(self, params, images: np.ndarray,
                   domain: Optional[str] = None) -> np.ndarray:
    """(N, c, c, C) uint8 -> (N, D) float, batched, padded, sharded on `data`.

    domain: 'sketch' ((N, c, c, 1)) or 'photo' ((N, c, c, 3) RGB for the RGB
    models); DSSA embeds both with its one branch, so there it may be omitted.
    """
    if domain is None and self.rgb:
      raise ValueError(f'{self.config.model.name} embeds each domain with its own '
                       "layers: pass domain='sketch' or domain='photo'.")
    fn = self._embed_fns[rgb_dssa.check_domain(domain or 'sketch')]
    return sharding.map_batches(fn, params, images, self.config.eval.batch_size, self.mesh)

  def split_views(self, split: str):
    """(sketch views (N, V, c, c, 1), photo views (M, V, c, c, C)) of a split."""
    if split not in self._views:
      data = self.splits[split]
      size, views = self.config.data.crop_size, self.config.eval.num_views
      self._views[split] = (input_pipeline.ten_views(data.sketches, size, views),
                            input_pipeline.ten_views(data.photos, size, views))
    return self._views[split]

  def energy_matrix(self, params, split: str) -> np.ndarray:
    """(sketches, photos) energy of every sketch against every photo of the
    split, averaged over the matched views."""
    sketch_views, photo_views = self.split_views(split)

    def embed_views(views_NxV, domain):
      n, v = views_NxV.shape[:2]
      flat = self.embed_images(
          params, views_NxV.reshape((n * v,) + views_NxV.shape[2:]), domain)
      return flat.reshape(n, v, -1).transpose(1, 0, 2)

    return np.asarray(self._view_energy_fn(
        params, embed_views(sketch_views, 'sketch'), embed_views(photo_views, 'photo')))

  def evaluate(self, params, split: str) -> dict[str, float]:
    """acc@K of the split's sketches, the true match of sketch i being photo
    photo_index[i] (QMUL V1: photo i)."""
    return accuracy_at_k.accuracy_at_k(self.energy_matrix(params, split),
                                       self.config.eval.ks,
                                       targets=self.splits[split].photo_index)
