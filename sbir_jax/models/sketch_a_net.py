"""Sketch-a-Net trunk (Yu et al., the "Triplet SN" branch of DSSA, ICCV 2017).

conv1-conv5 with their max-pools, producing the conv5 feature map f that DSSA
attends over (7x7x256 for a 225x225 input). The fully connected head lives in
`dssa.py` because DSSA computes it from the attended map.
"""
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp


def _max_pool(x: jax.Array) -> jax.Array:
  return nn.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding='VALID')


class SketchANetTrunk(nn.Module):
  """conv1..pool5 of Sketch-a-Net; input (B, H, W, 1), output (B, h, w, C)."""
  width_multiplier: float = 1.0  # 1.0 is the paper; smaller only for quick tests.
  dtype: Optional[Any] = None  # Compute dtype (core/precision.py); params float32.

  @nn.compact
  def __call__(self, x_BxHxWx1: jax.Array) -> jax.Array:
    if trunk_output_size(x_BxHxWx1.shape[1]) < 1:
      raise ValueError(f'Input side {x_BxHxWx1.shape[1]} is too small for '
                       'Sketch-a-Net; use config.data.crop_size >= 97.')
    w = lambda c: max(1, int(round(c * self.width_multiplier)))
    x = nn.relu(nn.Conv(w(64), (15, 15), strides=3, padding='VALID',
                        dtype=self.dtype, name='conv1')(x_BxHxWx1))
    x = _max_pool(x)
    x = nn.relu(nn.Conv(w(128), (5, 5), padding='VALID', dtype=self.dtype,
                        name='conv2')(x))
    x = _max_pool(x)
    for i in (3, 4, 5):
      x = nn.relu(nn.Conv(w(256), (3, 3), padding='SAME', dtype=self.dtype,
                          name=f'conv{i}')(x))
    return _max_pool(x)


def trunk_output_size(input_size: int) -> int:
  """Spatial side of the conv5 map for a square input (225 -> 7)."""
  side = (input_size - 15) // 3 + 1
  side = (side - 3) // 2 + 1
  side = side - 4
  side = (side - 3) // 2 + 1
  side = (side - 3) // 2 + 1
  return side



class SketchANetClassifier(nn.Module):
  """Sketch-a-Net for sketch recognition: trunk -> fc6 -> dropout -> classes.

  The trunk and fc6 carry DSSA's parameter names and shapes (for the same
  input size), so a checkpoint of this model initialises DSSA through
  `config.init_from`; the class layer has no DSSA counterpart.
  """
  num_classes: int
  fc6_dim: int = 512
  dropout_rate: float = 0.5
  width_multiplier: float = 1.0
  dtype: Optional[Any] = None  # Compute dtype; the logits are float32.

  @nn.compact
  def __call__(self, x_BxHxWx1: jax.Array, train: bool = False) -> jax.Array:
    f = SketchANetTrunk(self.width_multiplier, self.dtype, name='trunk')(x_BxHxWx1)
    h = nn.relu(nn.Dense(self.fc6_dim, dtype=self.dtype, name='fc6')(
        f.reshape(f.shape[0], -1)))
    h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name='classifier')(h)
    return logits.astype(jnp.float32)
