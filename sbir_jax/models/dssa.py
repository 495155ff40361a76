"""DSSA: Deep Spatial-Semantic Attention for FG-SBIR (Song et al., ICCV 2017).

One branch, weights shared by sketch, positive photo and negative photo:
Sketch-a-Net conv trunk -> spatial attention (Sec. 3.1, with the shortcut
f + a*f) -> coarse-fine fusion (Sec. 3.2: fc7 of the attended map concatenated
with the L2-normalised spatial sum of the attended map) -> embedding. The
learnable energy of the HOLEF loss (Sec. 3.3) is part of the model so its
parameters train, checkpoint and rank together with the network.
"""
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from sbir_jax.models import energies
from sbir_jax.models import sketch_a_net


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis, keepdims=True), eps))


class SpatialAttention(nn.Module):
  """Soft spatial mask over the conv5 map: 1x1 conv + ReLU, 1x1 conv, softmax."""
  hidden: int = 256

  @nn.compact
  def __call__(self, f_BxHxWxC: jax.Array) -> jax.Array:
    b, h, w, _ = f_BxHxWxC.shape
    x = nn.relu(nn.Conv(self.hidden, (1, 1), name='att_conv1')(f_BxHxWxC))
    logits_BxHW = nn.Conv(1, (1, 1), name='att_conv2')(x).reshape(b, h * w)
    return jax.nn.softmax(logits_BxHW, axis=-1).reshape(b, h, w, 1)


class EnergyModel(nn.Module):
  """A retrieval model whose learnable energy is its `energy_fn` submodule."""

  def pairwise_energy(self, s_BxD: jax.Array, p_NxD: jax.Array) -> jax.Array:
    return self.energy_fn.pairwise(s_BxD, p_NxD)

  def paired_energy(self, s_BxD: jax.Array, p_BxD: jax.Array) -> jax.Array:
    return self.energy_fn.paired(s_BxD, p_BxD)

  def energy_regulariser(self) -> jax.Array:
    return self.energy_fn.regulariser()


class DSSA(EnergyModel):
  """Embedding network plus retrieval energy.

  With attention=False, coarse_fine_fusion=False this is Triplet SN (the
  paper's "Base").
  """
  attention: bool = True
  attention_shortcut: bool = True
  coarse_fine_fusion: bool = True
  fc6_dim: int = 512
  embed_dim: int = 256
  dropout_rate: float = 0.5
  energy: str = 'holef'
  width_multiplier: float = 1.0

  @property
  def output_dim(self) -> int:
    return self.embed_dim + (self.trunk_channels if self.coarse_fine_fusion else 0)

  @property
  def part_dims(self) -> tuple[int, ...]:
    """Sizes of the separately L2-normalised parts of `embed` (coarse, fine)."""
    return (self.embed_dim,) + ((self.trunk_channels,) if self.coarse_fine_fusion else ())

  @property
  def trunk_channels(self) -> int:
    return max(1, int(round(256 * self.width_multiplier)))

  def setup(self):
    self.trunk = sketch_a_net.SketchANetTrunk(self.width_multiplier, name='trunk')
    if self.attention:
      self.spatial_attention = SpatialAttention(self.trunk_channels)
    self.fc6 = nn.Dense(self.fc6_dim)
    self.fc7 = nn.Dense(self.embed_dim)
    self.dropout = nn.Dropout(self.dropout_rate)
    self.energy_fn = energies.Energy(self.energy, self.output_dim, name='energy')

  def attend(self, x_BxHxWx1: jax.Array):
    """Returns (attended conv5 map, attention mask or None)."""
    f = self.trunk(x_BxHxWx1)
    if not self.attention:
      return f, None
    mask = self.spatial_attention(f)
    return (f + mask * f if self.attention_shortcut else mask * f), mask

  def embed(self, x_BxHxWx1: jax.Array, train: bool = False) -> jax.Array:
    f, _ = self.attend(x_BxHxWx1)
    h = nn.relu(self.fc6(f.reshape(f.shape[0], -1)))
    h = self.dropout(h, deterministic=not train)
    coarse = l2_normalize(self.fc7(h))
    if not self.coarse_fine_fusion:
      return coarse
    fine = l2_normalize(jnp.sum(f, axis=(1, 2)))
    return jnp.concatenate([coarse, fine], axis=-1)

  def attention_mask(self, x_BxHxWx1: jax.Array) -> Optional[jax.Array]:
    return self.attend(x_BxHxWx1)[1]

  def __call__(self, x_BxHxWx1: jax.Array, train: bool = False) -> jax.Array:
    """Embeds x and touches the energy, so `init` creates every parameter."""
    e = self.embed(x_BxHxWx1, train)
    _ = self.energy_fn.pairwise(e, e)
    return e
