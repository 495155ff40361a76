"""Pieces shared by the composed-query models (LBF, TIRG, baselines).

- `SmallCnn`: a 3-conv image CNN trained from scratch on 64x64 CSS-style
  images (the papers use ImageNet ResNet-18 / Faster R-CNN features, not
  obtainable offline; EfficientNet-Lite0 is the ImageNet option here).
- `EfficientNetLite0Map`: the ImageNet EfficientNet-Lite0 feature map
  (inputs resized to 224, BatchNorm in inference mode).
- `adaptive_average_pool`: a (H, W) map -> (rows, cols) cells, for LBF's
  locally bounded entities, with `cell_boxes` their normalised [x, y, w, h].
- `ScaledL2Normalize`: TIRG's normalisation layer, s * x / ||x|| with a
  learnable s initialised to 4.0, applied to queries and targets alike.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sbir_jax.models import efficientnet_lite


def scale_images(images_uint8: jax.Array) -> jax.Array:
  """uint8 RGB -> float32 roughly in [-1, 1]."""
  return (jnp.asarray(images_uint8, jnp.float32) - 127.5) / 127.5


class SmallCnn(nn.Module):
  """(B, 64, 64, 3) uint8 -> (B, 16, 16, width) feature map."""
  width: int = 64

  @nn.compact
  def __call__(self, images_BxHxWx3: jax.Array) -> jax.Array:
    x = scale_images(images_BxHxWx3)
    x = nn.relu(nn.Conv(self.width // 2, (5, 5), strides=2, name='conv1')(x))
    x = nn.relu(nn.Conv(self.width, (3, 3), strides=2, name='conv2')(x))
    x = nn.Conv(self.width, (3, 3), name='conv3')(x)
    return nn.relu(nn.GroupNorm(num_groups=8, name='norm')(x))


class EfficientNetLite0Map(nn.Module):
  """ImageNet EfficientNet-Lite0 (B, 7, 7, 1280) map; BatchNorm statistics
  are read from the `batch_stats` collection (inference mode, never updated)."""

  @nn.compact
  def __call__(self, images_BxHxWx3: jax.Array) -> jax.Array:
    x = efficientnet_lite.preprocess(images_BxHxWx3)
    net = efficientnet_lite.EfficientNetLite0(dropout_rate=0.0,
                                              drop_connect_rate=0.0, name='backbone')
    return net.feature_map(x, train=False)


def make_image_backbone(name: str, width: int) -> nn.Module:
  if name == 'small_cnn':
    return SmallCnn(width, name='cnn')
  if name == 'efficientnet_lite0':
    return EfficientNetLite0Map(name='cnn')
  raise ValueError(f'config.model.backbone={name!r}; use small_cnn or '
                   'efficientnet_lite0.')


def _pool_matrix(size: int, cells: int) -> np.ndarray:
  """(cells, size) averaging weights: cell i covers [floor(i*s/c), ceil((i+1)*s/c))."""
  weights = np.zeros((cells, size), np.float32)
  for i in range(cells):
    start, stop = (i * size) // cells, -((-(i + 1) * size) // cells)
    weights[i, start:stop] = 1.0 / (stop - start)
  return weights


def adaptive_average_pool(map_BxHxWxC: jax.Array, rows: int, cols: int
                          ) -> jax.Array:
  """(B, H, W, C) -> (B, rows * cols, C), cells in row-major order."""
  _, h, w, _ = map_BxHxWxC.shape
  pool_rows_RxH = jnp.asarray(_pool_matrix(h, rows))
  pool_cols_CxW = jnp.asarray(_pool_matrix(w, cols))
  cells = jnp.einsum('rh,bhwc,kw->brkc', pool_rows_RxH, map_BxHxWxC, pool_cols_CxW)
  return cells.reshape(cells.shape[0], rows * cols, cells.shape[-1])


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
    norm_Bx1 = jnp.linalg.norm(x_BxD, axis=-1, keepdims=True)
    return scale * x_BxD / jnp.maximum(norm_Bx1, 1e-12)


class GlobalImageEncoder(nn.Module):
  """Backbone map -> global average -> Linear: TIRG's image feature."""
  dim: int
  backbone: str = 'small_cnn'
  cnn_width: int = 64

  @nn.compact
  def __call__(self, images_BxHxWx3: jax.Array) -> jax.Array:
    map_BxHxWxC = make_image_backbone(self.backbone, self.cnn_width)(images_BxHxWx3)
    return nn.Dense(self.dim, name='fc')(jnp.mean(map_BxHxWxC, axis=(1, 2)))
