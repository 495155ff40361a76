"""sharding.prefetch_to_mesh: the trainer's batches, put on the devices ahead."""
import jax
import numpy as np

from sbir_jax.core import sharding


def _counting(n: int, pulled: list):
  for i in range(n):
    pulled.append(i)
    yield {'x': np.full((8, 2), i, np.float32)}


def test_prefetch_keeps_a_bounded_lookahead_and_the_same_batches():
  mesh = sharding.make_mesh()
  pulled = []
  batches = sharding.prefetch_to_mesh(_counting(6, pulled), mesh, size=2)
  first = next(batches)
  assert len(pulled) == 3  # The batch handed out and 2 already on the devices.
  assert isinstance(first['x'], jax.Array)
  assert first['x'].sharding == sharding.batch_sharding(mesh)
  rest = list(batches)
  values = [int(b['x'][0, 0]) for b in [first] + rest]
  assert values == list(range(6))  # Every batch, in order, none lost at the end.


def test_no_prefetch_puts_each_batch_when_asked():
  pulled = []
  batches = sharding.prefetch_to_mesh(_counting(3, pulled), sharding.make_mesh(), size=0)
  next(batches)
  assert len(pulled) == 1
