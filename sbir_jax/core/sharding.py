"""Device mesh and host->global batch helpers (one `data` axis, params replicated)."""
import collections
from typing import Any, Callable, Iterable, Iterator

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


def prefetch_to_mesh(local_batches: Iterator[Any], mesh: jax.sharding.Mesh,
                     size: int = 2) -> Iterator[Any]:
  """Global batches (`to_global`) of `local_batches`, `size` of them already
  on the devices ahead of the one handed out.

  Transfers are asynchronous: the batch of step N+1 (and N+2, ...) is copied
  while step N runs, so the device never waits on the host->device copy
  (the tf.data work runs ahead in its own threads). size=0 puts each batch
  when it is asked for. The values are those of `to_global`, so a run is the
  same with or without prefetching.
  """
  if size <= 0:
    for batch in local_batches:
      yield to_global(batch, mesh)
    return
  queue = collections.deque()
  for batch in local_batches:
    queue.append(to_global(batch, mesh))
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


def process_rows(num_rows: int) -> slice:
  """The rows of a global batch of `num_rows` that this process feeds."""
  per_process = num_rows // jax.process_count()
  start = jax.process_index() * per_process
  return slice(start, start + per_process)


def row_chunks(rows: Any, batch_size: int) -> Iterator[Any]:
  """Consecutive slices of at most `batch_size` rows of a pytree of arrays."""
  n = len(jax.tree.leaves(rows)[0])
  for start in range(0, n, batch_size):
    yield jax.tree.map(lambda a: a[start:start + batch_size], rows)


def padded_global_batches(chunks: Iterable[Any], batch_size: int,
                          mesh: jax.sharding.Mesh,
                          what: str = 'config.eval.batch_size'
                          ) -> Iterator[tuple[int, Any]]:
  """(rows used, global batch sharded on `data`) for each host chunk.

  Every process passes the same chunks (pytrees of at most `batch_size` rows,
  e.g. `row_chunks(...)` or an image reader); each chunk is padded to
  `batch_size` by repeating its first row (valid input for any model, e.g.
  region masks) and each process feeds its own rows. The one batching helper
  of every embedding and evaluation loop.
  """
  check_batch_size(batch_size, what)
  local = process_rows(batch_size)
  for chunk in chunks:
    n = len(jax.tree.leaves(chunk)[0])
    padded = jax.tree.map(
        lambda a: np.concatenate([a, np.repeat(a[:1], batch_size - n, axis=0)]), chunk)
    yield n, to_global(jax.tree.map(lambda a: a[local], padded), mesh)


def map_batches(fn: Callable[[Any], Any], rows: Any, batch_size: int,
                mesh: jax.sharding.Mesh) -> np.ndarray:
  """fn(global batch) over `rows` (a pytree of arrays with N rows) in padded
  batches sharded on `data`; fn's output must be replicated. Every process
  gets all N output rows (padding dropped)."""
  outputs = [np.asarray(fn(batch))[:n] for n, batch in
             padded_global_batches(row_chunks(rows, batch_size), batch_size, mesh)]
  return np.concatenate(outputs)
