"""Tasks and batches without data, for measuring steps (benchmarks) and
comparing compute dtypes (tests): the real task's model, loss and jitted
train step, fed generated inputs of the real shapes.

Speed does not depend on the pixel values or on the weights, and a compute
dtype comparison needs inputs of the real shapes and scales only, so: images
are random uint8, texts random token ids, ZS-SBIR features random
non-negative vectors, and EfficientNet layers start from a random
initialisation instead of the ImageNet weights (no weight file needed).
Nothing here is ever reported as an accuracy.
"""
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sbir_jax.core import sharding
from sbir_jax.core import task as task_lib
from sbir_jax.core import trainer

# Vocabulary size of the composed models when no data gives one (our choice;
# it sizes only the word embedding).
VOCAB_SIZE = 1000


def _random_init(task, model_inputs: Callable[[], tuple]) -> Callable:
  """init_variables from the model's own random initialisation: (params,
  every other collection, e.g. BatchNorm statistics)."""
  def init_variables(rng):
    variables = dict(task.model.init(rng, *model_inputs()))
    return variables.pop('params'), variables
  return init_variables


def make_task(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
              vocab_size: int = VOCAB_SIZE) -> task_lib.Task:
  """The task of `config`, with what would read data replaced."""
  task = task_lib.make_task(config, mesh)
  if config.task == 'fg_sbir':
    if task._imagenet_modules:  # No ImageNet weight file: a random start.
      size = config.data.crop_size
      inputs = lambda: (jnp.zeros((1, size, size, 1)),) + (
          (jnp.zeros((1, size, size, 3)),) if task.rgb else ())
      task.init_variables = _random_init(task, inputs)
  elif config.task == 'composed':
    from sbir_jax.tasks.composed import task as composed  # pylint: disable=g-import-not-at-top
    if config.model.get('entities_from', 'grid') != 'grid':
      raise ValueError('Generated composed batches hold images: use entities_from=grid.')
    task.__dict__['model'] = composed.build_model(config, vocab_size)  # No vocabulary file.
    side = config.data.image_size
    task.init_variables = _random_init(task, lambda: (
        jnp.zeros((2, side, side, 3), jnp.uint8),
        jnp.ones((2, config.data.max_text_length), jnp.int32),
        jnp.zeros((2, side, side, 3), jnp.uint8)))
  elif config.task != 'zs_sbir':  # zs_sbir builds its models from config alone.
    raise ValueError(f'No generated inputs for task {config.task!r}.')
  return task


def random_batch(config: ml_collections.ConfigDict, rows: int, seed: int = 0,
                 vocab_size: int = VOCAB_SIZE) -> dict[str, np.ndarray]:
  """A host batch of `rows` generated examples with the task's batch keys."""
  rng = np.random.default_rng(seed)
  if config.task == 'fg_sbir':
    size = config.data.crop_size
    photo_channels = 3 if config.data.get('photo_input') == 'rgb' else 1
    batch = {k: rng.integers(0, 256, (rows, size, size, c), dtype=np.uint8)
             for k, c in (('sketch', 1), ('positive', photo_channels),
                          ('negative', photo_channels))}
    # Distinct photo ids, so every in-batch negative is a valid one.
    ids = rng.permutation(4 * rows).astype(np.int32)
    batch.update(sketch_id=ids[:rows], match_id=ids[:rows], positive_id=ids[:rows],
                 negative_id=ids[rows:2 * rows])
    return batch
  if config.task == 'composed':
    side, length = config.data.image_size, config.data.max_text_length
    image = lambda: rng.integers(0, 256, (rows, side, side, 3), dtype=np.uint8)
    tokens = rng.integers(2, vocab_size, (rows, length), dtype=np.int32)
    words = rng.integers(1, length + 1, rows)  # Then padding (id 0).
    tokens[np.arange(length)[None, :] >= words[:, None]] = 0
    return {'reference': image(), 'tokens': tokens, 'target': image()}
  if config.task == 'zs_sbir':
    dim = config.features.dim
    feature = lambda: np.abs(rng.normal(size=(rows, dim))).astype(np.float32)
    return {'sketch': feature(), 'photo': feature()}
  raise ValueError(f'No generated inputs for task {config.task!r}.')


def train_setup(config: ml_collections.ConfigDict, seed: int = 0,
                mesh: Optional[jax.sharding.Mesh] = None
                ) -> tuple[Any, Callable, Any, jax.sharding.Mesh]:
  """(fresh train state, jitted train step, one global batch, mesh) of the
  real trainer for `config` on generated inputs; on all devices unless
  `mesh` says otherwise."""
  mesh = mesh or sharding.make_mesh()
  task = make_task(config, mesh)
  state = trainer.create_state(task, config, mesh)
  step_fn = trainer.make_train_step(task, config, mesh)
  rows = config.batch_size // jax.process_count()
  batch = sharding.to_global(random_batch(config, rows, seed), mesh)
  return state, step_fn, batch, mesh


def compiled_flops(compiled) -> Optional[float]:
  """FLOPs of one call by XLA's cost analysis of a compiled function (one
  device's program), or None where the backend gives none."""
  try:
    analysis = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except  (backends without one)
    return None
  if isinstance(analysis, (list, tuple)):  # Older JAX: one dict per program.
    analysis = analysis[0] if analysis else None
  flops = (analysis or {}).get('flops')
  return float(flops) if flops and flops > 0 else None


def time_train_step(state: Any, step_fn: Callable, batch: Any, steps: int
                    ) -> tuple[dict, Any]:
  """({compile_seconds, seconds_per_step, flops_per_step}, state after): the
  step compiled ahead of time, one warm-up call, then `steps` timed calls
  (steady state; the step donates its state, so the state is threaded)."""
  start = time.perf_counter()
  compiled = step_fn.lower(state, batch).compile()
  compile_seconds = time.perf_counter() - start
  state, metrics = compiled(state, batch)  # Warm-up.
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  seconds = (time.perf_counter() - start) / steps
  return {'compile_seconds': round(compile_seconds, 2),
          'seconds_per_step': round(seconds, 5),
          'flops_per_step': compiled_flops(compiled)}, state
