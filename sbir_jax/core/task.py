"""The task contract: what a task package gives the trainer, and how it is found.

`config.task` names a module: a short name is a package of `sbir_jax.tasks`
(`fg_sbir` -> `sbir_jax.tasks.fg_sbir`), a dotted name any importable module
(`my_project.my_task`). The module's `Task` class is built as
`Task(config, mesh)` and must have every member of `Task` below: the trainer
checks them at start and names the one that is missing. Nothing is
registered anywhere: a new task is one package and one config.

The trainer's reading order is the contract's: load_data -> init_variables
-> (train_batches -> loss_fn)* -> predict_fns through the evaluators of
`config.evals` -> write_outputs.
"""
import importlib
from typing import Any, Callable, Iterator, Protocol, runtime_checkable

import jax
import ml_collections

# An evaluator calls predict_fns[name](variables, split) -> what its type reads.
PredictFn = Callable[[dict, str], Any]
# Extra --modes: name -> fn(restore, workdir, options from the flags), where
# restore() -> (task with its data, restored train state); a mode checks its
# options before it calls restore, so bad input fails before anything slow.
ModeFn = Callable[[Callable[[], tuple[Any, Any]], str, dict], Any]


@runtime_checkable
class Task(Protocol):
  """A task (see the module docstring). Members, in the order the trainer uses them."""

  def load_data(self) -> dict[str, int]:
    """Reads (or prepares, on process 0) the data; returns {split: examples}.
    Called once, before anything else that needs data."""

  def batch_spec(self) -> dict[str, jax.ShapeDtypeStruct]:
    """Shape and dtype of each key of one host-local training batch (the
    documentation of a batch; the contract test checks the first batch)."""

  def init_variables(self, rng: jax.Array) -> tuple[Any, Any]:
    """(params, model_state): trained parameters and every other variable
    collection (BatchNorm statistics, frozen constants; {} if none).
    Traced inside jax.jit."""

  def loss_fn(self, params: Any, model_state: Any, batch: dict, rng: jax.Array
              ) -> tuple[jax.Array, tuple[dict, Any]]:
    """(loss, (metrics, new model_state)) of one global batch; traced in jit."""

  def train_batches(self, start_step: int) -> Iterator[dict]:
    """Host-local numpy training batches from `start_step` on, keyed by
    (seed, step) so that a resumed run sees the batches of an uninterrupted one."""

  @property
  def predict_fns(self) -> dict[str, PredictFn]:
    """Named predictions the evaluators of `config.evals` read (`pred`)."""

  @property
  def splits(self) -> dict[str, Any]:
    """The loaded splits (after load_data)."""

  @property
  def modes(self) -> dict[str, ModeFn]:
    """Extra `--mode`s this task adds to train / eval ({} if none)."""

  def write_outputs(self, variables: dict, workdir: str) -> None:
    """Task-specific files after the final evaluation (e.g. example pictures)."""


CONTRACT = ('load_data', 'batch_spec', 'init_variables', 'loss_fn', 'train_batches',
            'predict_fns', 'splits', 'modes', 'write_outputs')


class TaskContractError(TypeError):
  """A task module does not provide what the trainer needs."""


def task_module_name(name: str) -> str:
  return name if '.' in name else f'sbir_jax.tasks.{name}'


def task_class(config: ml_collections.ConfigDict) -> type:
  """The `Task` class of the module `config.task` names, checked against the contract."""
  module_name = task_module_name(config.task)
  try:
    module = importlib.import_module(module_name)
  except ModuleNotFoundError as e:
    if e.name and module_name.startswith(e.name):
      raise TaskContractError(
          f'config.task={config.task!r}: no module {module_name}. Name a package '
          'of sbir_jax/tasks/ (fg_sbir, composed, zs_sbir, sketch_classification) '
          'or a dotted module path.') from e
    raise
  cls = getattr(module, 'Task', None)
  if cls is None:
    raise TaskContractError(f'{module_name} has no class `Task` (the contract of '
                            'sbir_jax/core/task.py).')
  missing = [m for m in CONTRACT if not hasattr(cls, m)]
  if missing:
    raise TaskContractError(f'{module_name}.Task lacks the contract member(s) '
                            f'{missing} (see sbir_jax/core/task.py).')
  return cls


def make_task(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> Task:
  return task_class(config)(config, mesh)
