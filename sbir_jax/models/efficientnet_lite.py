"""EfficientNet-Lite0/1/2 (Tan & Le, EfficientNet, ICML 2019; the "Lite" variants).

The Lite variants drop squeeze-excite, use ReLU6 instead of swish and keep the
stem and head fixed at 32 and 1280 channels. Lite0 is the B0 layout at
224x224: stem conv 3x3/2 -> 16 MBConv blocks (7 stages below) -> head conv
1x1 to 1280 -> global average pool -> fc 1000. Lite1 (240x240) and Lite2
(260x260) scale the widths and repeats of the stages between the first and
the last (`SCALING`), which keep theirs, as in TF's `efficientnet_lite_builder`
(fix_head_stem); the released weights' shapes confirm it. Padding is TensorFlow's SAME
(the ImageNet weights were trained in TF): `lax`'s 'SAME' is the same rule,
putting the odd extra row/column of a stride-2 conv at the bottom/right
(`depthwise.py`, which runs the depthwise convs fast on CPU, follows it too).

Submodule names mirror the EfficientNet-PyTorch state dict (`conv_stem`,
`bn0`, `blocks_N/{expand_conv,bn0,depthwise_conv,bn1,project_conv,bn2}`,
`conv_head`, `bn1`, `fc`) so `convert_efficientnet.py` maps them one to one.
"""
import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sbir_jax.models import depthwise

INPUT_SIZE = 224  # Lite0's; `input_size(variant)` for the others.
FEATURE_DIM = 1280

# (repeats, kernel, stride, expand_ratio, out_channels) per stage.
STAGES: Sequence[tuple[int, int, int, int, int]] = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
STEM_CHANNELS = 32
# variant -> (width coefficient, depth coefficient, ImageNet input size).
SCALING = {'lite0': (1.0, 1.0, 224), 'lite1': (1.0, 1.1, 240),
           'lite2': (1.1, 1.2, 260)}
_DEPTH_DIVISOR = 8

# torch BatchNorm momentum 0.01 (TF decay 0.99) is flax momentum 0.99.
_BN_MOMENTUM = 0.99
_BN_EPSILON = 1e-3


def _batch_norm(name: Optional[str] = None, dtype: Optional[Any] = None) -> nn.BatchNorm:
  # flax computes the statistics in float32 whatever `dtype` (the output's).
  return nn.BatchNorm(momentum=_BN_MOMENTUM, epsilon=_BN_EPSILON, dtype=dtype, name=name)


class PointwiseConv(nn.Module):
  """nn.Conv(features, (1, 1), use_bias=False) as a matrix product: same
  parameter name, shape and initialiser, and on CPU its gradient takes about
  half the time of XLA's convolution gradient (measured at 96x20x20x80->480)."""
  features: int
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        (1, 1, x_BxHxWxC.shape[-1], self.features))
    if self.dtype is not None:
      x_BxHxWxC = x_BxHxWxC.astype(self.dtype)
    return jnp.einsum('bhwc,cd->bhwd', x_BxHxWxC, kernel[0, 0].astype(x_BxHxWxC.dtype))


def _conv(features: int, kernel: int, stride: int = 1,
          name: Optional[str] = None, dtype: Optional[Any] = None) -> nn.Module:
  if kernel == 1 and stride == 1:
    return PointwiseConv(features, dtype=dtype, name=name)
  return nn.Conv(features, (kernel, kernel), strides=stride, padding='SAME',
                 use_bias=False, dtype=dtype, name=name)


def check_variant(variant: str) -> str:
  if variant not in SCALING:
    raise ValueError(f'EfficientNet variant {variant!r}; use one of {tuple(SCALING)}.')
  return variant


def input_size(variant: str) -> int:
  """The input side the variant's ImageNet weights were trained at."""
  return SCALING[check_variant(variant)][2]


def _round_filters(channels: int, width: float) -> int:
  """TF's rule: scale, round to a multiple of 8, never below 90% of scaled."""
  scaled = channels * width
  rounded = max(_DEPTH_DIVISOR, int(scaled + _DEPTH_DIVISOR / 2)
                // _DEPTH_DIVISOR * _DEPTH_DIVISOR)
  return rounded + _DEPTH_DIVISOR if rounded < 0.9 * scaled else rounded


def block_configs(variant: str = 'lite0') -> list[dict[str, int]]:
  """The MBConv blocks (16 in Lite0, 21 in Lite1/2): in/out channels, kernel,
  stride, expansion."""
  width, depth, _ = SCALING[check_variant(variant)]
  configs, channels = [], STEM_CHANNELS
  for stage, (repeats, kernel, stride, expand, out) in enumerate(STAGES):
    if 0 < stage < len(STAGES) - 1:  # Lite keeps the first and last stage.
      repeats = math.ceil(repeats * depth)
    out = _round_filters(out, width)
    for i in range(repeats):
      # Only the first block of a stage changes stride and width.
      configs.append(dict(in_channels=channels, out_channels=out, kernel=kernel,
                          stride=stride if i == 0 else 1, expand_ratio=expand))
      channels = out
  return configs


def preprocess(images_uint8: jax.Array,
               size: Optional[int] = INPUT_SIZE) -> jax.Array:
  """(B, H, W, 3) uint8 RGB -> float32 (x - 127) / 128 at size x size.

  This is the scaling the TF Lite models were trained with; ImageNet mean/std
  scaling scored a few points lower on real photos. Other sizes are resized
  (bilinear, antialiased); for exact control resize before calling this.
  size=None keeps the input size (the network is fully convolutional up to
  its global pooling, so smaller inputs trade accuracy for speed).
  """
  x = (jnp.asarray(images_uint8, jnp.float32) - 127.0) / 128.0
  b, h, w, c = x.shape
  if size is not None and (h, w) != (size, size):
    x = jax.image.resize(x, (b, size, size, c), 'bilinear')
  return x


class MBConvBlock(nn.Module):
  """Inverted residual: 1x1 expand, depthwise kxk, 1x1 project (no SE)."""
  in_channels: int
  out_channels: int
  kernel: int
  stride: int
  expand_ratio: int
  drop_connect_rate: float = 0.0
  frozen_batch_norm: bool = False  # See EfficientNetLite0.
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array, train: bool = False) -> jax.Array:
    x = x_BxHxWxC
    hidden = self.in_channels * self.expand_ratio
    running = self.frozen_batch_norm or not train
    if self.expand_ratio != 1:  # Block 0 has no expand conv (and no bn0).
      x = _conv(hidden, 1, name='expand_conv', dtype=self.dtype)(x)
      x = jax.nn.relu6(_batch_norm('bn0', self.dtype)(x, use_running_average=running))
    # Not nn.Conv(feature_group_count=hidden): see depthwise.py for why.
    x = depthwise.DepthwiseConv(hidden, self.kernel, self.stride,
                                name='depthwise_conv')(x)
    x = jax.nn.relu6(_batch_norm('bn1', self.dtype)(x, use_running_average=running))
    x = _conv(self.out_channels, 1, name='project_conv', dtype=self.dtype)(x)
    x = _batch_norm('bn2', self.dtype)(x, use_running_average=running)
    if self.stride == 1 and self.in_channels == self.out_channels:
      # Drop connect (stochastic depth): drop the whole branch per example.
      x = nn.Dropout(self.drop_connect_rate, broadcast_dims=(1, 2, 3))(
          x, deterministic=not train)
      x = x + x_BxHxWxC
    return x


def layer_names(variant: str = 'lite0') -> tuple[tuple[str, ...], ...]:
  """The network's layers in input order (stem, MBConv blocks, head), each as
  the submodule names it owns: the unit of `frozen_layers`."""
  blocks = ((f'blocks_{i}',) for i in range(len(block_configs(variant))))
  return (('conv_stem', 'bn0'), *blocks, ('conv_head', 'bn1'))


class EfficientNetLite(nn.Module):
  """EfficientNet-Lite `variant` on (B, s, s, 3) inputs from `preprocess`.

  `__call__` gives ImageNet logits; `feature_map` the (B, s/32, s/32, 1280)
  map after the head conv; `pooled_features` its (B, 1280) spatial mean. Call
  the latter two with `model.apply(variables, x, method=...)`. With
  train=True, BatchNorm uses batch statistics (pass mutable=['batch_stats'])
  and dropout / drop connect need a 'dropout' rng (set both rates to 0 to
  avoid that). frozen_batch_norm=True keeps BatchNorm on its running (e.g.
  ImageNet) statistics even with train=True: small fine-tuning batches give
  noisy statistics, and nothing then needs to be mutable. frozen_layers=N
  stops the gradient after the first N of `layer_names(variant)`, so those
  layers get no gradient and cost no backward pass.

  `stem` and `blocks_and_head` split `feature_map` so a model can give each
  input domain its own stem in front of shared blocks.
  """
  num_classes: int = 1000
  # The rates of the original Lite0 ImageNet training; only used with train.
  dropout_rate: float = 0.2
  drop_connect_rate: float = 0.2
  frozen_batch_norm: bool = False
  variant: str = 'lite0'
  frozen_layers: int = 0
  # Compute dtype (core/precision.py; None = float32); params and BatchNorm
  # statistics stay float32.
  dtype: Optional[Any] = None

  def setup(self):
    check_frozen_layers(self.frozen_layers, self.variant)
    self.conv_stem = _conv(STEM_CHANNELS, 3, 2, dtype=self.dtype)
    self.bn0 = _batch_norm(dtype=self.dtype)
    configs = block_configs(self.variant)
    # The drop-connect rate grows linearly with depth, as in EfficientNet.
    self.blocks = [
        MBConvBlock(**cfg, drop_connect_rate=self.drop_connect_rate * i / len(configs),
                    frozen_batch_norm=self.frozen_batch_norm, dtype=self.dtype)
        for i, cfg in enumerate(configs)]
    self.conv_head = _conv(FEATURE_DIM, 1, dtype=self.dtype)
    self.bn1 = _batch_norm(dtype=self.dtype)
    self.dropout = nn.Dropout(self.dropout_rate)
    self.fc = nn.Dense(self.num_classes, dtype=self.dtype)

  def _after_layer(self, layer: int, x: jax.Array) -> jax.Array:
    """x, cut off from the gradient if layer (1-based) is a frozen one."""
    return jax.lax.stop_gradient(x) if layer == self.frozen_layers else x

  def stem(self, x_BxHxWxC: jax.Array, train: bool = False) -> jax.Array:
    """(B, H/2, W/2, 32): stem conv, BN and ReLU6 (any input channels)."""
    running = self.frozen_batch_norm or not train
    return self._after_layer(1, jax.nn.relu6(self.bn0(self.conv_stem(x_BxHxWxC),
                                                      use_running_average=running)))

  def blocks_and_head(self, x_BxHxWx32: jax.Array, train: bool = False) -> jax.Array:
    """The MBConv blocks and the head conv, BN and ReLU6 on a stem output."""
    x = x_BxHxWx32
    for i, block in enumerate(self.blocks):
      x = self._after_layer(i + 2, block(x, train=train))
    running = self.frozen_batch_norm or not train
    x = jax.nn.relu6(self.bn1(self.conv_head(x), use_running_average=running))
    return self._after_layer(len(self.blocks) + 2, x)

  def feature_map(self, x_BxHxWx3: jax.Array, train: bool = False) -> jax.Array:
    """Final (B, h, w, 1280) feature map, after head conv, BN and ReLU6."""
    return self.blocks_and_head(self.stem(x_BxHxWx3, train), train)

  def pooled_features(self, x_BxHxWx3: jax.Array, train: bool = False) -> jax.Array:
    """(B, 1280) global average of `feature_map`: the backbone embedding."""
    return jnp.mean(self.feature_map(x_BxHxWx3, train), axis=(1, 2))

  def __call__(self, x_BxHxWx3: jax.Array, train: bool = False) -> jax.Array:
    """(B, num_classes) logits."""
    f_BxD = self.pooled_features(x_BxHxWx3, train)
    return self.fc(self.dropout(f_BxD, deterministic=not train))


EfficientNetLite0 = EfficientNetLite  # Its default variant; the historical name.


def check_frozen_layers(num_layers: int, variant: str = 'lite0',
                        option: str = 'frozen_layers') -> None:
  """Refuses a count outside 0..layers, naming the option that set it."""
  total = len(layer_names(variant))
  if not 0 <= num_layers <= total:
    raise ValueError(
        f'{option}={num_layers}; use 0 (train all) to {total} (all of '
        f'EfficientNet-{variant.capitalize()}: stem, {total - 2} blocks, head).')
