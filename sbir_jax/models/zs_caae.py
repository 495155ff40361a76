"""CAAE for zero-shot SBIR (Yelamarthi et al., ECCV 2018, section 4.2).

The CVAE (`zs_cvae.py`) with its KL term replaced by an adversarial
discriminator D on the latent code (an adversarial autoencoder, Makhzani et
al. 2016). The released code has no CAAE; this follows the paper:

  autoencoder minimises  E[-log p(x_img | z, x_sketch)] + E[log(1 - D(E(x)))]
                         (+ the same 10 x sketch-reconstruction regulariser)
  discriminator maximises E_{z~N(0,I)}[log D(z)] + E[log(1 - D(E(x)))]

Choices where the paper is silent (config fields):
- The encoder is the CVAE's trunk with a deterministic linear z head (no
  tanh: a tanh-bounded code could never match N(0, I), whose samples often
  exceed 1 in magnitude, and D would win trivially).
- D: z -> 512 ReLU -> 512 ReLU -> 1 logit (`disc_dims`).
- `adversarial_loss='minimax'` is the paper's log(1 - D(E(x))) term;
  'non_saturating' uses -log D(E(x)) instead (Goodfellow et al.'s remedy for
  weak early gradients).
The discriminator has its own parameters and optimizer group (tasks/zs_sbir/task.py).
"""
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp
import optax

from sbir_jax.core import precision

from sbir_jax.models import zs_cvae


class DeterministicEncoder(nn.Module):
  """E(x_img, x_sketch) -> z, the CVAE trunk with a linear z head."""
  hidden_dims: Sequence[int] = (4096, 2048)
  latent_dim: int = 1024
  dropout_rate: float = 0.3
  dtype: Optional[Any] = None  # Compute dtype; z comes out float32.

  @nn.compact
  def __call__(self, img_BxD, sketch_BxD, train: bool):
    h = zs_cvae.encoder_trunk(img_BxD, sketch_BxD, self.hidden_dims,
                              self.dropout_rate, train, self.dtype)
    return precision.to_float32(nn.Dense(self.latent_dim, dtype=self.dtype, name='z')(h))


class Discriminator(nn.Module):
  """D(z): logit of "z was drawn from the prior N(0, I)"."""
  hidden_dims: Sequence[int] = (512, 512)
  dtype: Optional[Any] = None  # Compute dtype; the logits are float32.

  @nn.compact
  def __call__(self, z_BxZ):
    return zs_cvae.Mlp(self.hidden_dims, 1, relu_output=False,
                       dtype=self.dtype)(z_BxZ)[:, 0]


class CAAE(nn.Module):
  """Autoencoder part of the CAAE (the discriminator is a separate module)."""
  feature_dim: int
  encoder_dims: Sequence[int] = (4096, 2048)
  latent_dim: int = 1024
  decoder_dims: Sequence[int] = (2048,)
  regulariser_dims: Sequence[int] = (2048,)
  dropout_rate: float = 0.3
  dtype: Optional[Any] = None  # As zs_cvae.CVAE's.

  def setup(self):
    self.encoder = DeterministicEncoder(self.encoder_dims, self.latent_dim,
                                        self.dropout_rate, self.dtype)
    self.decoder = zs_cvae.Mlp(self.decoder_dims, self.feature_dim, dtype=self.dtype)
    self.regulariser = zs_cvae.Mlp(self.regulariser_dims, self.feature_dim,
                                   dtype=self.dtype)

  def decode(self, z_BxZ, sketch_BxD):
    return self.decoder(jnp.concatenate([z_BxZ, sketch_BxD], axis=-1))

  def __call__(self, img_BxD, sketch_BxD, train: bool = True):
    z = self.encoder(img_BxD, sketch_BxD, train)
    img_hat = self.decode(z, sketch_BxD)
    return dict(z=z, img_hat=img_hat, sketch_hat=self.regulariser(img_hat))


def generator_adversarial_loss(fake_logits_B, kind: str = 'minimax'):
  """(B,) the autoencoder's adversarial term, to minimise."""
  if kind == 'minimax':  # log(1 - D(E(x))) = -softplus(logit).
    return -optax.sigmoid_binary_cross_entropy(fake_logits_B, jnp.zeros_like(fake_logits_B))
  if kind == 'non_saturating':  # -log D(E(x)).
    return optax.sigmoid_binary_cross_entropy(fake_logits_B, jnp.ones_like(fake_logits_B))
  raise ValueError(f'config.model.adversarial_loss={kind!r}; use minimax or '
                   'non_saturating.')


def caae_loss(out: dict, img_BxD, sketch_BxD, fake_logits_B,
              sketch_recon_weight: float = 10.0, adversarial_weight: float = 1.0,
              kind: str = 'minimax'):
  """The autoencoder's loss, mean over the batch, and its parts: recon + 10 *
  sketch recon + the adversarial term on D's logits for E(x) (`fake_logits_B`).

  The generator loss of the task's `loss_fn` (tasks/zs_sbir/task.py).
  """
  total, parts = zs_cvae.reconstruction_loss(out, img_BxD, sketch_BxD,
                                             sketch_recon_weight)
  adv = generator_adversarial_loss(fake_logits_B, kind)
  total = total + adversarial_weight * adv
  return jnp.mean(total), dict(parts, adversarial=jnp.mean(adv))


def discriminator_loss(real_logits_B, fake_logits_B):
  """-[log D(z_prior) + log(1 - D(E(x)))], mean over the batch, and D's accuracy."""
  loss = (optax.sigmoid_binary_cross_entropy(real_logits_B, jnp.ones_like(real_logits_B))
          + optax.sigmoid_binary_cross_entropy(fake_logits_B, jnp.zeros_like(fake_logits_B)))
  acc = 0.5 * (jnp.mean(real_logits_B > 0) + jnp.mean(fake_logits_B < 0))
  return jnp.mean(loss), acc
