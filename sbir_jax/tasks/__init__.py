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

import ml_collections


def get_task(config: ml_collections.ConfigDict, mesh):
  """The task object named by config.task."""
  if config.task == 'fg_sbir':
    from sbir_jax.tasks import fg_sbir
    return fg_sbir.FgSbirTask(config, mesh)
  raise ValueError(f'Unknown config.task {config.task!r}; known: fg_sbir.')
