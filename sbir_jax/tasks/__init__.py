"""One module per task: model, loss, batches and evaluation from a config.

A task object, built as `Task(config, mesh)`, gives the trainer
(`sbir_jax/train.py`):
  model                      a linen module (its `apply` goes into TrainState)
  selection_metric           e.g. 'val_acc@1': checkpoint selection, higher wins
  splits                     dict with 'train', 'test' and optionally 'val'
  init_params(rng)           -> params
  loss_fn(params, batch, rng) -> (loss, metrics dict); traced inside jit
  train_batches(start_step)  -> iterator of host-local numpy batches
  evaluate(params, split)    -> {metric name: float} (host side)
Optionally, for a state other than flax's TrainState (BatchNorm statistics,
several optimisers), both used by the trainer when present:
  create_state(rng)          -> a pytree with `step` and `params` (replaces
                                init_params + the trainer's optimizer)
  train_step(state, batch, rng) -> (state, metrics with 'loss'); traced in jit
"""
import ml_collections


def get_task(config: ml_collections.ConfigDict, mesh):
  """The task object named by config.task."""
  if config.task == 'fg_sbir':
    from sbir_jax.tasks import fg_sbir
    return fg_sbir.FgSbirTask(config, mesh)
  if config.task == 'composed':
    from sbir_jax.tasks import composed
    return composed.ComposedTask(config, mesh)
  if config.task == 'zs_sbir':
    from sbir_jax.tasks import zs_sbir
    return zs_sbir.ZsSbirTask(config, mesh)
  if config.task == 'sketch_classification':
    from sbir_jax.tasks import sketch_classification
    return sketch_classification.SketchClassificationTask(config, mesh)
  raise ValueError(f'Unknown config.task {config.task!r}; known: fg_sbir, composed, '
                   'zs_sbir, sketch_classification.')
