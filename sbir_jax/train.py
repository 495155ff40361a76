"""train_and_evaluate(config, workdir): the training loop, read top to bottom.

mesh -> task (data, model, loss) -> state (new, or resumed from the workdir)
-> jitted step -> periodic validation + checkpoint -> test on the best
checkpoint -> results.json. Randomness is fold_in(seed, step): resuming from
a checkpoint replays exactly the steps an uninterrupted run would take.
"""
import functools
import json
import math
import time
from typing import Any, Optional, Sequence

import flax.traverse_util
import flax.training.train_state
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metric_writers
from clu import periodic_actions
from etils import epath

from sbir_jax import checkpointing
from sbir_jax import records
from sbir_jax import sharding
from sbir_jax import tasks
from sbir_jax import warm_start

TrainState = flax.training.train_state.TrainState


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or Inf."""


def make_optimizer(opt: ml_collections.ConfigDict,
                   frozen: Sequence[str] = ()) -> optax.GradientTransformation:
  """The configured optimizer; parameters under a `frozen` prefix never move."""
  if opt.name == 'sgd':
    tx = optax.sgd(opt.learning_rate, momentum=opt.momentum or None)
  elif opt.name == 'adam':
    tx = optax.adam(opt.learning_rate)
  else:
    raise ValueError(f'config.optimizer.name={opt.name!r}; use sgd or adam.')
  chain = []
  if opt.grad_clip_norm:
    chain.append(optax.clip_by_global_norm(opt.grad_clip_norm))
  if opt.weight_decay:
    chain.append(optax.add_decayed_weights(opt.weight_decay))
  tx = optax.chain(*chain, tx)
  if not frozen:
    return tx
  return optax.multi_transform({'train': tx, 'frozen': optax.set_to_zero()},
                               functools.partial(freeze_labels, frozen=tuple(frozen)))


def freeze_labels(params: Any, frozen: Sequence[str]) -> Any:
  """'frozen' for every parameter under a prefix in `frozen` (e.g.
  'trunk/conv1'), else 'train'; a prefix that names nothing is an error."""
  names = flax.traverse_util.flatten_dict(params, sep='/')
  under = lambda name, prefix: name == prefix or name.startswith(prefix + '/')
  unknown = [p for p in frozen if not any(under(n, p) for n in names)]
  if unknown:
    modules = sorted({n.rsplit('/', 1)[0] for n in names})
    raise ValueError(f'config.frozen names {unknown}, which match no parameter; '
                     f'the model has {modules}.')
  labels = {n: 'frozen' if any(under(n, p) for p in frozen) else 'train'
            for n in names}
  return flax.traverse_util.unflatten_dict(labels, sep='/')


def create_state(task, config, mesh) -> TrainState:
  """A fresh train state, created by a jitted init directly replicated on mesh.

  A task with a `create_state(rng)` method builds its own state (e.g. several
  optimisers, BatchNorm statistics); it must have `step` and `params`.
  """
  if hasattr(task, 'create_state'):
    init = task.create_state
  else:
    tx = make_optimizer(config.optimizer, config.get('frozen', ()))

    def init(rng):
      params = task.init_params(rng)
      return TrainState.create(apply_fn=task.model.apply, params=params, tx=tx)

  rng = jax.random.key(config.seed)
  return jax.jit(init, out_shardings=sharding.replicated(mesh))(rng)


def make_train_step(task, config, mesh):
  """One jitted SGD step; state donated, batch sharded on `data`.

  A task with a `train_step(state, batch, rng) -> (state, metrics with 'loss')`
  method supplies its own update (e.g. CAAE's two optimisers).
  """
  base_rng = jax.random.key(config.seed)

  def train_step(state: TrainState, batch: dict):
    rng = jax.random.fold_in(base_rng, state.step)
    if hasattr(task, 'train_step'):
      return task.train_step(state, batch, rng)
    (loss, metrics), grads = jax.value_and_grad(task.loss_fn, has_aux=True)(
        state.params, batch, rng)
    metrics = dict(metrics, loss=loss, grad_norm=optax.global_norm(grads))
    return state.apply_gradients(grads=grads), metrics

  replicated = sharding.replicated(mesh)
  return jax.jit(train_step, donate_argnums=(0,),
                 in_shardings=(replicated, sharding.batch_sharding(mesh)),
                 out_shardings=(replicated, replicated))


def _check_finite(step: int, metrics: dict) -> None:
  loss = float(metrics['loss'])
  if not math.isfinite(loss):
    raise NonFiniteLossError(
        f'Loss is {loss} at step {step}. Lower config.optimizer.learning_rate '
        '(or set config.optimizer.grad_clip_norm, or config.input_scale=1/255). '
        'Checkpoints written before this step are intact; rerun to resume.')


def _write_results(workdir: str, update: dict) -> None:
  """Merges `update` into <workdir>/results.json (process 0 only)."""
  if jax.process_index() != 0:
    return
  path = epath.Path(workdir) / 'results.json'
  results = json.loads(path.read_text()) if path.exists() else {}
  results.update(update)
  tmp = path.with_suffix('.json.tmp')
  tmp.write_text(json.dumps(results, indent=2, sort_keys=True))
  tmp.replace(path)  # Atomic: a kill never leaves a half-written results file.


def _write_task_outputs(task, workdir: str) -> None:
  """Task-specific files (e.g. example pictures), for tasks that define them."""
  if jax.process_index() == 0 and hasattr(task, 'write_outputs'):
    task.write_outputs(workdir)


def evaluate_checkpoint(task, state, manager, which, splits) -> tuple[int, dict]:
  step = checkpointing.resolve_step(manager, which)
  state = checkpointing.restore(manager, step, state)
  metrics = {}
  for split in splits:
    metrics.update({f'{split}_{k}': v for k, v in
                    task.evaluate(state.params, split).items()})
  return step, metrics


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       stop_after_steps: Optional[int] = None,
                       config_arg: Optional[str] = None) -> dict:
  """Trains (resuming if the workdir has a checkpoint), then evaluates the
  checkpoint selected on validation on val and test, and writes results.json
  and the run's record (`records.py`; `config_arg` names the config file and
  variants in it).

  `stop_after_steps` ends the loop early as a kill would (for tests).
  """
  workdir = str(workdir)
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  writer = metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() > 0)

  # --- Mesh, task, state ------------------------------------------------------
  mesh = sharding.make_mesh()
  sharding.check_batch_size(config.batch_size)
  task = tasks.get_task(config, mesh)
  state = create_state(task, config, mesh)
  manager = checkpointing.make_manager(workdir, config.keep_latest,
                                       selection_metric=task.selection_metric)
  start_step = 0
  if manager.latest_step() is not None:
    state = checkpointing.restore(manager, manager.latest_step(), state)
    start_step = int(state.step)
    logging.info('Resumed from step %d in %s', start_step, workdir)
  elif config.get('init_from'):
    params, summary = warm_start.warm_start(state.params, config.init_from,
                                         sharding.replicated(mesh))
    state = state.replace(params=params)
    _write_results(workdir, {'warm_start': summary})
  train_step = make_train_step(task, config, mesh)
  has_val = 'val' in task.splits

  # --- Loop -------------------------------------------------------------------
  total = config.num_train_steps
  report = periodic_actions.ReportProgress(num_train_steps=total, writer=writer)
  batches = task.train_batches(start_step)
  start_time, pending, history = time.time(), None, []
  for step in range(start_step + 1, total + 1):
    if stop_after_steps is not None and step > start_step + stop_after_steps:
      manager.wait_until_finished()
      return {}
    batch = sharding.to_global(next(batches), mesh)
    state, metrics = train_step(state, batch)
    # Fetch step N-1's metrics after step N is dispatched: no device stall.
    if pending is not None:
      _check_finite(*pending)
      history.append(pending[1])
    pending = (step, metrics)
    report(step)
    if step % config.log_every_steps == 0 or step == total:
      _check_finite(*pending)
      summary = {k: float(np.mean([float(m[k]) for m in history + [metrics]]))
                 for k in metrics}
      writer.write_scalars(step, summary)
      history = []
    if step % config.checkpoint_every_steps == 0 or step == total:
      _check_finite(*pending)
      val = ({f'val_{k}': v for k, v in task.evaluate(state.params, 'val').items()}
             if has_val else {})
      writer.write_scalars(step, val)
      checkpointing.save(manager, state, val or None)
      logging.info('step %d: %s', step, val)
  manager.wait_until_finished()
  train_seconds = time.time() - start_time

  # --- Val and test of the checkpoint selected on validation -------------------
  which = 'best' if has_val else 'latest'
  step, metrics = evaluate_checkpoint(task, state, manager, which,
                                      ['val', 'test'] if has_val else ['test'])
  results = {'selected_checkpoint': which, 'selected_step': step,
             'train_seconds_this_run': train_seconds, 'trained_steps': total,
             'devices': jax.device_count(), 'platform': jax.default_backend(),
             **metrics}
  writer.write_scalars(step, metrics)
  writer.flush()
  _write_results(workdir, {'train': results})
  if jax.process_index() == 0:
    records.write_record(workdir, records.make_record(config, config_arg, results))
  _write_task_outputs(task, workdir)
  logging.info('Test on %s checkpoint (step %d): %s', which, step, metrics)
  return results


def evaluate(config: ml_collections.ConfigDict, workdir: str,
             checkpoint: str = 'best') -> dict:
  """--mode=eval: restore a checkpoint and evaluate it on val (if any) and test."""
  mesh = sharding.make_mesh()
  task = tasks.get_task(config, mesh)
  state = create_state(task, config, mesh)
  manager = checkpointing.make_manager(workdir, config.keep_latest, read_only=True,
                                       selection_metric=task.selection_metric)
  splits = [s for s in ('val', 'test') if s in task.splits]
  step, metrics = evaluate_checkpoint(task, state, manager, checkpoint, splits)
  results = {'checkpoint': checkpoint, 'step': step, **metrics}
  _write_results(workdir, {f'eval_{checkpoint}': results})
  _write_task_outputs(task, workdir)
  logging.info('Eval of %s checkpoint (step %d): %s', checkpoint, step, metrics)
  return results
