"""Orbax checkpoints of the train state: the latest (for resume) and the best
on validation (for evaluation), in one `CheckpointManager`."""
from typing import Any, Optional, Union

import flax.serialization
import jax
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

DEFAULT_SELECTION_METRIC = 'val_acc@1'


class CheckpointError(RuntimeError):
  """No usable checkpoint where one was asked for."""


def make_manager(workdir: str, keep_latest: int = 1, read_only: bool = False,
                 selection_metric: str = DEFAULT_SELECTION_METRIC
                 ) -> ocp.CheckpointManager:
  """Keeps the `keep_latest` newest steps and the best by `selection_metric`."""
  metric = lambda m: m[selection_metric]
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
  return ocp.CheckpointManager(directory, options=options)


def save(manager: ocp.CheckpointManager, state: Any,
         metrics: Optional[dict] = None) -> None:
  step = int(jax.device_get(state.step))
  manager.save(step, args=ocp.args.StandardSave(flax.serialization.to_state_dict(state)),
               metrics=metrics, force=True)


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
        f'match this config ({type(e).__name__}: {str(e)[:300]}). Delete that '
        'step folder to fall back to an earlier one, or evaluate with the '
        'config that trained it.') from e
  return flax.serialization.from_state_dict(target_state, restored)


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
