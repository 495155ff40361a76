"""One module per task: model, loss, batches and evaluation from a config."""
import ml_collections


def get_task(config: ml_collections.ConfigDict, mesh):
  """The task object named by config.task."""
  if config.task == 'fg_sbir':
    from sbir_jax.tasks import fg_sbir
    return fg_sbir.FgSbirTask(config, mesh)
  raise ValueError(f'Unknown config.task {config.task!r}; known: fg_sbir.')
