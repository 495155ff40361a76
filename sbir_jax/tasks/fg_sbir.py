"""Fine-grained SBIR with DSSA: triplet batches, HOLEF-family loss, 10-view acc@K.

The evaluator ranks with the energy the model was trained with (Euclidean,
weighted, Mahalanobis or HOLEF), averaged over the views: the distance of a
sketch-photo pair is the mean over views v of D(sketch view v, photo view v).
"""
import functools
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sbir_jax import input_pipeline
from sbir_jax import losses
from sbir_jax import sharding
from sbir_jax.evaluators import accuracy_at_k
from sbir_jax.models import dssa


def build_model(config: ml_collections.ConfigDict) -> dssa.DSSA:
  m = config.model
  if m.name != 'dssa':
    raise ValueError(f'config.model.name={m.name!r}; the fg_sbir task knows "dssa".')
  return dssa.DSSA(
      attention=m.attention, attention_shortcut=m.attention_shortcut,
      coarse_fine_fusion=m.coarse_fine_fusion, fc6_dim=m.fc6_dim,
      embed_dim=m.embed_dim, dropout_rate=m.dropout_rate,
      energy=config.loss.energy, width_multiplier=m.width_multiplier)


class FgSbirTask:
  """Everything the trainer needs that is specific to FG-SBIR."""
  selection_metric = 'val_acc@1'  # Checkpoint selection (ties: the latest).

  def __init__(self, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
    self.config = config
    self.mesh = mesh
    self.model = build_model(config)
    self._views = {}  # split -> (sketch views, photo views), built once.

  @functools.cached_property
  def splits(self) -> dict[str, input_pipeline.PairSplit]:
    """Loaded on first use, so model-only uses (benchmarks) need no data."""
    return input_pipeline.load_splits(self.config.data)

  # --- model and loss ------------------------------------------------------
  def init_params(self, rng: jax.Array) -> Any:
    size = self.config.data.crop_size
    return self.model.init(rng, jnp.zeros((1, size, size, 1)))['params']

  def _normalize(self, images):
    return input_pipeline.normalize(images, self.config.pixel_mean,
                                    self.config.input_scale)

  def loss_fn(self, params, batch: dict, rng: jax.Array):
    """Triplet loss with the configured energy (+ the HOLEF regulariser).

    Under jit over the mesh the batch is global, so with negatives='batch'
    each anchor meets the photos of every device's shard.
    """
    x = jnp.concatenate([batch['sketch'], batch['positive'], batch['negative']])
    emb = self.model.apply({'params': params}, self._normalize(x), True,
                           method=dssa.DSSA.embed, rngs={'dropout': rng})
    anchor, positive, negative = jnp.split(emb, 3)
    apply = functools.partial(self.model.apply, {'params': params})
    pos_e = apply(anchor, positive, method=dssa.DSSA.paired_energy)
    neg_e = apply(anchor, negative, method=dssa.DSSA.paired_energy)
    margin = self.config.loss.margin
    if self.config.loss.negatives == 'sampled':  # The paper's triplets.
      hinge = losses.triplet_hinge(pos_e, neg_e, margin)
    else:  # 'batch': every photo of the batch that is not the anchor's match.
      photos = jnp.concatenate([positive, negative])
      photo_ids = jnp.concatenate([batch['positive_id'], batch['negative_id']])
      energy = apply(anchor, photos, method=dssa.DSSA.pairwise_energy)
      valid = ((photo_ids[None, :] != batch['positive_id'][:, None])
               & (photo_ids[None, :] != batch['sketch_id'][:, None]))
      hinge = losses.batch_negatives_hinge(energy, pos_e, valid, margin)
    reg = self.config.loss.holef_lambda * apply(method=dssa.DSSA.energy_regulariser)
    metrics = {'hinge': hinge, 'energy_reg': reg,
               'triplet_order_acc': jnp.mean(pos_e < neg_e)}
    return hinge + reg, metrics

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
  def _embed_fn(self):
    def embed(params, images):
      return self.model.apply({'params': params}, self._normalize(images),
                              method=dssa.DSSA.embed)
    return jax.jit(embed, out_shardings=sharding.replicated(self.mesh))

  @functools.cached_property
  def _view_energy_fn(self):
    def energy(params, sketch_VxQxD, photo_VxGxD):
      per_view = jax.vmap(lambda s, p: self.model.apply(
          {'params': params}, s, p, method=dssa.DSSA.pairwise_energy))(
              sketch_VxQxD, photo_VxGxD)
      return per_view.mean(axis=0)
    return jax.jit(energy)

  def embed_images(self, params, images: np.ndarray) -> np.ndarray:
    """(N, c, c, 1) uint8 -> (N, D) float, batched, padded, sharded on `data`."""
    batch = self.config.eval.batch_size
    sharding.check_batch_size(batch, 'config.eval.batch_size')
    n = len(images)
    padded = np.concatenate(
        [images, np.zeros((-n % batch,) + images.shape[1:], images.dtype)])
    rows = sharding.process_rows(batch)
    out = []
    for start in range(0, len(padded), batch):
      local = padded[start:start + batch][rows]
      out.append(np.asarray(self._embed_fn(params, sharding.to_global(local, self.mesh))))
    return np.concatenate(out)[:n]

  def split_views(self, split: str):
    if split not in self._views:
      data = self.splits[split]
      size, views = self.config.data.crop_size, self.config.eval.num_views
      self._views[split] = (input_pipeline.ten_views(data.sketches, size, views),
                            input_pipeline.ten_views(data.photos, size, views))
    return self._views[split]

  def energy_matrix(self, params, split: str) -> np.ndarray:
    """(sketches, photos) energy, averaged over the matched views."""
    sketch_views, photo_views = self.split_views(split)

    def embed_views(views_NxV):
      n, v = views_NxV.shape[:2]
      flat = self.embed_images(params, views_NxV.reshape((n * v,) + views_NxV.shape[2:]))
      return flat.reshape(n, v, -1).transpose(1, 0, 2)

    return np.asarray(self._view_energy_fn(
        params, embed_views(sketch_views), embed_views(photo_views)))

  def evaluate(self, params, split: str) -> dict[str, float]:
    return accuracy_at_k.accuracy_at_k(self.energy_matrix(params, split),
                                       self.config.eval.ks)
