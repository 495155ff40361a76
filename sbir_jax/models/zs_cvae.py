"""CVAE for zero-shot SBIR (Yelamarthi et al., ECCV 2018, section 4.1).

A conditional VAE over photo features x_img given sketch features x_sketch:

  encoder q(z | x_img, x_sketch): concat -> 4096 ReLU -> BN -> dropout 0.3
          -> 2048 ReLU -> BN -> mu, logvar (1024 each, tanh)
  decoder p(x_img | z, x_sketch): concat(z, x_sketch) -> 2048 ReLU -> photo
          feature (ReLU: fc7 features are non-negative)
  sketch-reconstruction regulariser: x_img_hat -> 2048 ReLU -> sketch feature
          (ReLU), weighted 10 (the paper's lambda; the released code's 10)

Loss per example (released code): mean_d (x_img_hat - x_img)^2
+ KL(q || N(0, I)) summed over z + 10 * mean_d (x_sketch_hat - x_sketch)^2,
averaged over the batch. z = mu + exp(logvar / 2) * eps with one eps per
example (the released code draws one per batch; the paper's model does not).

At test time z ~ N(0, I) and the decoder alone turns a sketch into photo
features (`decode`). The widths are config fields with the paper's values
(for 4096-d VGG fc7); the output widths follow the feature dimension.
"""
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sbir_jax.core import precision

# Keras BatchNormalization defaults (the released code's framework).
BATCH_NORM = dict(momentum=0.99, epsilon=1e-3)


def encoder_trunk(img_BxD: jax.Array, sketch_BxD: jax.Array,
                  hidden_dims: Sequence[int], dropout_rate: float,
                  train: bool, dtype: Optional[Any] = None) -> jax.Array:
  """concat -> (Dense, ReLU, BN) per width, dropout after the first block.

  Called inside a compact method, so its layers belong to (and are named in)
  the calling encoder.
  """
  h = jnp.concatenate([img_BxD, sketch_BxD], axis=-1)
  for i, width in enumerate(hidden_dims):
    h = nn.relu(nn.Dense(width, dtype=dtype)(h))
    h = nn.BatchNorm(use_running_average=not train, dtype=dtype, **BATCH_NORM)(h)
    if i == 0:  # Dropout after the first block only, as in the paper.
      h = nn.Dropout(dropout_rate, deterministic=not train)(h)
  return h


class Encoder(nn.Module):
  """q(z | x_img, x_sketch) -> (mu, logvar), both tanh-bounded."""
  hidden_dims: Sequence[int] = (4096, 2048)
  latent_dim: int = 1024
  dropout_rate: float = 0.3
  dtype: Optional[Any] = None  # Compute dtype; mu and logvar come out float32.

  @nn.compact
  def __call__(self, img_BxD, sketch_BxD, train: bool):
    h = encoder_trunk(img_BxD, sketch_BxD, self.hidden_dims, self.dropout_rate, train,
                      self.dtype)
    head = lambda name: precision.to_float32(
        nn.Dense(self.latent_dim, dtype=self.dtype, name=name)(h))
    return jnp.tanh(head('mu')), jnp.tanh(head('logvar'))


class Mlp(nn.Module):
  """Dense+ReLU hidden layers, then a ReLU output of `out_dim`."""
  hidden_dims: Sequence[int]
  out_dim: int
  relu_output: bool = True
  dtype: Optional[Any] = None  # Compute dtype; the output is float32.

  @nn.compact
  def __call__(self, x):
    for width in self.hidden_dims:
      x = nn.relu(nn.Dense(width, dtype=self.dtype)(x))
    x = precision.to_float32(nn.Dense(self.out_dim, dtype=self.dtype)(x))
    return nn.relu(x) if self.relu_output else x


def kl_to_standard_normal(mu_BxZ, logvar_BxZ):
  """(B,) KL(N(mu, exp(logvar)) || N(0, I)), summed over z."""
  return 0.5 * jnp.sum(jnp.exp(logvar_BxZ) + mu_BxZ ** 2 - 1.0 - logvar_BxZ, axis=-1)


def mse(a_BxD, b_BxD):
  """(B,) mean squared error over features."""
  return jnp.mean((a_BxD - b_BxD) ** 2, axis=-1)


class CVAE(nn.Module):
  """The ZS-SBIR CVAE; `__call__` returns everything the losses need."""
  feature_dim: int  # Photo and sketch features share it (same extractor).
  encoder_dims: Sequence[int] = (4096, 2048)
  latent_dim: int = 1024
  decoder_dims: Sequence[int] = (2048,)
  regulariser_dims: Sequence[int] = (2048,)
  dropout_rate: float = 0.3
  # Compute dtype (core/precision.py; None = float32); params, z and every
  # output the losses read stay float32.
  dtype: Optional[Any] = None

  def setup(self):
    self.encoder = Encoder(self.encoder_dims, self.latent_dim, self.dropout_rate,
                           self.dtype)
    self.decoder = Mlp(self.decoder_dims, self.feature_dim, dtype=self.dtype)
    self.regulariser = Mlp(self.regulariser_dims, self.feature_dim, dtype=self.dtype)

  def decode(self, z_BxZ, sketch_BxD):
    """p(x_img | z, x_sketch): photo features from noise and a sketch."""
    return self.decoder(jnp.concatenate([z_BxZ, sketch_BxD], axis=-1))

  def __call__(self, img_BxD, sketch_BxD, train: bool = True):
    mu, logvar = self.encoder(img_BxD, sketch_BxD, train)
    eps = jax.random.normal(self.make_rng('noise'), mu.shape)  # Per example.
    z = mu + jnp.exp(logvar / 2) * eps
    img_hat = self.decode(z, sketch_BxD)
    sketch_hat = self.regulariser(img_hat)
    return dict(z=z, mu=mu, logvar=logvar, img_hat=img_hat, sketch_hat=sketch_hat)


def reconstruction_loss(out: dict, img_BxD, sketch_BxD, sketch_recon_weight: float):
  """(B,) photo-feature recon + weight * sketch recon, and their batch means.

  The part of the objective the CVAE and the CAAE (`zs_caae.caae_loss`) share.
  """
  recon = mse(out['img_hat'], img_BxD)
  sketch = mse(out['sketch_hat'], sketch_BxD)
  total = recon + sketch_recon_weight * sketch
  return total, {'recon': jnp.mean(recon), 'sketch_recon': jnp.mean(sketch)}


def cvae_loss(out: dict, img_BxD, sketch_BxD, sketch_recon_weight: float = 10.0,
              kl_weight: float = 1.0):
  """Mean over the batch of recon + 10 * sketch recon + KL, and its parts.

  The loss of the task's `loss_fn` (tasks/zs_sbir/task.py).
  """
  total, parts = reconstruction_loss(out, img_BxD, sketch_BxD, sketch_recon_weight)
  kl = kl_to_standard_normal(out['mu'], out['logvar'])
  total = total + kl_weight * kl
  return jnp.mean(total), dict(parts, kl=jnp.mean(kl))
