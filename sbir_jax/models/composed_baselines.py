"""Baselines of the composed-query papers (TIRG's released code): the query is
the image feature alone, the text feature alone, or an MLP of their
concatenation. Same image and text encoders as TIRG; LayerNorm where TIRG's
concat composer has BatchNorm; its 0.1 dropout is left out.
"""
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from sbir_jax.models import composed_encoders as enc
from sbir_jax.models import text

KINDS = ('image_only', 'text_only', 'concat')


class ComposedBaseline(nn.Module):
  vocab_size: int
  kind: str = 'concat'
  dim: int = 512
  backbone: str = 'small_cnn'
  cnn_width: int = 64
  dtype: Optional[Any] = None  # Compute dtype (core/precision.py).

  def setup(self):
    if self.kind not in KINDS:
      raise ValueError(f'Baseline kind {self.kind!r}; use one of {KINDS}.')
    self.image_encoder = enc.GlobalImageEncoder(self.dim, self.backbone, self.cnn_width,
                                                self.dtype)
    self.text_encoder = text.LstmTextEncoder(self.vocab_size, self.dim, self.dtype)
    self.norm1 = nn.LayerNorm(dtype=self.dtype)
    self.fc1 = nn.Dense(2 * self.dim, dtype=self.dtype)
    self.norm2 = nn.LayerNorm(dtype=self.dtype)
    self.fc2 = nn.Dense(self.dim, dtype=self.dtype)
    self.normalize = enc.ScaledL2Normalize()

  def compose(self, images_BxHxWx3: jax.Array, tokens_BxL: jax.Array) -> jax.Array:
    if self.kind == 'image_only':
      return self.normalize(self.image_encoder(images_BxHxWx3))
    if self.kind == 'text_only':
      return self.normalize(self.text_encoder(tokens_BxL))
    xt = jnp.concatenate([self.image_encoder(images_BxHxWx3),
                          self.text_encoder(tokens_BxL)], axis=-1)
    h = self.fc1(nn.relu(self.norm1(xt)))
    return self.normalize(self.fc2(nn.relu(self.norm2(h))))

  def embed_target(self, images_BxHxWx3: jax.Array) -> jax.Array:
    return self.normalize(self.image_encoder(images_BxHxWx3))

  def __call__(self, images, tokens, targets):
    # Params of parts a kind does not use (e.g. the text encoder of
    # image_only) are never created.
    return self.compose(images, tokens), self.embed_target(targets)
