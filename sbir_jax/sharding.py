"""Device mesh and host->global batch helpers (one `data` axis, params replicated)."""
import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding

P = jax.sharding.PartitionSpec


def make_mesh() -> jax.sharding.Mesh:
  """All devices of all processes on one `data` axis."""
  return jax.make_mesh((jax.device_count(),), ('data',), axis_types=(AxisType.Auto,))


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P('data'))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_batch_size(global_batch_size: int, what: str = 'config.batch_size') -> None:
  devices = jax.device_count()
  if global_batch_size % devices:
    raise ValueError(
        f'{what}={global_batch_size} is not divisible by the {devices} devices; '
        f'use a multiple of {devices} (e.g. --config.batch_size='
        f'{max(devices, global_batch_size // devices * devices)}).')


def to_global(local_batch, mesh: jax.sharding.Mesh):
  """Host-local numpy batch (this process's rows) -> global sharded jax.Array."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
      local_batch)


def process_rows(num_rows: int) -> slice:
  """The rows of a global batch of `num_rows` that this process feeds."""
  per_process = num_rows // jax.process_count()
  start = jax.process_index() * per_process
  return slice(start, start + per_process)


def map_batches(fn, params, rows: np.ndarray, batch_size: int,
                mesh: jax.sharding.Mesh) -> np.ndarray:
  """fn(params, global batch) over `rows` in padded batches sharded on `data`.

  Every process passes the same `rows` and gets every output row back (fn's
  output must be replicated); padding rows are dropped.
  """
  check_batch_size(batch_size, 'config.eval.batch_size')
  n = len(rows)
  padded = np.concatenate([rows, np.zeros((-n % batch_size,) + rows.shape[1:], rows.dtype)])
  local = process_rows(batch_size)
  outputs = [np.asarray(fn(params, to_global(padded[start:start + batch_size][local], mesh)))
             for start in range(0, len(padded), batch_size)]
  return np.concatenate(outputs)[:n]
