"""FG-SBIR with RGB photos: an ImageNet EfficientNet-Lite0 photo branch.

DSSA (Song et al., ICCV 2017) embeds sketches and photo *edge maps* with one
branch. Here photos enter as RGB through EfficientNet-Lite0 with its ImageNet
weights (`efficientnet_lite.py`, `convert_efficientnet.py`), in two designs:

- `TwoTowers` ('rgb_two_towers'): the sketch tower is DSSA itself (Sketch-a-Net
  + attention + coarse-fine fusion; same parameter names, so DSSA checkpoints
  and warm starts apply to it); the photo tower is EfficientNet-Lite0, pooled,
  then a linear projection to DSSA's embedding size, L2-normalised part by
  part like DSSA's output (coarse, fine) so both domains have the same norm.
- `SharedStem` ('rgb_shared_stem'): one EfficientNet-Lite0 for both domains;
  each domain has its own stem (conv_stem + bn0; the sketch stem takes the
  grey sketch), the blocks and head are shared, then one projection.

Both end in DSSA's learnable energy (`energies.py`), so the triplet losses,
ranking and HOLEF regulariser apply unchanged.

Variables: `convert_efficientnet.graft(..., PRETRAINED_MODULES)` puts the
ImageNet weights into a model's `backbone` and `sketch_stem` (the sketch stem
gets the RGB stem kernel summed over its input channels: its response to a
grey image equals the RGB stem's to that image repeated thrice). `freeze_backbone_layers` stops the
gradient of the backbone's first N layers.
"""
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sbir_jax.core import precision
from sbir_jax.models import dssa
from sbir_jax.models import efficientnet_lite
from sbir_jax.models import energies

DOMAINS = ('sketch', 'photo')
# The backbone's layers in input order (stem, 16 MBConv blocks, head), each
# as the parameter names it owns: the unit of `freeze_backbone_layers`.
BACKBONE_LAYERS = efficientnet_lite.layer_names('lite0')
# Top-level modules whose variables come from the ImageNet weights.
PRETRAINED_MODULES = ('backbone', 'sketch_stem')


def normalize_parts(x_BxD: jax.Array, part_dims: Sequence[int]) -> jax.Array:
  """L2-normalises each consecutive slice of sizes `part_dims` separately."""
  splits = np.cumsum(part_dims)[:-1].tolist()
  return jnp.concatenate([dssa.l2_normalize(p) for p in jnp.split(x_BxD, splits, axis=-1)],
                         axis=-1)


class TwoTowers(dssa.DSSA):
  """DSSA for sketches (inherited as is) + EfficientNet-Lite0 for RGB photos."""
  frozen_batch_norm: bool = True
  drop_connect_rate: float = 0.2

  def setup(self):
    super().setup()
    self.backbone = efficientnet_lite.EfficientNetLite0(
        drop_connect_rate=self.drop_connect_rate,
        frozen_batch_norm=self.frozen_batch_norm, dtype=self.dtype)
    self.projection = nn.Dense(self.output_dim, dtype=self.dtype)

  def embed_sketches(self, x_BxHxWx1: jax.Array, train: bool = False) -> jax.Array:
    return self.embed(x_BxHxWx1, train)

  def embed_photos(self, x_BxHxWx3: jax.Array, train: bool = False) -> jax.Array:
    f_BxF = self.backbone.pooled_features(x_BxHxWx3, train)
    return normalize_parts(precision.to_float32(self.projection(f_BxF)), self.part_dims)

  def embed_pair(self, sketch_BxHxWx1: jax.Array, photo_NxHxWx3: jax.Array,
                 train: bool = False) -> tuple[jax.Array, jax.Array]:
    return self.embed_sketches(sketch_BxHxWx1, train), self.embed_photos(photo_NxHxWx3, train)

  def __call__(self, sketch_BxHxWx1: jax.Array, photo_NxHxWx3: jax.Array,
               train: bool = False) -> tuple[jax.Array, jax.Array]:
    """Embeds both domains and touches the energy, so `init` makes every variable."""
    s, p = self.embed_pair(sketch_BxHxWx1, photo_NxHxWx3, train)
    _ = self.energy_fn.pairwise(s, p)
    return s, p


class SharedStem(dssa.EnergyModel):
  """One EfficientNet-Lite0 for both domains, with a stem per domain."""
  embed_dim: int = 256
  energy: str = 'holef'
  frozen_batch_norm: bool = True
  drop_connect_rate: float = 0.2
  dtype: Optional[Any] = None  # Compute dtype; params and embeddings float32.

  @property
  def output_dim(self) -> int:
    return self.embed_dim

  def setup(self):
    net = lambda: efficientnet_lite.EfficientNetLite0(
        drop_connect_rate=self.drop_connect_rate,
        frozen_batch_norm=self.frozen_batch_norm, dtype=self.dtype)
    self.backbone = net()  # Its own stem is the photo stem.
    # Only this network's `stem` is ever called, so only the stem's variables
    # (conv_stem, bn0) exist: the sketch stem, named like the photo stem.
    self.sketch_stem = net()
    self.projection = nn.Dense(self.embed_dim, dtype=self.dtype)
    self.energy_fn = energies.Energy(self.energy, self.embed_dim, name='energy')

  def _embed_stem_output(self, x_BxHxWx32: jax.Array, train: bool) -> jax.Array:
    f = jnp.mean(self.backbone.blocks_and_head(x_BxHxWx32, train), axis=(1, 2))
    return dssa.l2_normalize(precision.to_float32(self.projection(f)))

  def embed_sketches(self, x_BxHxWx1: jax.Array, train: bool = False) -> jax.Array:
    return self._embed_stem_output(self.sketch_stem.stem(x_BxHxWx1, train), train)

  def embed_photos(self, x_BxHxWx3: jax.Array, train: bool = False) -> jax.Array:
    return self._embed_stem_output(self.backbone.stem(x_BxHxWx3, train), train)

  def embed_pair(self, sketch_BxHxWx1: jax.Array, photo_NxHxWx3: jax.Array,
                 train: bool = False) -> tuple[jax.Array, jax.Array]:
    # One pass through the shared layers for both domains: a larger batch,
    # and with batch statistics both domains normalise alike.
    stems = jnp.concatenate([self.sketch_stem.stem(sketch_BxHxWx1, train),
                             self.backbone.stem(photo_NxHxWx3, train)])
    emb = self._embed_stem_output(stems, train)
    return emb[:len(sketch_BxHxWx1)], emb[len(sketch_BxHxWx1):]

  def __call__(self, sketch_BxHxWx1: jax.Array, photo_NxHxWx3: jax.Array,
               train: bool = False) -> tuple[jax.Array, jax.Array]:
    """Embeds both domains and touches the energy, so `init` makes every variable."""
    s, p = self.embed_pair(sketch_BxHxWx1, photo_NxHxWx3, train)
    _ = self.energy_fn.pairwise(s, p)
    return s, p


def check_domain(domain: str) -> str:
  if domain not in DOMAINS:
    raise ValueError(f'domain={domain!r}; use one of {DOMAINS}.')
  return domain


def embed_method(domain: str) -> str:
  """The model method that embeds `domain` ('sketch' or 'photo')."""
  return {'sketch': 'embed_sketches', 'photo': 'embed_photos'}[check_domain(domain)]


def frozen_prefixes(num_layers: int) -> list[str]:
  """'backbone/<name>' of the first `num_layers` backbone layers."""
  efficientnet_lite.check_frozen_layers(num_layers, 'lite0',
                                        'config.model.frozen_backbone_layers')
  return [f'backbone/{name}' for layer in BACKBONE_LAYERS[:num_layers] for name in layer]


def freeze_backbone_layers(params: dict, num_layers: int) -> dict:
  """`params` with the gradient of the backbone's first `num_layers` layers
  stopped (their updates are then exactly 0 with SGD or Adam)."""
  frozen = {p.split('/', 1)[1] for p in frozen_prefixes(num_layers)}
  if not frozen:
    return params
  backbone = {name: jax.lax.stop_gradient(v) if name in frozen else v
              for name, v in params['backbone'].items()}
  return {**params, 'backbone': backbone}
