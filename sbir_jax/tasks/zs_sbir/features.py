"""Fixed image features for zero-shot SBIR: extracted once, cached by image id.

The ZS-SBIR paper (Yelamarthi et al., ECCV 2018, section 5) trains its
generative models on fixed VGG-16 fc7 features of sketches and photos. No
VGG-16 weights are reachable offline here, so the default extractor is the
ImageNet EfficientNet-Lite0 (`models/efficientnet_lite.py`), pooled to
1280-d; `config.features.extractor` chooses it:

  efficientnet_lite0  pooled head features (1280-d), inputs (x - 127) / 128
                      at `image_size` (224 = the ImageNet resolution).
  pixels              the grey image resized to sqrt(dim) x sqrt(dim),
                      scaled to [0, 1]: no learning at all (a control).
  precomputed         no extraction: read `<precomputed_dir>/<set>.npz`.
  fg_checkpoint       the embedding of a trained FG-SBIR checkpoint
                      (`fg_config` and `fg_workdir`, checkpoint `fg_checkpoint`),
                      e.g. the trunk fine-tuned on the seen classes by
                      configs/sketchy_seen.py: sketches through its sketch
                      branch, photos through its photo branch, one centre crop
                      of images read at its load size. Its cache folder is
                      keyed by the checkpoint's fingerprint (config and
                      parameters), so features of two checkpoints, or of a
                      checkpoint and the ImageNet trunk, never mix.

Cache format (also the format of precomputed features, e.g. VGG-16 fc7 a user
already has): one `<set name>.npz` per image set with `ids` (N,) str and
`features` (N, D) float32. The extraction is one jitted function over a
global batch sharded on the mesh's `data` axis; each process feeds its rows
and every process gets all features (process 0 writes the cache). A second
run reads the cache and extracts only ids it lacks.
"""
import functools
import hashlib
import os
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from sbir_jax import image_sets
from sbir_jax.core import sharding

EXTRACTORS = ('efficientnet_lite0', 'pixels', 'precomputed', 'fg_checkpoint')


class FeatureError(ValueError):
  """A features file does not fit the config or the data."""


def data_tag(*sources: str) -> str:
  """A short stable tag of the data folders, so two data sets never share a cache."""
  text = '|'.join(os.path.abspath(s) for s in sources)
  return hashlib.sha1(text.encode()).hexdigest()[:10]


def cache_dir(cfg: ml_collections.ConfigDict, *sources: str) -> str:
  """<cache_dir>/<extractor>_<image size>/<data tag>; precomputed: as given;
  fg_checkpoint: <cache_dir>/fg_checkpoint_<config hash>_<params hash>/<data tag>."""
  if cfg.extractor == 'precomputed':
    return cfg.precomputed_dir
  if cfg.extractor == 'fg_checkpoint':
    fingerprint = trained_model(cfg.fg_config, cfg.fg_workdir, cfg.fg_checkpoint)[2]
    key = f"fg_checkpoint_{fingerprint['config_hash']}_{fingerprint['params_hash']}"
    return os.path.join(cfg.cache_dir, key, data_tag(*sources))
  return os.path.join(cfg.cache_dir, f'{cfg.extractor}_{cfg.image_size}',
                      data_tag(*sources))


@functools.cache
def trained_model(config_arg: str, workdir: str, checkpoint: str):
  """(FG-SBIR task, restored variables, model fingerprint) of a checkpoint,
  restored once per process."""
  from configs import variants
  from sbir_jax.core import trainer
  from sbir_jax.tasks.fg_sbir import gallery_file
  if not config_arg or not workdir:
    raise FeatureError('config.features.extractor=fg_checkpoint needs '
                       'config.features.fg_config (e.g. configs/sketchy_seen.py:'
                       'zs_trunk_cpu) and config.features.fg_workdir (its workdir).')
  config = variants.load_config(config_arg)
  if config.task != 'fg_sbir':
    raise FeatureError(f'config.features.fg_config={config_arg!r} is a {config.task} '
                       'config; fg_checkpoint extracts with an fg_sbir model.')
  task, state = trainer.restore_model(config, workdir, checkpoint)
  fingerprint = gallery_file.model_fingerprint(config, task.model.output_dim, state.params)
  logging.info('Features of %s step %d (%s)', workdir, int(state.step), fingerprint)
  return task, state.variables, fingerprint


def _checkpoint_extract_fn(cfg: ml_collections.ConfigDict
                           ) -> Callable[[jax.Array, str], np.ndarray]:
  task, variables, fingerprint = trained_model(cfg.fg_config, cfg.fg_workdir,
                                               cfg.fg_checkpoint)
  data = task.config.data
  if cfg.image_size != data.load_size or cfg.dim != fingerprint['embedding_dim']:
    raise FeatureError(
        f'{cfg.fg_config} reads images at {data.load_size} px and embeds in '
        f"{fingerprint['embedding_dim']}-d; set config.features.image_size="
        f"{data.load_size} and config.features.dim={fingerprint['embedding_dim']} "
        '(the zs_sketchy variant `finetuned_trunk` does).')

  @functools.partial(jax.jit, static_argnums=1)
  def model_inputs(images, domain):  # The evaluation's centre crop.
    start = (images.shape[1] - data.crop_size) // 2
    crops = images[:, start:start + data.crop_size, start:start + data.crop_size]
    if domain == 'photo' and data.photo_input == 'rgb':
      return crops
    grey = jnp.round(jnp.mean(crops.astype(jnp.float32), axis=-1, keepdims=True))
    return grey.astype(jnp.uint8)  # Sketches (and edge-map photos, not built).

  def extract(images, domain):
    if domain == 'photo' and data.photo_input != 'rgb':
      raise FeatureError(f'{cfg.fg_config} embeds photos as edge maps; '
                         'fg_checkpoint extracts from RGB-photo models only.')
    embed = task.embed_function(domain)
    return np.asarray(embed(variables, model_inputs(images, domain)), np.float32)
  return extract


def make_extract_fn(cfg: ml_collections.ConfigDict,
                    mesh: jax.sharding.Mesh) -> Callable[[jax.Array, str], np.ndarray]:
  """(uint8 (B, S, S, 3) global jax.Array sharded on `data`, the images'
  domain 'sketch' / 'photo') -> (B, D) float32 numpy."""
  if cfg.extractor == 'fg_checkpoint':
    return _checkpoint_extract_fn(cfg)
  if cfg.extractor == 'efficientnet_lite0':
    from sbir_jax.models import convert_efficientnet
    from sbir_jax.models import efficientnet_lite
    if cfg.dim != efficientnet_lite.FEATURE_DIM:
      raise FeatureError(f'config.features.dim={cfg.dim}, but EfficientNet-Lite0 '
                         f'gives {efficientnet_lite.FEATURE_DIM}-d features.')
    model = efficientnet_lite.EfficientNetLite0()
    variables = jax.device_put(convert_efficientnet.load_pretrained(
        cfg.weights or None), sharding.replicated(mesh))

    def fn(variables, images):
      x = (images.astype(jnp.float32) - 127.0) / 128.0  # The TF Lite scaling.
      return model.apply(variables, x, method=model.pooled_features)
  elif cfg.extractor == 'pixels':
    side = int(round(cfg.dim ** 0.5))
    if side * side != cfg.dim:
      raise FeatureError(f'The pixels extractor needs a square dim; got {cfg.dim}.')
    variables = None

    def fn(variables, images):
      grey = images.astype(jnp.float32).mean(axis=-1, keepdims=True) / 255.0
      small = jax.image.resize(grey, (images.shape[0], side, side, 1), 'linear')
      return small.reshape(images.shape[0], -1)
  else:
    raise FeatureError(f'config.features.extractor={cfg.extractor!r}; choose one '
                       f'of {EXTRACTORS}.')
  jitted = jax.jit(fn, out_shardings=sharding.replicated(mesh))
  return lambda global_images, domain: np.asarray(jitted(variables, global_images),
                                                  np.float32)


def load_npz(path: str, dim: int) -> tuple[np.ndarray, np.ndarray]:
  """(ids, features) of a cache / precomputed file, checked against `dim`."""
  try:
    with np.load(path, allow_pickle=False) as data:
      ids, feats = data['ids'], data['features']
  except (OSError, ValueError, KeyError) as e:
    raise FeatureError(f'{path} is not a features file with arrays "ids" and '
                       f'"features" ({type(e).__name__}: {e}). Delete it to '
                       'recompute, or rewrite it in that format.') from e
  if feats.ndim != 2 or len(feats) != len(ids):
    raise FeatureError(f'{path}: features {feats.shape} do not match {len(ids)} ids.')
  if feats.shape[1] != dim:
    raise FeatureError(
        f'{path} holds {feats.shape[1]}-d features but config.features.dim={dim}. '
        f'Set --config.features.dim={feats.shape[1]} (and the model widths that '
        'follow it), or point the config at features of the right size.')
  return ids.astype(str), feats.astype(np.float32)


def _save_npz(path: str, ids: np.ndarray, feats: np.ndarray) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + '.tmp.npz'
  np.savez(tmp, ids=ids.astype(str), features=feats.astype(np.float32))
  os.replace(tmp, path)  # Atomic: a kill never leaves half a cache.


class FeatureStore:
  """Features of ImageSets, from the cache dir or extracted (then cached)."""

  def __init__(self, cfg: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
               directory: str):
    self.cfg = cfg
    self.mesh = mesh
    self.directory = directory
    self.num_extracted = 0  # Images run through the extractor (tests read it).
    self._extract = None

  def _extractor(self):
    if self._extract is None:
      self._extract = make_extract_fn(self.cfg, self.mesh)
    return self._extract

  def get(self, images: image_sets.ImageSet) -> np.ndarray:
    """(N, D) features of `images`, in its order."""
    path = os.path.join(self.directory, images.name + '.npz')
    cached_ids = np.zeros((0,), str)
    cached = np.zeros((0, self.cfg.dim), np.float32)
    if os.path.exists(path):
      cached_ids, cached = load_npz(path, self.cfg.dim)
    position = {k: i for i, k in enumerate(cached_ids.tolist())}
    missing = np.array([i for i, k in enumerate(images.ids.tolist())
                        if k not in position], np.int64)
    if len(missing) and self.cfg.extractor == 'precomputed':
      raise FeatureError(
          f'{path} lacks features of {len(missing)} image(s) of {images.name}, '
          f'e.g. {images.ids[missing[:3]].tolist()}. Recompute them, or use '
          '--config.features.extractor=efficientnet_lite0.')
    if len(missing):
      logging.info('Extracting %d %s features of %s into %s', len(missing),
                   self.cfg.extractor, images.name, path)
      new = self._run(images, missing)
      cached_ids = np.concatenate([cached_ids, images.ids[missing]])
      cached = np.concatenate([cached, new])
      if jax.process_index() == 0:
        _save_npz(path, cached_ids, cached)
      position = {k: i for i, k in enumerate(cached_ids.tolist())}
    return cached[[position[k] for k in images.ids.tolist()]]

  def _run(self, images: image_sets.ImageSet, indices: np.ndarray) -> np.ndarray:
    extract = self._extractor()
    batch = self.cfg.batch_size
    out = []
    for n, global_batch in sharding.padded_global_batches(
        images.reader(indices, self.cfg.image_size, batch), batch, self.mesh,
        'config.features.batch_size'):
      out.append(extract(global_batch, images.domain)[:n])
      self.num_extracted += n
    feats = np.concatenate(out) if out else np.zeros((0, self.cfg.dim), np.float32)
    if len(feats) != len(indices):
      raise RuntimeError(f'{images.name}: read {len(feats)} images for '
                         f'{len(indices)} ids.')
    return feats
