"""A 2-process job (4 CPU devices each, gloo) exits when one process dies.

The workers are this module run as a script: they join through
sbir_jax.core.distributed exactly as sbir_jax.main does and loop an all-reduce
over the global mesh, the collective a survivor would otherwise wait in. They
do not train, so the test is independent of the trainer and takes ~20 s.
"""
import os
import re
import subprocess
import sys
import time

import pytest

from sbir_jax.core import distributed
from tests.test_multihost import REPO
from tests.test_multihost import _free_port

HEARTBEAT_TIMEOUT_S = 10
# The service checks heartbeats about once a second; the rest is slack for a
# loaded 2-core machine.
EXIT_BOUND_S = HEARTBEAT_TIMEOUT_S + 30
FIRST_STEP = 'first all-reduce done'


def _worker(argv):
  """One process of the job: joins it, then all-reduces until killed."""
  del argv
  distributed.initialize_from_flags()
  import jax
  import jax.numpy as jnp
  import numpy as np
  mesh = jax.make_mesh((jax.device_count(),), ('data',),
                       axis_types=(jax.sharding.AxisType.Auto,))
  ones = jax.make_array_from_process_local_data(
      jax.NamedSharding(mesh, jax.P('data')),
      np.ones(jax.local_device_count(), np.float32))
  total = jax.jit(jnp.sum)  # An all-reduce across both processes.
  for step in range(10_000):
    assert float(total(ones)) == jax.device_count()
    if step == 0:
      print(f'process {jax.process_index()}: {FIRST_STEP}', flush=True)
    time.sleep(0.05)  # Keeps the CPU free; the next all-reduce still waits.


def _start(tmp_path):
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4')
  args = [sys.executable, '-m', 'tests.test_process_loss', '--distributed',
          f'--coordinator_address=localhost:{_free_port()}', '--num_processes=2',
          f'--heartbeat_timeout_s={HEARTBEAT_TIMEOUT_S}',
          '--initialization_timeout_s=60']
  logs = [tmp_path / f'process_{i}.log' for i in range(2)]
  procs = [subprocess.Popen(args + [f'--process_id={i}'], cwd=REPO, env=env,
                            stdout=log.open('w'), stderr=subprocess.STDOUT)
           for i, log in enumerate(logs)]
  return procs, logs


def _wait_for_first_step(procs, logs, timeout_s=60):
  deadline = time.monotonic() + timeout_s
  while not all(FIRST_STEP in log.read_text() for log in logs):
    for p, log in zip(procs, logs):
      assert p.poll() is None, f'{log.name} exited early:\n{log.read_text()[-4000:]}'
    assert time.monotonic() < deadline, 'no first all-reduce in time'
    time.sleep(0.2)


@pytest.mark.parametrize('lost, message', [
    # Process 1 goes silent: the service (in process 0) names it after the
    # heartbeat timeout.
    (1, r'tasks are unhealthy \(stopped sending heartbeats\):\s*1\b'),
    # Process 0 (the coordination service) dies: process 1's poll fails.
    (0, r'the leader task was preempted/died'),
])
def test_survivor_exits_when_a_process_is_killed(tmp_path, lost, message):
  procs, logs = _start(tmp_path)
  try:
    _wait_for_first_step(procs, logs)
    killed_at = time.monotonic()
    procs[lost].kill()  # SIGKILL: no chance to say goodbye.
    survivor = procs[1 - lost]
    try:
      survivor.wait(timeout=EXIT_BOUND_S)
    except subprocess.TimeoutExpired:
      pytest.fail(f'process {1 - lost} still runs {EXIT_BOUND_S} s after '
                  f'process {lost} died')
    exit_s = time.monotonic() - killed_at
  finally:
    for p in procs:
      p.kill()
      p.wait()
  output = logs[1 - lost].read_text()
  print(f'process {1 - lost} exited {exit_s:.1f} s after process {lost} was '
        f'killed, status {survivor.returncode}')
  assert survivor.returncode != 0, output[-4000:]
  assert re.search(message, output), output[-4000:]


if __name__ == '__main__':
  from absl import app
  distributed.define_flags()  # Here, not at import: sbir_jax.main defines them too.
  app.run(_worker)
