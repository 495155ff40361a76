"""TIRG: Text-Image Residual Gating (Vo et al., CVPR 2019; released code).

The composed query is a gated image feature plus a residual from the image
and text together:
  f = a0 * sigmoid(W_g [x; t]) * x + a1 * W_r2 relu(W_r1 [x; t]),  a = (1, 10)
with x the image feature (backbone, global average, Linear), t the LSTM text
feature, both branches starting with normalisation + ReLU of [x; t]. TIRG
uses BatchNorm there; we use LayerNorm (the trainer keeps no batch
statistics). Queries and targets are L2-normalised and scaled by a learnable
factor initialised to 4.0.
"""
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from sbir_jax.models import composed_encoders as enc
from sbir_jax.models import text


class Tirg(nn.Module):
  vocab_size: int
  dim: int = 512  # TIRG's embed_dim.
  backbone: str = 'small_cnn'
  cnn_width: int = 64
  # Compute dtype (core/precision.py; None = float32); params and the
  # normalised outputs stay float32.
  dtype: Optional[Any] = None

  def setup(self):
    self.image_encoder = enc.GlobalImageEncoder(self.dim, self.backbone, self.cnn_width,
                                                self.dtype)
    self.text_encoder = text.LstmTextEncoder(self.vocab_size, self.dim, self.dtype)
    self.gate_norm = nn.LayerNorm(dtype=self.dtype)
    self.gate_fc = nn.Dense(self.dim, dtype=self.dtype)
    self.residual_norm = nn.LayerNorm(dtype=self.dtype)
    self.residual_fc1 = nn.Dense(2 * self.dim, dtype=self.dtype)
    self.residual_fc2 = nn.Dense(self.dim, dtype=self.dtype)
    self.weights = self.param('weights', lambda _: jnp.asarray([1.0, 10.0]))
    self.normalize = enc.ScaledL2Normalize()

  def compose(self, images_BxHxWx3: jax.Array, tokens_BxL: jax.Array) -> jax.Array:
    x_BxD = self.image_encoder(images_BxHxWx3)
    t_BxD = self.text_encoder(tokens_BxL)
    xt = jnp.concatenate([x_BxD, t_BxD], axis=-1)
    gate_BxD = jax.nn.sigmoid(self.gate_fc(nn.relu(self.gate_norm(xt))))
    residual_BxD = self.residual_fc2(nn.relu(self.residual_fc1(
        nn.relu(self.residual_norm(xt)))))
    f_BxD = self.weights[0] * gate_BxD * x_BxD + self.weights[1] * residual_BxD
    return self.normalize(f_BxD)

  def embed_target(self, images_BxHxWx3: jax.Array) -> jax.Array:
    return self.normalize(self.image_encoder(images_BxHxWx3))

  def __call__(self, images, tokens, targets):
    return self.compose(images, tokens), self.embed_target(targets)
