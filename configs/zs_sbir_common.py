"""Shared zero-shot SBIR (CVAE / CAAE, ECCV 2018) config; zs_sketchy.py and
zs_doodle.py call it and set their data.

Variants (comma-separated, applied in order): `cvae` (default), `caae`,
`regression` (the direct-regression baseline), `kmeans` (retrieve by k-means
centres of the decoded samples instead of their average), `tiny` (seconds-long
runs for tests; no accuracy claim). Defaults are the paper's or its released
code's values; comments mark our choices.
"""
import os

import ml_collections

from configs import fg_sbir_common

PAPER_FEATURE_DIM = 4096  # VGG-16 fc7, which the paper's widths are sized for.
MODELS = ('cvae', 'caae', 'regression')


def data_path(*parts: str) -> str:
  return os.path.join(fg_sbir_common.default_data_root(), *parts)


def scale_widths(config: ml_collections.ConfigDict, feature_dim: int) -> None:
  """Scales every hidden width by feature_dim / 4096 (the paper's fc7 size)."""
  r = feature_dim / PAPER_FEATURE_DIM
  m = config.model
  m.encoder_dims = tuple(int(round(w * r)) for w in (4096, 2048))
  m.latent_dim = int(round(1024 * r))
  m.decoder_dims = m.regulariser_dims = m.regression_dims = (int(round(2048 * r)),)


def base_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.task = 'zs_sbir'
  config.seed = 0
  config.features = dict(
      # efficientnet_lite0 | pixels | precomputed (see sbir_jax/features.py).
      extractor='efficientnet_lite0',
      dim=1280,  # Must match the features (VGG-16 fc7 would be 4096).
      image_size=224,
      batch_size=32,  # Images per extraction step (a multiple of the devices).
      weights='',  # '' = the EfficientNet-Lite0 of the pip package.
      cache_dir=os.path.join('workdir', 'feature_cache'),
      precomputed_dir='',  # For extractor=precomputed: <dir>/<set name>.npz.
  )
  config.model = dict(
      name='cvae',  # cvae | caae | regression
      encoder_dims=(4096, 2048),
      latent_dim=1024,
      decoder_dims=(2048,),
      regulariser_dims=(2048,),
      dropout_rate=0.3,
      disc_dims=(512, 512),  # CAAE discriminator; the paper is silent.
      adversarial_loss='minimax',  # The paper's log(1 - D(E(x))).
      regression_dims=(2048,),  # Direct regression baseline; our choice.
  )
  config.loss = dict(
      sketch_recon_weight=10.0,  # Paper's lambda (released code: 10).
      kl_weight=1.0,
      adversarial_weight=1.0,  # CAAE; the paper's objective has weight 1.
  )
  # Adam 2e-4, beta1 0.5 (released code) for the model and the discriminator.
  config.optimizer = dict(learning_rate=2e-4, b1=0.5, b2=0.999,
                          disc_learning_rate=2e-4)
  config.batch_size = 128
  config.num_train_steps = 12300  # ~25 epochs of the 62.8k seen Sketchy sketches.
  config.eval = dict(
      ks=(200,),
      retrieval='average',  # average | kmeans (see tasks/zs_sbir.py).
      num_samples=100,  # z samples per query (released code: 100).
      num_clusters=5,  # kmeans: the paper does not give K; our choice.
      kmeans_iterations=10,
      batch_size=64,  # Queries per step (a multiple of the devices).
      selection='mAP@all',  # Checkpoint selection on val, when there is val.
      baselines=('untrained', 'eszsl', 'sae'),
      eszsl_gamma=1.0, eszsl_lambda=1.0, sae_lambda=0.2,  # Our choices.
  )
  config.log_every_steps = 100
  config.checkpoint_every_steps = 1000
  config.keep_latest = 1
  return config


def apply_variant(config: ml_collections.ConfigDict, variant: str) -> bool:
  """Applies a shared variant; False if `variant` is not one."""
  if variant in MODELS:
    config.model.name = variant
  elif variant == 'kmeans':
    config.eval.retrieval = 'kmeans'
  elif variant == 'tiny':
    config.features.image_size = 64
    config.features.batch_size = 16
    config.model.encoder_dims = (32, 16)
    config.model.latent_dim = 8
    config.model.decoder_dims = config.model.regulariser_dims = (16,)
    config.model.regression_dims = (16,)
    config.model.disc_dims = (16,)
    config.batch_size = 16
    config.num_train_steps = 4
    config.checkpoint_every_steps = 2
    config.log_every_steps = 1
    config.eval.num_samples = 4
    config.eval.num_clusters = 2
    config.eval.kmeans_iterations = 3
    config.eval.batch_size = 16
    config.eval.ks = (20,)
    # ESZSL / SAE fit 1280-d maps in seconds each: tested on their own.
    config.eval.baselines = ('untrained',)
  else:
    return False
  return True
