"""Pieces shared by the composed-query models (LBF, TIRG, baselines).

- `SmallCnn`: a 3-conv image CNN trained from scratch on 64x64 CSS-style
  images (the papers use ImageNet ResNet-18 / Faster R-CNN features, not
  obtainable offline; EfficientNet-Lite0 is the ImageNet option here).
- `EfficientNetLite0Map`: the ImageNet EfficientNet-Lite0 feature map
  (inputs resized to 224, BatchNorm in inference mode).
- `box_average_pool`: a (H, W) map averaged inside normalised [x, y, w, h]
  boxes, for LBF's locally bounded entities: the cells of a grid
  (`cell_boxes`) or given boxes (e.g. object or detector boxes).
- `ScaledL2Normalize`: TIRG's normalisation layer, s * x / ||x|| with a
  learnable s initialised to 4.0, applied to queries and targets alike.
"""
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sbir_jax.core import precision
from sbir_jax.models import efficientnet_lite


def scale_images(images_uint8: jax.Array) -> jax.Array:
  """uint8 RGB -> float32 roughly in [-1, 1]."""
  return (jnp.asarray(images_uint8, jnp.float32) - 127.5) / 127.5


class SmallCnn(nn.Module):
  """(B, 64, 64, 3) uint8 -> (B, 16, 16, width) feature map."""
  width: int = 64
  dtype: Optional[Any] = None  # Compute dtype (core/precision.py); params float32.

  @nn.compact
  def __call__(self, images_BxHxWx3: jax.Array) -> jax.Array:
    x = scale_images(images_BxHxWx3)
    conv = lambda *args, **kwargs: nn.Conv(*args, **kwargs, dtype=self.dtype)
    x = nn.relu(conv(self.width // 2, (5, 5), strides=2, name='conv1')(x))
    x = nn.relu(conv(self.width, (3, 3), strides=2, name='conv2')(x))
    x = conv(self.width, (3, 3), name='conv3')(x)
    return nn.relu(nn.GroupNorm(num_groups=8, dtype=self.dtype, name='norm')(x))


class EfficientNetLite0Map(nn.Module):
  """ImageNet EfficientNet-Lite0 (B, 7, 7, 1280) map; BatchNorm statistics
  are read from the `batch_stats` collection (inference mode, never updated)."""
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, images_BxHxWx3: jax.Array) -> jax.Array:
    x = efficientnet_lite.preprocess(images_BxHxWx3)
    net = efficientnet_lite.EfficientNetLite0(dropout_rate=0.0, drop_connect_rate=0.0,
                                              dtype=self.dtype, name='backbone')
    return net.feature_map(x, train=False)


class FeatureMapInput(nn.Module):
  """The input is already a backbone's feature map (precomputed, e.g. the
  frozen ImageNet maps of tasks/composed/cached_backbone.py): cast only."""
  dtype: Optional[Any] = None

  def __call__(self, map_BxHxWxC: jax.Array) -> jax.Array:
    return jnp.asarray(map_BxHxWxC, self.dtype or jnp.float32)


def make_image_backbone(name: str, width: int, dtype: Optional[Any] = None) -> nn.Module:
  if name == 'small_cnn':
    return SmallCnn(width, dtype, name='cnn')
  if name == 'efficientnet_lite0':
    return EfficientNetLite0Map(dtype, name='cnn')
  if name == 'feature_map':
    return FeatureMapInput(dtype, name='cnn')
  raise ValueError(f'config.model.backbone={name!r}; use small_cnn, efficientnet_lite0 '
                   'or efficientnet_lite0_cached.')


def _overlap_weights(starts_BxK: jax.Array, lengths_BxK: jax.Array, size: int
                     ) -> jax.Array:
  """(B, K, size): the fraction of each of `size` equal bins of [0, 1] that
  lies in [start, start + length], normalised to sum to 1 over the bins."""
  lo_1x1xS = (jnp.arange(size, dtype=jnp.float32) / size)[None, None, :]
  overlap = jnp.clip(jnp.minimum(lo_1x1xS + 1.0 / size, (starts_BxK + lengths_BxK)[..., None])
                     - jnp.maximum(lo_1x1xS, starts_BxK[..., None]), 0.0)
  # A box outside the image or of zero size (padding) pools to zeros.
  return overlap / jnp.maximum(jnp.sum(overlap, axis=-1, keepdims=True), 1e-6)


def box_average_pool(map_BxHxWxC: jax.Array, boxes_BxKx4: jax.Array) -> jax.Array:
  """(B, H, W, C) map, (B, K, 4) normalised [x, y, w, h] boxes -> (B, K, C):
  the map's area-weighted average inside each box (cells partly inside count
  by the part inside), so a box's entity sees only its own region."""
  _, h, w, _ = map_BxHxWxC.shape
  x, y, bw, bh = (boxes_BxKx4[..., i] for i in range(4))
  rows_BxKxH = _overlap_weights(y, bh, h)
  cols_BxKxW = _overlap_weights(x, bw, w)
  return jnp.einsum('bkh,bhwc,bkw->bkc', rows_BxKxH, map_BxHxWxC, cols_BxKxW)


def cell_boxes(rows: int, cols: int) -> np.ndarray:
  """(rows * cols, 4) normalised [x, y, w, h] (top-left corner, size) per cell."""
  ys, xs = np.meshgrid(np.arange(rows) / rows, np.arange(cols) / cols, indexing='ij')
  w = np.full_like(xs, 1.0 / cols)
  h = np.full_like(ys, 1.0 / rows)
  return np.stack([xs, ys, w, h], axis=-1).reshape(-1, 4).astype(np.float32)


class ScaledL2Normalize(nn.Module):
  """s * x / ||x||, s learnable (TIRG: initialised to 4.0)."""
  init_scale: float = 4.0

  @nn.compact
  def __call__(self, x_BxD: jax.Array) -> jax.Array:
    scale = self.param('scale', lambda _: jnp.asarray(self.init_scale, jnp.float32))
    x_BxD = precision.to_float32(x_BxD)  # What the losses see: float32.
    norm_Bx1 = jnp.linalg.norm(x_BxD, axis=-1, keepdims=True)
    return scale * x_BxD / jnp.maximum(norm_Bx1, 1e-12)


class GlobalImageEncoder(nn.Module):
  """Backbone map -> global average -> Linear: TIRG's image feature."""
  dim: int
  backbone: str = 'small_cnn'
  cnn_width: int = 64
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, images_BxHxWx3: jax.Array) -> jax.Array:
    map_BxHxWxC = make_image_backbone(self.backbone, self.cnn_width,
                                      self.dtype)(images_BxHxWx3)
    return nn.Dense(self.dim, dtype=self.dtype, name='fc')(
        jnp.mean(map_BxHxWxC, axis=(1, 2)))
