"""Fine-grained SBIR with DSSA: triplet batches, HOLEF-family loss, 10-view acc@K.

config.model.name picks the model: 'dssa' (one branch for sketches and photo
edge maps, on the trunk config.model.trunk names: Sketch-a-Net or an ImageNet
EfficientNet-Lite) or an RGB-photo design of `models/rgb_dssa.py`
('rgb_two_towers', 'rgb_shared_stem'), which embeds each domain through its
own layers. EfficientNet BatchNorm statistics live in the state's
model_state (never trained by gradient; updated by the loss with
config.model.frozen_batch_norm=False).

The evaluator ranks with the energy the model was trained with (Euclidean,
weighted, Mahalanobis or HOLEF), averaged over the views: the distance of a
sketch-photo pair is the mean over views v of D(sketch view v, photo view v).
"""
import functools
from typing import Any, Callable, Iterator, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util

from sbir_jax import losses
from sbir_jax.core import precision
from sbir_jax.core import sharding
from sbir_jax.core import state as state_lib
from sbir_jax.datasets import image_pipeline
from sbir_jax.tasks.fg_sbir import input_pipeline
from sbir_jax.tasks.fg_sbir import retrieval
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


# config.loss.negatives other than the paper's 'sampled': the hinge against
# the batch's other photos ('batch': mean over all of them; 'hardest': each
# anchor's hardest one).
BATCH_HINGES = {'batch': losses.batch_negatives_hinge,
                'hardest': losses.hardest_negative_hinge}
NEGATIVES = ('sampled', *BATCH_HINGES)
# config.loss.negative_classes: 'any' photo that is not the match (instance
# level, the paper's), or only photos of 'other' classes (category level:
# for sources with classes, e.g. the zero-shot trunk of configs/sketchy_seen.py).
NEGATIVE_CLASSES = ('any', 'other')


def build_model(config: ml_collections.ConfigDict) -> nn.Module:
  m = config.model
  if m.name not in ('dssa', *RGB_MODELS):
    raise ValueError(f'config.model.name={m.name!r}; the fg_sbir task knows '
                     f'"dssa", {", ".join(map(repr, RGB_MODELS))}.')
  # dtype: the compute dtype (None = float32); parameters, energies and the
  # embeddings the losses see stay float32.
  efficientnet = dict(frozen_batch_norm=m.frozen_batch_norm,
                      drop_connect_rate=m.drop_connect_rate,
                      dtype=precision.compute_dtype(config))
  # DSSA's trunk: DSSA itself, and the sketch tower of the two-tower model.
  trunk = dict(trunk=dssa.check_trunk(m.trunk), frozen_trunk_layers=m.frozen_trunk_layers)
  if m.name == 'dssa':
    return dssa.DSSA(**_dssa_fields(config), **trunk, **efficientnet)
  if m.name == 'rgb_two_towers':
    if m.trunk not in (dssa.SKETCH_A_NET, 'efficientnet_lite0'):
      raise ValueError(f'config.model.trunk={m.trunk!r} with rgb_two_towers: its photo '
                       'tower is Lite0, so the sketch tower takes sketch_a_net or '
                       'efficientnet_lite0 (the `imagenet` variant).')
    return rgb_dssa.TwoTowers(**_dssa_fields(config), **trunk, **efficientnet)
  if m.trunk != dssa.SKETCH_A_NET:
    raise ValueError(f'config.model.trunk={m.trunk!r}: rgb_shared_stem embeds both '
                     'domains with its one EfficientNet-Lite0 and has no DSSA trunk; '
                     'drop the `imagenet` variant, or use rgb_two_towers.')
  return rgb_dssa.SharedStem(embed_dim=m.embed_dim, energy=config.loss.energy,
                             **efficientnet)


def _check_rgb_config(config: ml_collections.ConfigDict) -> None:
  """Refuses settings an RGB model cannot train with, naming the fix."""
  photo_input = config.data.get('photo_input', 'edge')
  if photo_input != 'rgb':
    raise ValueError(f'config.model.name={config.model.name!r} embeds RGB photos but '
                     f'config.data.photo_input={photo_input!r}: select the model with '
                     f'its variant, e.g. --config=configs/shoes_rgb.py:{config.model.name}.')
  _check_frozen_by_optimizer(config, rgb_dssa.frozen_prefixes(
      config.model.frozen_backbone_layers), 'frozen_backbone_layers')


def _trunk_frozen_prefixes(config: ml_collections.ConfigDict) -> list[str]:
  """'trunk/<name>' of the EfficientNet trunk layers that get no gradient."""
  m = config.model
  if m.trunk == dssa.SKETCH_A_NET:
    return []
  names = efficientnet_lite.layer_names(dssa.EFFICIENTNET_TRUNKS[m.trunk])
  efficientnet_lite.check_frozen_layers(m.frozen_trunk_layers,
                                        dssa.EFFICIENTNET_TRUNKS[m.trunk],
                                        'config.model.frozen_trunk_layers')
  return [f'trunk/{name}' for layer in names[:m.frozen_trunk_layers] for name in layer]


def _check_frozen_by_optimizer(config: ml_collections.ConfigDict, needed: list[str],
                               option: str) -> None:
  """Layers without gradient must not move: weight decay would still shrink
  them unless config.frozen leaves them out of the optimizer."""
  frozen = tuple(config.get('frozen', ()))
  covered = lambda name: any(name == f or name.startswith(f + '/') for f in frozen)
  missing = [name for name in needed if not covered(name)]
  if config.optimizer.weight_decay and missing:
    raise ValueError(f'config.optimizer.weight_decay would shrink {missing}, which '
                     f'config.model.{option} keeps fixed; set '
                     f'--config.frozen="{tuple(needed)!r}" (or config.optimizer.weight_decay=0).')


def negative_mask(photo_ids_M: jax.Array, positive_id_B: jax.Array, match_id_B: jax.Array,
                  photo_classes: Optional[np.ndarray] = None) -> jax.Array:
  """(B, M) bool: which of the batch's photos are negatives of each anchor:
  not its positive, not its true match and, given the split's photo classes
  (category level), not of its match's class."""
  valid = ((photo_ids_M[None, :] != positive_id_B[:, None])
           & (photo_ids_M[None, :] != match_id_B[:, None]))
  if photo_classes is not None:
    classes = jnp.asarray(photo_classes)
    valid &= classes[photo_ids_M][None, :] != classes[match_id_B][:, None]
  return valid


class FgSbirTask:
  """The FG-SBIR task (contract: sbir_jax/core/task.py)."""
  modes = {'retrieve': retrieval.retrieve_mode}

  def __init__(self, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
    self.config = config
    self.mesh = mesh
    self.model = build_model(config)
    self.rgb = config.model.name in RGB_MODELS
    if config.loss.negatives not in NEGATIVES:
      raise ValueError(f'config.loss.negatives={config.loss.negatives!r}; use one of '
                       f'{", ".join(map(repr, NEGATIVES))}.')
    negative_classes = config.loss.get('negative_classes', 'any')
    if negative_classes not in NEGATIVE_CLASSES:
      raise ValueError(f'config.loss.negative_classes={negative_classes!r}; use one '
                       f'of {NEGATIVE_CLASSES}.')
    if negative_classes == 'other' and config.loss.negatives == 'sampled':
      raise ValueError("config.loss.negative_classes='other' picks among the batch's "
                       "photos: set config.loss.negatives to 'batch' or 'hardest'.")
    self._category_level = negative_classes == 'other'
    if self.rgb:
      _check_rgb_config(config)
    _check_frozen_by_optimizer(config, _trunk_frozen_prefixes(config),
                               'frozen_trunk_layers')
    # The ImageNet-initialised submodules (all of one variant), and the
    # domains whose inputs go through EfficientNet layers.
    imagenet_trunk = config.model.trunk in dssa.EFFICIENTNET_TRUNKS
    self._imagenet_modules = ((rgb_dssa.PRETRAINED_MODULES if self.rgb else ())
                              + (('trunk',) if imagenet_trunk else ()))
    self._variant = (dssa.EFFICIENTNET_TRUNKS[config.model.trunk] if imagenet_trunk
                     else 'lite0')
    # (DSSA's one trunk embeds both domains; the RGB models' photo layers are
    # always EfficientNet.)
    self._efficientnet_domains = (({'sketch'} if imagenet_trunk else set())
                                  | ({'photo'} if self.rgb or imagenet_trunk else set()))
    self._views = {}  # split -> (sketch views, photo views), built once.

  @functools.cached_property
  def splits(self) -> dict[str, input_pipeline.PairSplit]:
    """Loaded on first use, so model-only uses (benchmarks) need no data."""
    return input_pipeline.load_splits(self.config.data)

  def load_data(self) -> dict[str, str]:
    return {f'{name} sketches/photos': f'{len(s)}/{s.num_photos}'
            for name, s in self.splits.items()}

  def batch_spec(self) -> dict[str, jax.ShapeDtypeStruct]:
    rows = self.config.batch_size // jax.process_count()
    size = self.config.data.crop_size
    photo_channels = 3 if self.config.data.get('photo_input', 'edge') == 'rgb' else 1
    image = lambda c: jax.ShapeDtypeStruct((rows, size, size, c), np.uint8)
    index = jax.ShapeDtypeStruct((rows,), np.int32)
    # *_id: photo indices within the split (match_id: the sketch's true match).
    return {'sketch': image(1), 'positive': image(photo_channels),
            'negative': image(photo_channels), 'sketch_id': index, 'match_id': index,
            'positive_id': index, 'negative_id': index}

  # --- model and loss ------------------------------------------------------
  def init_variables(self, rng: jax.Array) -> tuple[Any, Any]:
    size = self.config.data.crop_size
    inputs = [jnp.zeros((1, size, size, 1))]
    if self.rgb:
      inputs.append(jnp.zeros((1, size, size, 3)))
    variables = self.model.init(rng, *inputs)
    if not self._imagenet_modules:
      return variables['params'], {}
    flat = traverse_util.flatten_dict(variables)
    flat.update(traverse_util.flatten_dict(convert_efficientnet.graft(
        variables, self._imagenet_weights, self._imagenet_modules)))
    variables = traverse_util.unflatten_dict(flat)
    return variables['params'], {'batch_stats': variables['batch_stats']}

  @functools.cached_property
  def _imagenet_weights(self) -> dict:
    """Converted EfficientNet-Lite variables (host numpy), read once."""
    return convert_efficientnet.load_pretrained(
        self.config.model.pretrained_weights or None, self._variant)

  def _normalize(self, images):
    return image_pipeline.normalize(images, self.config.pixel_mean,
                                    self.config.input_scale)

  def prepare_inputs(self, images, domain: str):
    """Model input: EfficientNet layers get the (x - 127) / 128 scaling their
    ImageNet weights were trained with (RGB photos, and every input of an
    EfficientNet-trunk DSSA); Sketch-a-Net inputs the configured mean and
    scale."""
    if domain in self._efficientnet_domains:
      return efficientnet_lite.preprocess(images, size=None)
    return self._normalize(images)

  def _embed_triplets(self, variables: dict, batch: dict, rng: jax.Array):
    """(anchor, positive, negative) embeddings in training mode, and the
    model_state after this batch (BatchNorm running averages, if updated)."""
    m = self.config.model
    # BatchNorm on batch statistics updates its running averages.
    mutable = ['batch_stats'] if self._imagenet_modules and not m.frozen_batch_norm else False
    photos = jnp.concatenate([batch['positive'], batch['negative']])
    if self.rgb:
      variables = {
          'params': rgb_dssa.freeze_backbone_layers(variables['params'],
                                                    m.frozen_backbone_layers),
          'batch_stats': variables['batch_stats']}
      out = self.model.apply(variables, self.prepare_inputs(batch['sketch'], 'sketch'),
                             self.prepare_inputs(photos, 'photo'), True, method='embed_pair',
                             rngs={'dropout': rng}, mutable=mutable)
    else:  # One branch: all three in one batch.
      x = jnp.concatenate([batch['sketch'], photos])
      out = self.model.apply(variables, self.prepare_inputs(x, 'sketch'), True, method=dssa.DSSA.embed,
                             rngs={'dropout': rng}, mutable=mutable)
    emb, updates = out if mutable else (out, {})
    if self.rgb:
      anchor, photo_emb = emb
    else:
      anchor, photo_emb = jnp.split(emb, [len(batch['sketch'])])
    new_state = ({'batch_stats': updates.get('batch_stats', variables['batch_stats'])}
                 if self._imagenet_modules else {})
    return (anchor, *jnp.split(photo_emb, 2), new_state)

  def loss_fn(self, params, model_state, batch: dict, rng: jax.Array):
    """Triplet loss with the configured energy (+ the HOLEF regulariser), and
    the model_state after the batch.

    Under jit over the mesh the batch is global, so with negatives='batch'
    each anchor meets the photos of every device's shard.
    """
    variables = state_lib.variables_of(params, model_state)
    anchor, positive, negative, new_state = self._embed_triplets(variables, batch, rng)
    apply = functools.partial(self.model.apply, variables)
    pos_e = apply(anchor, positive, method='paired_energy')
    neg_e = apply(anchor, negative, method='paired_energy')
    margin = self.config.loss.margin
    if self.config.loss.negatives == 'sampled':  # The paper's triplets.
      hinge = losses.triplet_hinge(pos_e, neg_e, margin)
    else:  # Against the batch's photos that are not the anchor's match.
      photos = jnp.concatenate([positive, negative])
      photo_ids = jnp.concatenate([batch['positive_id'], batch['negative_id']])
      energy = apply(anchor, photos, method='pairwise_energy')
      valid = negative_mask(photo_ids, batch['positive_id'], batch['match_id'],
                            self._train_photo_classes if self._category_level else None)
      hinge = BATCH_HINGES[self.config.loss.negatives](energy, pos_e, valid, margin)
    reg = self.config.loss.holef_lambda * apply(method='energy_regulariser')
    metrics = {'hinge': hinge, 'energy_reg': reg,
               'triplet_order_acc': jnp.mean(pos_e < neg_e)}
    return hinge + reg, (metrics, new_state)

  # --- data ------------------------------------------------------------------
  @functools.cached_property
  def _train_photo_classes(self) -> np.ndarray:
    classes = self.splits['train'].photo_classes
    if classes is None:
      raise ValueError(f"config.loss.negative_classes='other' needs photo classes; "
                       f'source {self.config.data.source!r} has none (sketchy_seen has).')
    return classes

  def train_batches(self, start_step: int) -> Iterator[dict]:
    ds = input_pipeline.triplet_dataset(
        self.splits['train'], self.config.data,
        global_batch_size=self.config.batch_size, seed=self.config.seed,
        start_step=start_step, process_index=jax.process_index(),
        process_count=jax.process_count())
    return image_pipeline.iterate(ds)

  # --- evaluation ------------------------------------------------------------
  def embed_function(self, domain: str) -> Callable[[dict, jax.Array], jax.Array]:
    """The jitted (variables, (B, c, c, C) uint8 crops sharded on `data`) ->
    (B, D) embedding of `domain`, output replicated."""
    return self._embed_fns[rgb_dssa.check_domain(domain)]

  @functools.cached_property
  def _embed_fns(self) -> dict:
    """domain -> jitted embedding; DSSA's one branch serves both (one compile)."""
    def make(domain):
      method = rgb_dssa.embed_method(domain) if self.rgb else dssa.DSSA.embed
      def embed(variables, images):
        return self.model.apply(variables, self.prepare_inputs(images, domain), method=method)
      return jax.jit(embed, out_shardings=sharding.replicated(self.mesh))
    if self.rgb:
      return {domain: make(domain) for domain in rgb_dssa.DOMAINS}
    return dict.fromkeys(rgb_dssa.DOMAINS, make('sketch'))

  @functools.cached_property
  def _view_energy_fn(self):
    def energy(variables, sketch_VxQxD, photo_VxGxD):
      per_view = jax.vmap(lambda s, p: self.model.apply(
          variables, s, p, method='pairwise_energy'))(
              sketch_VxQxD, photo_VxGxD)
      return per_view.mean(axis=0)
    return jax.jit(energy)

  def embed_images(self, variables: dict, images: np.ndarray,
                   domain: Optional[str] = None,
                   batch_size: Optional[int] = None) -> np.ndarray:
    """(N, c, c, C) uint8 -> (N, D) float, batched, padded, sharded on `data`.

    domain: 'sketch' ((N, c, c, 1)) or 'photo' ((N, c, c, 3) RGB for the RGB
    models); DSSA embeds both with its one branch, so there it may be omitted.
    batch_size: rows per call (default config.eval.batch_size); the server
    passes small ones so one query does not pay for a padded evaluation batch.
    """
    if domain is None and self.rgb:
      raise ValueError(f'{self.config.model.name} embeds each domain with its own '
                       "layers: pass domain='sketch' or domain='photo'.")
    fn = self._embed_fns[rgb_dssa.check_domain(domain or 'sketch')]
    return sharding.map_batches(functools.partial(fn, variables), images,
                                batch_size or self.config.eval.batch_size, self.mesh)

  def split_views(self, split: str):
    """(sketch views (N, V, c, c, 1), photo views (M, V, c, c, C)) of a split."""
    if split not in self._views:
      data = self.splits[split]
      size, views = self.config.data.crop_size, self.config.eval.num_views
      self._views[split] = (image_pipeline.ten_views(data.sketches, size, views),
                            image_pipeline.ten_views(data.photos, size, views))
    return self._views[split]

  def energy_matrix(self, variables: dict, split: str) -> np.ndarray:
    """(sketches, photos) energy of every sketch against every photo of the
    split, averaged over the matched views."""
    sketch_views, photo_views = self.split_views(split)

    def embed_views(views_NxV, domain):
      n, v = views_NxV.shape[:2]
      flat = self.embed_images(
          variables, views_NxV.reshape((n * v,) + views_NxV.shape[2:]), domain)
      return flat.reshape(n, v, -1).transpose(1, 0, 2)

    return np.asarray(self._view_energy_fn(
        variables, embed_views(sketch_views, 'sketch'), embed_views(photo_views, 'photo')))

  @property
  def predict_fns(self) -> dict:
    """'distances': the view-averaged energies of the split's sketches against
    its photos, the true match of sketch i being photo photo_index[i]."""
    return {'distances': lambda variables, split: {
        'distances': self.energy_matrix(variables, split),
        'targets': self.splits[split].photo_index}}

  def write_outputs(self, variables: dict, workdir: str) -> None:
    del variables, workdir  # The retrieve mode draws FG-SBIR's pictures.
