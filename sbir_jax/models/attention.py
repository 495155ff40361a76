"""Multi-head attention and the transformer layers built on it (one copy).

Used by every composed-query model that attends: LBF's visual (VEP) and text
(TEP) self-attention and its cross-modal attention (Hosseinzadeh & Wang, CVPR
2020, section 3). Scaled dot-product attention (Vaswani et al. 2017), computed
for all heads and all batch rows in one einsum each; keys can be masked (text
padding). Layers are pre-LayerNorm residual blocks.
"""
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

_MASKED = -1e9  # Logit of a masked key: zero weight after the softmax.


class MultiHeadAttention(nn.Module):
  """Queries attend over keys/values; (B, Q, D) x (B, K, D) -> (B, Q, D)."""
  num_heads: int
  dim: int
  dtype: Optional[Any] = None  # Compute dtype (core/precision.py); params float32.

  @nn.compact
  def __call__(self, queries_BxQxD: jax.Array, context_BxKxD: jax.Array,
               key_mask_BxK: Optional[jax.Array] = None,
               return_weights: bool = False):
    if self.dim % self.num_heads:
      raise ValueError(f'Attention dim {self.dim} is not divisible by '
                       f'{self.num_heads} heads.')
    head_dim = self.dim // self.num_heads
    project = lambda name: nn.DenseGeneral((self.num_heads, head_dim), dtype=self.dtype,
                                           name=name)
    q_BxQxHxd = project('query')(queries_BxQxD)
    k_BxKxHxd = project('key')(context_BxKxD)
    v_BxKxHxd = project('value')(context_BxKxD)
    logits_BxHxQxK = jnp.einsum('bqhd,bkhd->bhqk', q_BxQxHxd, k_BxKxHxd)
    logits_BxHxQxK = logits_BxHxQxK / jnp.sqrt(float(head_dim))
    if key_mask_BxK is not None:
      logits_BxHxQxK = jnp.where(key_mask_BxK[:, None, None, :], logits_BxHxQxK,
                                 _MASKED)
    # The softmax in float32 (a no-op cast in a float32 run).
    weights_BxHxQxK = jax.nn.softmax(logits_BxHxQxK.astype(jnp.float32), axis=-1)
    weights_BxHxQxK = weights_BxHxQxK.astype(v_BxKxHxd.dtype)
    out_BxQxHxd = jnp.einsum('bhqk,bkhd->bqhd', weights_BxHxQxK, v_BxKxHxd)
    out_BxQxD = nn.DenseGeneral(self.dim, axis=(-2, -1), dtype=self.dtype,
                                name='out')(out_BxQxHxd)
    return (out_BxQxD, weights_BxHxQxK) if return_weights else out_BxQxD


class _FeedForward(nn.Module):
  dim: int
  hidden_multiplier: int = 2
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.gelu(nn.Dense(self.dim * self.hidden_multiplier, dtype=self.dtype,
                         name='fc1')(x))
    return nn.Dense(self.dim, dtype=self.dtype, name='fc2')(x)


class SelfAttentionLayer(nn.Module):
  """x + MHA(LN(x), LN(x)), then x + FFN(LN(x)) (one VEP or TEP layer)."""
  num_heads: int
  dim: int
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x_BxNxD: jax.Array, mask_BxN: Optional[jax.Array] = None
               ) -> jax.Array:
    y = nn.LayerNorm(dtype=self.dtype, name='ln_attention')(x_BxNxD)
    x_BxNxD = x_BxNxD + MultiHeadAttention(self.num_heads, self.dim, self.dtype,
                                           name='attention')(y, y, mask_BxN)
    y = nn.LayerNorm(dtype=self.dtype, name='ln_ffn')(x_BxNxD)
    return x_BxNxD + _FeedForward(self.dim, dtype=self.dtype, name='ffn')(y)


class CrossAttentionLayer(nn.Module):
  """x + MHA(LN(x), LN(context)), then x + FFN(LN(x)): x attends to context."""
  num_heads: int
  dim: int
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x_BxNxD: jax.Array, context_BxMxD: jax.Array,
               context_mask_BxM: Optional[jax.Array] = None) -> jax.Array:
    y = nn.LayerNorm(dtype=self.dtype, name='ln_query')(x_BxNxD)
    c = nn.LayerNorm(dtype=self.dtype, name='ln_context')(context_BxMxD)
    x_BxNxD = x_BxNxD + MultiHeadAttention(self.num_heads, self.dim, self.dtype,
                                           name='attention')(y, c, context_mask_BxM)
    y = nn.LayerNorm(dtype=self.dtype, name='ln_ffn')(x_BxNxD)
    return x_BxNxD + _FeedForward(self.dim, dtype=self.dtype, name='ffn')(y)


def masked_mean(x_BxNxD: jax.Array, mask_BxN: Optional[jax.Array] = None
                ) -> jax.Array:
  """Mean over the unmasked positions of axis 1."""
  if mask_BxN is None:
    return jnp.mean(x_BxNxD, axis=1)
  weights_BxNx1 = mask_BxN[..., None].astype(x_BxNxD.dtype)
  total_Bx1 = jnp.maximum(jnp.sum(weights_BxNx1, axis=1), 1.0)
  return jnp.sum(x_BxNxD * weights_BxNx1, axis=1) / total_Bx1
