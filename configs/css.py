"""Composed query retrieval on CSS-style data (generated; not the CSS release).

`--config=configs/css.py:lbf_big,cpu`: comma-separated variants, in order.
Models: lbf_big (default), lbf_small, tirg, image_only, text_only, concat.
Losses: soft_triplet (default), batch_classification. Sizes: cpu, tiny.
Data: holdout (test texts focus on (shape, colour) pairs never seen in train).
LBF entities: object_boxes (the scenes' object boxes instead of grid cells).
Defaults follow the papers where they say; comments mark our choices.
"""
import ml_collections

_MODEL_VARIANTS = {
    'lbf_big': dict(name='lbf', size='big'),  # K = 36 entities (6x6 cells).
    'lbf_small': dict(name='lbf', size='small'),  # K = 18 entities (3x6 cells).
    'tirg': dict(name='tirg'),
    'image_only': dict(name='image_only'),
    'text_only': dict(name='text_only'),
    'concat': dict(name='concat'),
}


def _apply_variant(config: ml_collections.ConfigDict, variant: str) -> None:
  if variant in _MODEL_VARIANTS:
    config.model.update(_MODEL_VARIANTS[variant])
  elif variant in ('soft_triplet', 'batch_classification'):
    config.loss.name = variant
  elif variant == 'object_boxes':
    # LBF entities = the scene's objects (given boxes), not grid cells.
    config.model.entities_from = 'boxes'
  elif variant == 'efficientnet':
    # ImageNet EfficientNet-Lite0 feature map (64x64 inputs resized to 224).
    config.model.backbone = 'efficientnet_lite0'
  elif variant == 'holdout':
    config.data.generator.holdout_combinations = 'circle:red,triangle:blue,rectangle:green'
  elif variant == 'cpu':
    # Each model trains and tests in a few minutes on 2 CPU cores: smaller
    # data, widths and step count; Adam; the batch classification loss (the
    # LBF paper's second loss). With Adam, TIRG's soft triplet loss collapsed
    # here (TIRG: loss 1.37 at step 50, then log 2 = every feature equal by
    # step 100), because its negatives include same-side features; select
    # it back with `soft_triplet` after `cpu`.
    config.loss.name = 'batch_classification'
    g = config.data.generator
    g.train_base_scenes, g.train_mods, g.train_pairs_per_mod = 500, 600, 8
    g.test_base_scenes, g.test_mods, g.test_pairs_per_mod = 150, 150, 6
    config.data.image_size = 64
    config.model.dim = 128
    config.model.cnn_width = 64
    config.batch_size = 32
    config.num_train_steps = 1500
    config.optimizer.name = 'adam'
    config.optimizer.learning_rate = 1e-3
    config.optimizer.momentum = 0.0
    config.optimizer.weight_decay = 0.0
    # A decaying rate for this short budget (our choice, for every model):
    # with a constant 1e-3 the last steps stayed noisy (LBF big: train loss
    # 0.040 at step 1000, 0.084 at 1500) and LBF big reached test R@1 63.0
    # against TIRG 69.8; with this schedule 75.0 against 71.0 (diagnostic
    # runs, old validation split).
    config.optimizer.schedule = 'cosine'
    config.optimizer.warmup_steps = 75
    config.checkpoint_every_steps = 500
    config.log_every_steps = 50
  elif variant == 'tiny':
    # For tests: seconds per run, no claim about accuracy.
    g = config.data.generator
    g.train_base_scenes, g.train_mods, g.train_pairs_per_mod = 60, 12, 3
    g.test_base_scenes, g.test_mods, g.test_pairs_per_mod = 40, 6, 2
    config.data.val_fraction = 0.25
    config.data.image_size = 64
    config.model.dim = 16
    config.model.num_heads = 2
    config.model.vep_layers = config.model.tep_layers = 1
    config.model.cnn_width = 16
    config.batch_size = 8
    config.num_train_steps = 4
    config.optimizer.name = 'adam'
    config.optimizer.learning_rate = 1e-3
    config.optimizer.weight_decay = 0.0
    config.checkpoint_every_steps = 2
    config.log_every_steps = 1
    config.eval.batch_size = 16
  else:
    raise ValueError(
        f'Unknown config variant {variant!r}. Known: {", ".join(_MODEL_VARIANTS)}, '
        'soft_triplet, batch_classification, object_boxes, efficientnet, holdout, '
        'cpu, tiny.')


def get_config(arg=None, source: str = 'css_style', manual_dir: str = '',
               image_size: int = 64) -> ml_collections.ConfigDict:
  """configs/fashion200k.py and configs/mit_states.py call this with their
  source, data folder and image size; variants apply after those."""
  config = ml_collections.ConfigDict()
  config.task = 'composed'
  config.seed = 0

  config.data = dict(
      source=source,  # css_style, fashion200k or mit_states.
      # css_style: a folder holding css_style.npy or TIRG's CSS .npy (+
      # optional images/); '' = generate CSS-style data with `generator`
      # (cached by its settings). Others: the release root.
      manual_dir=manual_dir,
      # None = TFDS default (~/tensorflow_datasets); generated files go there too.
      tfds_data_dir=ml_collections.config_dict.placeholder(str),
      generator=dict(
          seed=0,  # Train and test streams are spawned from it (disjoint).
          # Our sizes. Few base scenes per pair, so each source image is the
          # reference of several texts (~12 train, ~10 test uses), as in CSS:
          # its other modified versions then sit in the gallery beside the
          # target, and the image alone cannot find the target (with ~1 use
          # per source, image-only beat TIRG on val: 86.7 vs 79.0 R@1).
          train_base_scenes=1000, train_mods=1200, train_pairs_per_mod=10,
          test_base_scenes=250, test_mods=300, test_pairs_per_mod=8,
          holdout_combinations='',  # 'shape:colour,...' kept out of train.
      ),
      # Held out of training to select the checkpoint (our choice; the papers
      # do not say): `sources` = reference images with all their pairs, new
      # images as at test; `texts` = whole texts on seen images, which
      # overrated LBF (val R@1 86 vs test 63 in the first table).
      val_holdout='sources',
      val_fraction=0.1,
      val_split_seed=0,
      # LBF with model.entities_from = boxes / region_features: an .npz of
      # per-image boxes (+ features), layout in sbir_jax/datasets/regions.py.
      # '' with boxes on CSS-style data: each scene's object boxes.
      regions_file='',
      max_text_length=16,
      image_size=image_size,  # Fashion200k / MIT-States images resized to it.
  )
  config.model = dict(
      name='lbf', size='big',
      dim=512,  # TIRG's embed_dim; LBF's d is not in our notes (our choice).
      num_heads=8, vep_layers=2, tep_layers=2, cross_layers=1,  # Our choice.
      backbone='small_cnn',  # Or efficientnet_lite0 (ImageNet).
      # LBF's entities: grid (cells of the backbone map), boxes (the map
      # pooled in given boxes), region_features (precomputed, as the paper's
      # Faster R-CNN regions). Our default is grid: no detector offline.
      entities_from='grid',
      cnn_width=64,
  )
  config.loss = dict(
      name='soft_triplet',
      num_negatives=3,  # TIRG: 3 random negatives per anchor.
  )
  config.optimizer = dict(
      # TIRG: SGD, lr 1e-2, momentum 0.9, weight decay 1e-6, batch 32.
      name='sgd', learning_rate=1e-2, momentum=0.9, weight_decay=1e-6,
      grad_clip_norm=0.0,
      # TIRG keeps the rate constant on CSS. `cosine`: linear warm-up over
      # warmup_steps, then cosine decay to 0 at num_train_steps.
      schedule='constant', warmup_steps=0)
  config.batch_size = 32
  config.num_train_steps = 50000  # Our choice for an accelerator run.
  config.eval = dict(ks=(1, 5, 10, 50), batch_size=64, num_examples=6)
  config.log_every_steps = 100
  config.checkpoint_every_steps = 2000
  config.keep_latest = 1

  for variant in filter(None, (arg or '').split(',')):
    _apply_variant(config, variant.strip())
  config.lock()
  return config
