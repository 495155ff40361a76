"""DSSA: Deep Spatial-Semantic Attention for FG-SBIR (Song et al., ICCV 2017).

One branch, weights shared by sketch, positive photo and negative photo:
conv trunk -> spatial attention (Sec. 3.1, with the shortcut f + a*f) ->
coarse-fine fusion (Sec. 3.2: fc7 of the attended map concatenated with the
L2-normalised spatial sum of the attended map) -> embedding. The learnable
energy of the HOLEF loss (Sec. 3.3) is part of the model so its parameters
train, checkpoint and rank together with the network.

Trunks (`trunk`): 'sketch_a_net' (the paper's; conv5 map, 7x7x256 at 225 px)
or an ImageNet EfficientNet-Lite ('efficientnet_lite0/1/2'; its head-conv
map, 1280 channels at 1/32 of the input side) fed the grey image through a
one-channel stem (`convert_efficientnet.graft` sums the RGB stem kernel). The
head is the same on every trunk.
"""
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from sbir_jax.core import precision
from sbir_jax.models import efficientnet_lite
from sbir_jax.models import energies
from sbir_jax.models import sketch_a_net

SKETCH_A_NET = 'sketch_a_net'
EFFICIENTNET_TRUNKS = {f'efficientnet_{v}': v for v in efficientnet_lite.SCALING}
TRUNKS = (SKETCH_A_NET, *EFFICIENTNET_TRUNKS)


def check_trunk(trunk: str) -> str:
  if trunk not in TRUNKS:
    raise ValueError(f'config.model.trunk={trunk!r}; use one of {TRUNKS}.')
  return trunk


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis, keepdims=True), eps))


class SpatialAttention(nn.Module):
  """Soft spatial mask over the conv5 map: 1x1 conv + ReLU, 1x1 conv, softmax."""
  hidden: int = 256
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, f_BxHxWxC: jax.Array) -> jax.Array:
    b, h, w, _ = f_BxHxWxC.shape
    x = nn.relu(nn.Conv(self.hidden, (1, 1), dtype=self.dtype, name='att_conv1')(f_BxHxWxC))
    logits_BxHW = nn.Conv(1, (1, 1), dtype=self.dtype, name='att_conv2')(x).reshape(b, h * w)
    # The softmax in float32 (a no-op cast in a float32 run), the mask in the
    # compute dtype of the map it weighs.
    mask_BxHW = jax.nn.softmax(logits_BxHW.astype(jnp.float32), axis=-1)
    return mask_BxHW.astype(f_BxHxWxC.dtype).reshape(b, h, w, 1)


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
  width_multiplier: float = 1.0  # Sketch-a-Net's widths; < 1 only for tests.
  trunk: str = SKETCH_A_NET
  # EfficientNet trunks only: BatchNorm on its running (ImageNet) statistics
  # in training too; the first N layers get no gradient; drop-connect rate.
  frozen_batch_norm: bool = True
  frozen_trunk_layers: int = 0
  drop_connect_rate: float = 0.2
  # Compute dtype of the network (core/precision.py; None = float32). The
  # parameters, the energy and the embeddings it returns stay float32.
  dtype: Optional[Any] = None

  @property
  def output_dim(self) -> int:
    return self.embed_dim + (self.trunk_channels if self.coarse_fine_fusion else 0)

  @property
  def part_dims(self) -> tuple[int, ...]:
    """Sizes of the separately L2-normalised parts of `embed` (coarse, fine)."""
    return (self.embed_dim,) + ((self.trunk_channels,) if self.coarse_fine_fusion else ())

  @property
  def trunk_channels(self) -> int:
    if check_trunk(self.trunk) != SKETCH_A_NET:
      return efficientnet_lite.FEATURE_DIM
    return max(1, int(round(256 * self.width_multiplier)))

  def setup(self):
    if check_trunk(self.trunk) == SKETCH_A_NET:
      self.trunk_net = sketch_a_net.SketchANetTrunk(self.width_multiplier, self.dtype,
                                                    name='trunk')
    else:
      self.trunk_net = efficientnet_lite.EfficientNetLite(
          variant=EFFICIENTNET_TRUNKS[self.trunk], frozen_batch_norm=self.frozen_batch_norm,
          frozen_layers=self.frozen_trunk_layers,
          drop_connect_rate=self.drop_connect_rate, dtype=self.dtype, name='trunk')
    if self.attention:
      self.spatial_attention = SpatialAttention(self.trunk_channels, self.dtype)
    self.fc6 = nn.Dense(self.fc6_dim, dtype=self.dtype)
    self.fc7 = nn.Dense(self.embed_dim, dtype=self.dtype)
    self.dropout = nn.Dropout(self.dropout_rate)
    self.energy_fn = energies.Energy(self.energy, self.output_dim, name='energy')

  def trunk_map(self, x_BxHxWx1: jax.Array, train: bool = False) -> jax.Array:
    """The trunk's last feature map f, (B, h, w, trunk_channels)."""
    if self.trunk == SKETCH_A_NET:
      return self.trunk_net(x_BxHxWx1)
    return self.trunk_net.feature_map(x_BxHxWx1, train)

  def attend(self, x_BxHxWx1: jax.Array, train: bool = False):
    """Returns (attended trunk map, attention mask or None)."""
    return self.attend_map(self.trunk_map(x_BxHxWx1, train))

  def attend_map(self, f_BxHxWxC: jax.Array):
    """(attended map, mask or None) of a trunk map: the paper's Sec. 3.1."""
    if not self.attention:
      return f_BxHxWxC, None
    mask = self.spatial_attention(f_BxHxWxC)
    f = f_BxHxWxC
    return (f + mask * f if self.attention_shortcut else mask * f), mask

  def head(self, f_BxHxWxC: jax.Array, train: bool = False) -> jax.Array:
    """The embedding of a trunk map: attention, fc6/fc7 and coarse-fine fusion
    (the same on every trunk)."""
    f, _ = self.attend_map(f_BxHxWxC)
    h = nn.relu(self.fc6(f.reshape(f.shape[0], -1)))
    h = self.dropout(h, deterministic=not train)
    # Normalised (and then ranked and trained on) in float32.
    coarse = l2_normalize(precision.to_float32(self.fc7(h)))
    if not self.coarse_fine_fusion:
      return coarse
    fine = l2_normalize(jnp.sum(precision.to_float32(f), axis=(1, 2)))
    return jnp.concatenate([coarse, fine], axis=-1)

  def embed(self, x_BxHxWx1: jax.Array, train: bool = False) -> jax.Array:
    return self.head(self.trunk_map(x_BxHxWx1, train), train)

  def attention_mask(self, x_BxHxWx1: jax.Array) -> Optional[jax.Array]:
    return precision.to_float32(self.attend(x_BxHxWx1)[1])  # For pictures: float32.

  def __call__(self, x_BxHxWx1: jax.Array, train: bool = False) -> jax.Array:
    """Embeds x and touches the energy, so `init` creates every parameter."""
    e = self.embed(x_BxHxWx1, train)
    _ = self.energy_fn.pairwise(e, e)
    return e
