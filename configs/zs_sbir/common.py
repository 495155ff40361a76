"""Shared zero-shot SBIR (CVAE / CAAE, ECCV 2018) config; configs/zs_sketchy.py
and configs/zs_doodle.py call it and set their data.

`VARIANTS` (comma-separated, applied in order; configs/variants.py): `cvae`
(default), `caae`, `regression` (the direct-regression baseline), `kmeans`
(retrieve by k-means centres of the decoded samples instead of their
average), `tiny` (seconds-long runs for tests; no accuracy claim). Defaults
are the paper's or its released code's values; comments mark our choices.
"""
import os

import ml_collections

from configs import base
from configs import variants

PAPER_FEATURE_DIM = 4096  # VGG-16 fc7, which the paper's widths are sized for.
MODELS = ('cvae', 'caae', 'regression')
# Seen classes held out as pseudo-unseen validation classes (our choice: 16
# of 104), and the seed that picks them; configs/sketchy_seen.py shares them.
VAL_CLASS_FRACTION = 0.15
VAL_SPLIT_SEED = 0


def data_path(*parts: str) -> str:
  return os.path.join(base.default_data_root(), *parts)


def scale_widths(config: ml_collections.ConfigDict, feature_dim: int) -> None:
  """Scales every hidden width by feature_dim / 4096 (the paper's fc7 size)."""
  r = feature_dim / PAPER_FEATURE_DIM
  m = config.model
  m.encoder_dims = tuple(int(round(w * r)) for w in (4096, 2048))
  m.latent_dim = int(round(1024 * r))
  m.decoder_dims = m.regulariser_dims = m.regression_dims = (int(round(2048 * r)),)


def base_config(eval_splits: tuple[str, ...]) -> ml_collections.ConfigDict:
  """The shared config; `eval_splits` are the dataset's evaluated splits
  ('val', when there is one, selects the checkpoint)."""
  # 12,300 steps: ~25 epochs of the 62.8k seen Sketchy sketches.
  config = base.base_config('zs_sbir', batch_size=128, num_train_steps=12300)
  config.features = dict(
      # efficientnet_lite0 | pixels | precomputed (see sbir_jax/features.py).
      extractor='efficientnet_lite0',
      dim=1280,  # Must match the features (VGG-16 fc7 would be 4096).
      image_size=224,
      batch_size=32,  # Images per extraction step (a multiple of the devices).
      weights='',  # '' = the EfficientNet-Lite0 of the pip package.
      cache_dir=os.path.join('workdir', 'feature_cache'),
      precomputed_dir='',  # For extractor=precomputed: <dir>/<set name>.npz.
      # For extractor=fg_checkpoint: a trained FG-SBIR model (config and
      # workdir) embeds the images, e.g. the seen-class trunk of
      # configs/sketchy_seen.py (variant `finetuned_trunk` of zs_sketchy.py).
      fg_config='',
      fg_workdir='',
      fg_checkpoint='best',
      # True: every feature scaled to norm sqrt(dim) before the models see it
      # (our option; the paper feeds raw fc7). Retrieval is by cosine either way.
      unit_norm=False,
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
  # Adam 2e-4, beta1 0.5 (released code) for the model and the discriminator
  # (the `caae` variant's parameter group follows learning_rate).
  config.optimizer.update(name='adam', learning_rate=2e-4, b1=0.5, b2=0.999)
  config.eval = dict(
      ks=(200,),
      retrieval='average',  # average | kmeans (see tasks/zs_sbir.py).
      num_samples=100,  # z samples per query (released code: 100).
      num_clusters=5,  # kmeans: the paper does not give K; our choice.
      kmeans_iterations=10,
      batch_size=64,  # Queries per step (a multiple of the devices).
      baselines=('untrained', 'eszsl', 'sae'),
      eszsl_gamma=1.0, eszsl_lambda=1.0, sae_lambda=0.2,  # Our choices.
      # True: choose those on the val split instead (tasks/zs_sbir/baselines.py).
      tune_baselines=False,
      # `retrieval_unseen.png`: the first test sketch of each class, top K.
      picture_classes=(),
      picture_top_k=6,
  )
  base.add_evals(config, type='precision_map', pred='scores', splits=eval_splits)
  # The parameter-free baselines of config.eval.baselines (none: nothing to
  # do), once per split on the selected checkpoint, as <split>_<metric>.
  for split in eval_splits:
    base.add_eval(config, f'{split}_baselines', type='sbir_jax.tasks.zs_sbir.baselines',
                  pred='features', split=split, every_steps=0, prefix=split)
  # Checkpoint selection on val, when there is val (else the latest).
  config.selection_metric = 'val_mAP@all' if 'val' in eval_splits else ''
  return config


def _caae(config: ml_collections.ConfigDict) -> None:
  config.model.name = 'caae'
  # The discriminator's parameters at the model's rate (the paper's equal
  # rates): a reference, so setting optimizer.learning_rate sets both, in
  # whichever order the variants come. One-way: setting the group's own rate
  # leaves the model's alone.
  config.optimizer.groups.discriminator = dict(
      prefix='discriminator',
      learning_rate=config.optimizer.get_oneway_ref('learning_rate'))


def _also_kmeans(config: ml_collections.ConfigDict) -> None:
  """The selected checkpoint is also evaluated with k-means retrieval
  (<split>_kmeans_<metric>): one trained CVAE / CAAE gives both rows."""
  for split in ('val', 'test'):
    if split in config.evals:
      base.add_eval(config, f'{split}_kmeans', type=config.evals[split].type,
                    pred='scores_kmeans', split=split, every_steps=0,
                    prefix=f'{split}_kmeans')


VARIANTS: dict[str, variants.Spec] = {
    'cvae': {'model.name': 'cvae'},
    'also_kmeans': _also_kmeans,
    'caae': _caae,
    'regression': {'model.name': 'regression'},
    'kmeans': {'eval.retrieval': 'kmeans'},
    # Seconds-long runs for tests; no accuracy claim. The dataset files add
    # their data caps.
    'tiny': {
        'features.image_size': 64,
        'features.batch_size': 16,
        'model.encoder_dims': (32, 16),
        'model.latent_dim': 8,
        'model.decoder_dims': (16,),
        'model.regulariser_dims': (16,),
        'model.regression_dims': (16,),
        'model.disc_dims': (16,),
        'batch_size': 16,
        **base.TINY_TRAINER,
        'eval.num_samples': 4,
        'eval.num_clusters': 2,
        'eval.kmeans_iterations': 3,
        'eval.batch_size': 16,
        'eval.ks': (20,),
        # ESZSL / SAE fit 1280-d maps in seconds each: tested on their own.
        'eval.baselines': ('untrained',),
    },
}
