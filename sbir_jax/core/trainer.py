"""train_and_evaluate(config, workdir): the training loop, read top to bottom.

mesh -> task (config.task, core/task.py) -> its data -> state (new, or the
newest readable checkpoint of the workdir) -> jitted step over batches from
the task -> evaluators of config.evals at their cadence + checkpoints -> all
evaluators on the checkpoint selected by config.selection_metric ->
results.json and record.json. Randomness is fold_in(seed, step): resuming
replays exactly the steps an uninterrupted run would take.

The trainer imports no task: everything task-specific comes through the
contract of `core/task.py`.
"""
import json
import math
import time
from typing import Any, Optional

import jax
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metric_writers
from etils import epath

from sbir_jax.core import checkpointing
from sbir_jax.core import console
from sbir_jax.core import evaluation
from sbir_jax.core import optim
from sbir_jax.core import records
from sbir_jax.core import sharding
from sbir_jax.core import task as task_lib
from sbir_jax.core import warm_start
from sbir_jax.core.state import TrainState

# Steps timed (after the first, which compiles) before a CPU run says how long it takes.
_TIMING_STEPS = 5
# results.json entry: {step: training seconds up to that checkpoint, over resumes}.
_CLOCK_KEY = 'train_seconds_at_checkpoint'


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or Inf."""


def create_state(task: task_lib.Task, config: ml_collections.ConfigDict,
                 mesh: jax.sharding.Mesh) -> TrainState:
  """A fresh train state, created by a jitted init directly replicated on mesh."""
  tx = optim.make_optimizer(config.optimizer, config.num_train_steps,
                            tuple(config.get('frozen', ())))

  def init(rng):
    params, model_state = task.init_variables(rng)
    return TrainState.create(params, model_state, tx)

  rng = jax.random.key(config.seed)
  return jax.jit(init, out_shardings=sharding.replicated(mesh))(rng)


def make_train_step(task: task_lib.Task, config: ml_collections.ConfigDict,
                    mesh: jax.sharding.Mesh):
  """One jitted step: the task's loss and new model_state, the optimizer's
  update; state donated, batch sharded on `data`."""
  base_rng = jax.random.key(config.seed)

  def train_step(state: TrainState, batch: dict):
    rng = jax.random.fold_in(base_rng, state.step)
    (loss, (metrics, model_state)), grads = jax.value_and_grad(
        task.loss_fn, has_aux=True)(state.params, state.model_state, batch, rng)
    metrics = dict(metrics, loss=loss, grad_norm=optax.global_norm(grads))
    return state.apply_gradients(grads, model_state), metrics

  replicated = sharding.replicated(mesh)
  return jax.jit(train_step, donate_argnums=(0,),
                 in_shardings=(replicated, sharding.batch_sharding(mesh)),
                 out_shardings=(replicated, replicated))


def _check_finite(step: int, metrics: dict) -> None:
  loss = float(metrics['loss'])
  if not math.isfinite(loss):
    raise NonFiniteLossError(
        f'Loss is {loss} at step {step}. Lower config.optimizer.learning_rate, or '
        'set config.optimizer.grad_clip_norm (and check the input scaling of the '
        'config). Checkpoints written before this step are intact; rerun to resume.')


def write_results(workdir: str, update: dict) -> None:
  """Merges `update` into <workdir>/results.json (process 0 only)."""
  if jax.process_index() != 0:
    return
  path = epath.Path(workdir) / 'results.json'
  results = _read_results(workdir)
  results.update(update)
  tmp = path.with_suffix('.json.tmp')
  tmp.write_text(json.dumps(results, indent=2, sort_keys=True))
  tmp.replace(path)  # Atomic: a kill never leaves a half-written results file.


def _read_results(workdir: str) -> dict:
  path = epath.Path(workdir) / 'results.json'
  return json.loads(path.read_text()) if path.exists() else {}


def _seconds_before(workdir: str, start_step: int) -> Optional[float]:
  """Training seconds that earlier runs of this workdir spent to reach
  checkpoint `start_step` (0 for a fresh run; None where no run wrote it down,
  e.g. a checkpoint of an older version): a resumed run's record counts the
  whole training, not only its resumed part."""
  if not start_step:
    return 0.0
  return _read_results(workdir).get(_CLOCK_KEY, {}).get(str(start_step))


def build(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh
          ) -> tuple[task_lib.Task, TrainState, list]:
  """(task with its data loaded, fresh state, evaluators): what every mode needs."""
  task = task_lib.make_task(config, mesh)
  sizes = task.load_data()
  console.say('Data: ' + ', '.join(f'{k} {v}' for k, v in sizes.items()))
  state = create_state(task, config, mesh)
  return task, state, evaluation.make_evaluators(config, task)


def evaluate_checkpoint(state: TrainState, manager, which, evaluators
                        ) -> tuple[int, dict, TrainState]:
  """(step, metrics of every evaluator, restored state) of checkpoint `which`."""
  step = checkpointing.resolve_step(manager, which)
  state = checkpointing.restore(manager, step, state)
  return step, evaluation.run_all(evaluators, state.variables), state


def _say_config(config: ml_collections.ConfigDict, config_arg: Optional[str],
                workdir: str) -> None:
  console.say(f'Config {config_arg or config.task}: task {config.task}, '
              f'{config.num_train_steps} steps of batch {config.batch_size}, '
              f'{jax.device_count()} {jax.default_backend()} device(s); workdir {workdir} '
              f'(full config and log in {workdir}/log.txt)')
  logging.info('Config:\n%s', config)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       stop_after_steps: Optional[int] = None,
                       config_arg: Optional[str] = None) -> dict:
  """Trains (resuming from the newest readable checkpoint of the workdir),
  then evaluates the checkpoint selected on validation with every evaluator,
  and writes results.json and the run's record (`records.py`; `config_arg`
  names the config file and variants in it).

  `stop_after_steps` ends the loop early as a kill would (for tests).
  """
  workdir = str(workdir)
  # The code this process runs: a checkout during training must not relabel it.
  code = records.git_state()
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  writer = metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() > 0)
  _say_config(config, config_arg, workdir)

  # --- Mesh, task, data, state --------------------------------------------------
  mesh = sharding.make_mesh()
  sharding.check_batch_size(config.batch_size)
  task, state, evaluators = build(config, mesh)
  selection = evaluation.check_selection(config, evaluators)
  manager = checkpointing.make_manager(workdir, config.keep_latest)
  start_step, state = checkpointing.restore_newest_readable(manager, state)
  if start_step is not None:
    console.say(f'Resumed from step {start_step} in {workdir}')
  else:
    start_step = 0
    if config.get('init_from'):
      params, summary = warm_start.warm_start(state.params, config.init_from,
                                              sharding.replicated(mesh))
      state = state.replace(params=params)
      write_results(workdir, {'warm_start': summary})
  train_step = make_train_step(task, config, mesh)
  seconds_before = _seconds_before(workdir, start_step)
  clock = _read_results(workdir).get(_CLOCK_KEY, {})

  # --- Loop -------------------------------------------------------------------
  total = config.num_train_steps
  # Global batches put on the devices ahead of their step (sharding.py).
  batches = sharding.prefetch_to_mesh(task.train_batches(start_step), mesh,
                                      config.get('prefetch_batches', 2))
  start_time, pending, history = time.time(), None, []
  period_start, period_step = time.time(), start_step
  for step in range(start_step + 1, total + 1):
    if stop_after_steps is not None and step > start_step + stop_after_steps:
      manager.wait_until_finished()
      return {}
    batch = next(batches)
    state, metrics = train_step(state, batch)
    # Fetch step N-1's metrics after step N is dispatched: no device stall.
    if pending is not None:
      _check_finite(*pending)
      history.append(pending[1])
    pending = (step, metrics)
    if step == start_step + 1:
      jax.block_until_ready(metrics)  # Compiled: time the steps from here.
      period_start, period_step = time.time(), step
    elif step == start_step + 1 + _TIMING_STEPS:
      jax.block_until_ready(metrics)
      warning = console.cpu_budget_warning(
          total - start_step, _TIMING_STEPS / (time.time() - period_start), config_arg)
      if warning:
        console.say(warning)
    if step % config.log_every_steps == 0 or step == total:
      _check_finite(*pending)
      summary = {k: float(np.mean([float(m[k]) for m in history + [metrics]]))
                 for k in metrics}
      writer.write_scalars(step, summary)
      now = time.time()
      console.say(console.progress_line(step, total, summary,
                                        (step - period_step) / max(now - period_start, 1e-9)))
      period_start, period_step, history = now, step, []
    due = evaluation.run_all(evaluators, state.variables, step, last_step=total)
    if due:
      writer.write_scalars(step, due)
      console.say(console.metrics_line(f'step {step}', due))
    if step % config.checkpoint_every_steps == 0 or step == total:
      _check_finite(*pending)
      checkpointing.save(manager, state, due, selection)
      if seconds_before is not None:
        clock[str(step)] = seconds_before + time.time() - start_time
        write_results(workdir, {_CLOCK_KEY: clock})
  manager.wait_until_finished()
  train_seconds = time.time() - start_time

  # --- Every evaluator on the checkpoint selected on validation ----------------
  which = 'best' if selection else 'latest'
  step, metrics, selected = evaluate_checkpoint(state, manager, which, evaluators)
  results = {'selected_checkpoint': which, 'selected_step': step,
             'selection_metric': selection, 'train_seconds_this_run': train_seconds,
             # None: resumed from a checkpoint whose earlier time was not kept.
             'train_seconds': (None if seconds_before is None
                               else seconds_before + train_seconds),
             'trained_steps': total, 'devices': jax.device_count(),
             'platform': jax.default_backend(), **metrics}
  writer.write_scalars(step, metrics)
  writer.flush()
  write_results(workdir, {'train': results})
  if jax.process_index() == 0:
    records.write_record(workdir, records.make_record(config, config_arg, results, code))
    task.write_outputs(selected.variables, workdir)
  console.say(console.metrics_line(f'Selected checkpoint ({which}, step {step})', metrics))
  return results


def evaluate(config: ml_collections.ConfigDict, workdir: str,
             checkpoint: str = 'best') -> dict:
  """--mode=eval: restore a checkpoint and run every evaluator on it."""
  mesh = sharding.make_mesh()
  task, state, evaluators = build(config, mesh)
  manager = checkpointing.make_manager(workdir, config.keep_latest, read_only=True)
  step, metrics, restored = evaluate_checkpoint(state, manager, checkpoint, evaluators)
  results = {'checkpoint': checkpoint, 'step': step, **metrics}
  write_results(workdir, {f'eval_{checkpoint}': results})
  if jax.process_index() == 0:
    task.write_outputs(restored.variables, workdir)
  console.say(console.metrics_line(f'Eval of {checkpoint} checkpoint (step {step})',
                                   metrics))
  return results


def restore_for_mode(config: ml_collections.ConfigDict, workdir: str,
                     checkpoint: str = 'best') -> tuple[task_lib.Task, Any]:
  """(task with its data, restored state) for a task's extra modes (e.g.
  retrieve); a missing checkpoint fails first, naming the fix."""
  manager = checkpointing.make_manager(workdir, config.keep_latest, read_only=True)
  step = checkpointing.resolve_step(manager, checkpoint)  # Fails before any data loads.
  task, state, _ = build(config, sharding.make_mesh())
  return task, checkpointing.restore(manager, step, state)


def restore_model(config: ml_collections.ConfigDict, workdir: str,
                  checkpoint: str = 'best', mesh: Optional[jax.sharding.Mesh] = None
                  ) -> tuple[task_lib.Task, Any]:
  """(task without its data, restored state): the model alone, e.g. to
  extract features with a trained trunk (tasks/zs_sbir/features.py)."""
  manager = checkpointing.make_manager(workdir, config.keep_latest, read_only=True)
  step = checkpointing.resolve_step(manager, checkpoint)
  mesh = mesh or sharding.make_mesh()
  task = task_lib.make_task(config, mesh)
  state = create_state(task, config, mesh)
  return task, checkpointing.restore(manager, step, state)
