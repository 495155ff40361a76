"""Frozen ImageNet EfficientNet-Lite0 feature maps, computed once and cached.

`config.model.backbone='efficientnet_lite0_cached'` trains LBF, TIRG or a
baseline on the ImageNet Lite0 trunk frozen: every image's (7, 7, 1280)
feature map (64x64 images resized to 224, as the `efficientnet_lite0`
backbone sees them) is computed once per data set, kept as float16 in
`<cache_dir>/<content hash>.npy`, and fed to the model in place of pixels
(its image backbone is then the identity, `composed_encoders.FeatureMapInput`).
The trunk's forward pass, the dominant cost of the `efficientnet_lite0`
option on a CPU, is then paid once for all runs of a table instead of at
every step. LBF's entities are the map's cells (box-pooled to 6x6 for K = 36,
3x6 for K = 18), TIRG and the baselines pool it globally, as with the live
backbone.
"""
import functools
import hashlib
import os

import jax
import numpy as np
from absl import logging

from sbir_jax.core import sharding

CACHED = 'efficientnet_lite0_cached'
MODEL_BACKBONE = 'feature_map'  # What the model is built with instead.


def content_key(images_uint8: np.ndarray) -> str:
  """A hash of the images (shape and pixels): the cache file's name."""
  digest = hashlib.sha1(repr(images_uint8.shape).encode())
  digest.update(np.ascontiguousarray(images_uint8).tobytes())
  return digest.hexdigest()[:16]


def _extract_fn():
  """The maps of uint8 images, with the ImageNet weights (read once)."""
  from sbir_jax.models import convert_efficientnet
  from sbir_jax.models import efficientnet_lite
  variables = convert_efficientnet.load_pretrained()
  net = efficientnet_lite.EfficientNetLite0(dropout_rate=0.0, drop_connect_rate=0.0)

  def maps(images):
    x = efficientnet_lite.preprocess(images)
    return net.apply(variables, x, train=False, method=net.feature_map).astype(np.float16)
  return maps


@functools.cache
def _jitted(mesh: jax.sharding.Mesh):
  """One compiled extraction per mesh, shared by every split and rendering."""
  return jax.jit(_extract_fn(), out_shardings=sharding.replicated(mesh))


def feature_maps(images_uint8: np.ndarray, cache_dir: str, mesh: jax.sharding.Mesh,
                 batch_size: int = 64) -> np.ndarray:
  """(N, 7, 7, 1280) float16 maps of (N, H, W, 3) uint8 images, read from
  the cache or computed (sharded on `data`) and written there atomically."""
  path = os.path.join(cache_dir, content_key(images_uint8) + '.npy')
  if os.path.exists(path):
    maps = np.load(path, allow_pickle=False)
    if len(maps) == len(images_uint8):
      return maps
    logging.warning('%s holds %d maps for %d images; recomputing.', path, len(maps),
                    len(images_uint8))
  logging.info('Computing ImageNet Lite0 feature maps of %d images into %s',
               len(images_uint8), path)
  maps = np.asarray(sharding.map_batches(_jitted(mesh), images_uint8, batch_size, mesh),
                    np.float16)
  if jax.process_index() == 0:
    os.makedirs(cache_dir, exist_ok=True)
    tmp = path + '.tmp.npy'
    np.save(tmp, maps, allow_pickle=False)
    os.replace(tmp, path)  # A kill never leaves half a cache file.
  return maps
