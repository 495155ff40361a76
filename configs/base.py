"""What every config family shares: the trainer's keys, one optimizer schema,
the evaluator declarations and the data root.

A family starts from `base_config(task, ...)`, overrides what its paper says,
declares its evaluators with `add_evals` and its variants as a table applied
by configs/variants.py.
"""
import os
from typing import Any

import ml_collections

DATA_ENV = 'SBIR_JAX_DATA'

# Trainer size of every family's `tiny` variant (tests: seconds per run, no
# claim about accuracy); batch sizes stay per family.
TINY_TRAINER = dict(num_train_steps=4, checkpoint_every_steps=2, log_every_steps=1)


def default_data_root() -> str:
  """The folder holding qmul_v1/ etc.; set SBIR_JAX_DATA to move it."""
  return os.environ.get(DATA_ENV, os.path.join('..', 'shared', 'data'))


def default_manual_dir(name: str) -> str:
  """<data root>/<name> if present, else '' (the TFDS builder downloads)."""
  path = os.path.join(default_data_root(), name)
  return path if os.path.isdir(path) else ''


def base_config(task: str, *, batch_size: int,
                num_train_steps: int) -> ml_collections.ConfigDict:
  """The trainer defaults; `task` names the sbir_jax.tasks module.

  batch_size and num_train_steps have no sensible shared value, so every
  family passes its own.
  """
  config = ml_collections.ConfigDict()
  config.task = task
  config.seed = 0
  config.batch_size = batch_size
  config.num_train_steps = num_train_steps
  config.log_every_steps = 100
  # Activations and matmuls: 'float32', or 'bfloat16' (TPU, recent GPUs) with
  # parameters, optimizer state, energies and losses kept float32
  # (sbir_jax/core/precision.py lists what each backend allows).
  config.compute_dtype = 'float32'
  # Global batches put on the devices ahead of the step that uses them (the
  # transfer overlaps the running step; 0 = put each batch just in time).
  config.prefetch_batches = 2
  config.checkpoint_every_steps = 1000  # Also when `val` evals run (add_evals).
  config.keep_latest = 1
  # Warm start: a workdir (best checkpoint) or <workdir>:<step>; only the
  # parameters with the same name and shape are copied ('' = from scratch).
  config.init_from = ''
  config.frozen = ()  # Parameter prefixes that never update, e.g. 'trunk/conv1'.
  config.optimizer = dict(
      name='sgd',  # sgd | adam | adamw (decay decoupled from Adam's statistics)
      learning_rate=1e-3,
      momentum=0.0,  # sgd only.
      b1=0.9, b2=0.999,  # adam, adamw.
      weight_decay=0.0,  # sgd, adam: L2 in the gradient; adamw: decoupled.
      grad_clip_norm=0.0,  # 0 = no clipping.
      # constant | cosine: linear warm-up over warmup_steps, then cosine
      # decay to 0 at num_train_steps.
      schedule='constant',
      warmup_steps=0,
      # Named parameter groups: <name> = dict(prefix='<param path prefix>',
      # <any optimizer field above to override, e.g. learning_rate>).
      groups={},
  )
  # <name> = dict(type=<sbir_jax.evaluators module, or a dotted path>,
  # pred=<the task's predict fn>, split=<split>, every_steps=<int>): every
  # every_steps steps during training, or 0 = only on the selected checkpoint
  # at the end. An optional `prefix` names the metrics <prefix>_<metric>
  # (default: the eval's name).
  config.evals = {}
  # '<eval prefix>_<metric>' chosen on (higher is better), e.g. 'val_acc@1';
  # '' = the latest checkpoint (a dataset without a val split).
  config.selection_metric = ''
  return config


# `type` shadows the builtin on purpose: it is the config key's name.
def add_eval(config: ml_collections.ConfigDict, name: str, *, type: str,
             pred: str, split: str, every_steps: Any, **extra: Any) -> None:
  """Declares config.evals[name]; `every_steps` may be a FieldReference."""
  config.evals[name] = dict(type=type, pred=pred, split=split,
                            every_steps=every_steps, **extra)


def add_evals(config: ml_collections.ConfigDict, *, type: str, pred: str,
              splits: tuple[str, ...] = ('val', 'test'), **extra: Any) -> None:
  """Declares one eval per split, named after it: `val` at every checkpoint
  (a reference, so --config.checkpoint_every_steps=50 moves it too), any
  other split only on the selected checkpoint."""
  for split in splits:
    # One-way: --config.evals.val.every_steps=N leaves the checkpoints alone
    # (a get_ref reference would set checkpoint_every_steps as well). Such
    # references do not pickle; config.to_dict() resolves them.
    every = config.get_oneway_ref('checkpoint_every_steps') if split == 'val' else 0
    add_eval(config, split, type=type, pred=pred, split=split,
             every_steps=every, **extra)


def cpu_trainer(*, learning_rate: float, batch_size: int, num_train_steps: int,
                checkpoint_every_steps: int) -> dict[str, Any]:
  """Overrides shared by the `cpu` variants (a 2-core CPU run in minutes):
  Adam at `learning_rate`, a log line every 50 steps, the family's sizes."""
  return {
      'optimizer.name': 'adam',
      'optimizer.learning_rate': learning_rate,
      'batch_size': batch_size,
      'num_train_steps': num_train_steps,
      'checkpoint_every_steps': checkpoint_every_steps,
      'log_every_steps': 50,
  }
