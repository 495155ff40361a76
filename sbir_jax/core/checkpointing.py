"""Orbax checkpoints of the train state: the latest (for resume) and the best
on validation (for evaluation), in one `CheckpointManager`.

Each checkpoint carries its validation metrics and, under `selection`, the
value of the run's `config.selection_metric`, so that eval and warm start
pick the best step without knowing which metric a task selects on.
"""
import functools
from typing import Any, Optional, Union

import flax.serialization
import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

SELECTION_KEY = 'selection'
# Checkpoints written before the selection value was saved beside them.
_LEGACY_SELECTION_METRICS = ('val_acc@1', 'val_recall@1', 'val_mAP@all')


class CheckpointError(RuntimeError):
  """No usable checkpoint where one was asked for."""


def selection_value(metrics: dict) -> float:
  """The selection value saved with a checkpoint (older runs: their val metric)."""
  if SELECTION_KEY in metrics:
    return metrics[SELECTION_KEY]
  return next(metrics[k] for k in _LEGACY_SELECTION_METRICS if k in metrics)


class _Manager(ocp.CheckpointManager):
  """Opens a folder holding a checkpoint whose metrics file is damaged
  (Orbax reads every step's metrics when it opens): that step then has no
  metrics, so it is never the best, and restoring it raises CheckpointError."""

  def _get_metrics(self, step: int):
    try:
      return super()._get_metrics(step)
    except ValueError as e:  # json.JSONDecodeError, UnicodeDecodeError.
      logging.warning('Checkpoint %d in %s has an unreadable metrics file (%s: %s).',
                      step, self.directory, type(e).__name__, str(e)[:200])
      return None


@functools.cache  # Once per process (Orbax logs each registration).
def _save_cpu_arrays_without_replica_slices() -> None:
  """On CPU, Orbax's default replica-parallel save copies every replicated
  array as one slice per device, each in its own transfer: with 8 simulated
  devices a 435-array EfficientNet state (27 MB) took 27 s to save instead of
  0.9 s (Orbax already turns it off on GPU). One copy per array is enough."""
  if jax.default_backend() == 'cpu':
    ocp.type_handlers.register_type_handler(
        jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False),
        override=True)


def make_manager(workdir: str, keep_latest: int = 1, read_only: bool = False
                 ) -> ocp.CheckpointManager:
  """Keeps the `keep_latest` newest steps and the best by its selection value."""
  _save_cpu_arrays_without_replica_slices()
  metric = selection_value
  policy = pp.AnyPreservationPolicy([
      pp.LatestN(n=keep_latest),
      pp.BestN(get_metric_fn=metric, n=1, keep_checkpoints_without_metrics=False),
  ])
  # best_fn is what makes Orbax write the metrics beside each checkpoint.
  options = ocp.CheckpointManagerOptions(
      best_fn=metric, best_mode='max', preservation_policy=policy,
      create=not read_only, read_only=read_only)
  # Orbax needs an absolute path (a relative one fails in the async save).
  directory = epath.Path(workdir).absolute() / 'checkpoints'
  return _Manager(directory, options=options)


def save(manager: ocp.CheckpointManager, state: Any, metrics: Optional[dict] = None,
         selection_metric: str = '') -> None:
  """Saves `state` with its validation `metrics` and, when there is a
  selection metric, its value under `selection`."""
  step = int(jax.device_get(state.step))
  if step in manager.all_steps():  # Damaged, skipped by restore_newest_readable.
    _move_aside(manager, step)
  if metrics and selection_metric:
    metrics = {**metrics, SELECTION_KEY: metrics[selection_metric]}
  else:
    metrics = None  # The latest is selected: no best to keep.
  manager.save(step, args=ocp.args.StandardSave(flax.serialization.to_state_dict(state)),
               metrics=metrics, force=True)


def _move_aside(manager: ocp.CheckpointManager, step: int) -> None:
  """Renames the checkpoint `step` to `<step>.unreadable` (kept, not deleted;
  Orbax ignores the name) so that a resumed run can write that step anew."""
  path = epath.Path(manager.directory) / str(step)
  aside = epath.Path(manager.directory) / f'{step}.unreadable'
  if jax.process_index() == 0:
    path.rename(aside)
  multihost_utils.sync_global_devices(f'sbir_jax_move_aside_{step}')
  manager.reload()
  logging.warning('Checkpoint %d in %s was skipped on resume as unreadable; it is '
                  'kept as %s and step %d is written anew.', step, manager.directory,
                  aside, step)


def best_step(manager: ocp.CheckpointManager) -> Optional[int]:
  """The step with the best selection metric, or None if none has metrics."""
  if not any(manager.metrics(step) for step in manager.all_steps()):
    return None
  return manager.best_step()


def resolve_step(manager: ocp.CheckpointManager, which: Union[str, int]) -> int:
  """'latest', 'best' or a step number -> an existing step, or a clear error."""
  steps = manager.all_steps()
  where = manager.directory
  if not steps:
    raise CheckpointError(
        f'No checkpoint in {where}. Train first (--mode=train with the same '
        '--workdir), or point --workdir at a run that saved checkpoints.')
  if which == 'latest':
    return manager.latest_step()
  if which == 'best':
    step = best_step(manager)
    if step is None:
      raise CheckpointError(f'No checkpoint in {where} has validation metrics; '
                            f'use --checkpoint=latest or one of {steps}.')
    return step
  try:
    step = int(which)
  except ValueError:
    raise CheckpointError(f'--checkpoint={which!r}: use best, latest or a step '
                          f'number ({steps}).') from None
  if step not in steps:
    raise CheckpointError(f'No checkpoint at step {step} in {where}; it has {steps}.')
  return step


def restore(manager: ocp.CheckpointManager, step: int, target_state: Any) -> Any:
  """Restores step into the structure (and shardings) of `target_state`."""
  target = flax.serialization.to_state_dict(target_state)
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  try:
    restored = manager.restore(step, args=ocp.args.StandardRestore(abstract))
  except Exception as e:  # Orbax raises many types for damaged files.
    raise CheckpointError(
        f'Checkpoint {step} in {manager.directory} is unreadable or does not '
        f'match this config ({type(e).__name__}: {str(e)[:300]}).'
        + _older_layout_hint(manager, step, target) +
        ' Delete that step folder to fall back to an earlier one, or evaluate '
        'with the config that trained it.') from e
  return flax.serialization.from_state_dict(target_state, restored)


def _older_layout_hint(manager: ocp.CheckpointManager, step: int, target: dict) -> str:
  """Names the case of a checkpoint written before the state had `model_state`."""
  try:
    saved = ocp.StandardCheckpointer().metadata(
        epath.Path(manager.directory) / str(step) / 'default').item_metadata.tree
  except Exception:  # Unreadable metadata: the damage message says enough.
    return ''
  if 'model_state' in target and 'model_state' not in saved:
    return (' It was written by an older layout of the train state (before '
            'BatchNorm statistics and constants moved from params to '
            'model_state, sbir_jax/core/state.py): retrain with this version, or '
            'evaluate it with the sbir_jax commit that trained it (its '
            'record.json names the commit).')
  return ''


def restore_newest_readable(manager: ocp.CheckpointManager, target_state: Any
                            ) -> tuple[Optional[int], Any]:
  """(step, state) of the newest checkpoint that restores, for resuming.

  A damaged newer one is reported and skipped (nothing is deleted); (None,
  target_state) if there is no checkpoint at all. If none restores, the
  error of the newest is raised.
  """
  steps = sorted(manager.all_steps(), reverse=True)
  first_error = None
  for step in steps:
    try:
      return step, restore(manager, step, target_state)
    except CheckpointError as e:
      first_error = first_error or e
      logging.warning('Resume: %s Trying the previous checkpoint.', e)
  if first_error is not None:
    raise first_error
  return None, target_state


def load_on_one_device(workdir: str, step: Optional[int] = None) -> Any:
  """The saved state dict of `step` (default latest) on this process's first
  device, whatever topology saved it (e.g. a TPU pod checkpoint on a laptop)."""
  manager = make_manager(workdir, read_only=True)
  step = resolve_step(manager, 'latest' if step is None else step)
  path = epath.Path(manager.directory) / str(step) / 'default'
  checkpointer = ocp.StandardCheckpointer()
  tree = checkpointer.metadata(path).item_metadata.tree
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), tree)
  return checkpointer.restore(path, abstract)
