"""Joining a multi-process JAX job, and leaving it when a peer dies.

`define_flags()` declares --distributed and its options; `main()` calls
`initialize_from_flags()` before anything touches a JAX backend.

What jax 0.10.2 offers (read in jax/_src/distributed.py and checked by
tests/test_process_loss.py):
- `jax.distributed.initialize(..., initialization_timeout=300,
  heartbeat_timeout_seconds=100, shutdown_timeout_seconds=300)`. The two
  timeouts go to the XLA coordination service (run by process 0) and to every
  process's client (`get_distributed_runtime_service/client(...,
  heartbeat_timeout=...)`, `init_timeout=...`). There is no separate
  heartbeat interval or missed-heartbeat count in this version, and no
  `jax.config` option for them (`jax_distributed_debug`,
  `jax_enable_recoverability`, `jax_enable_preemption_service` are the only
  distributed ones).
- How a survivor learns a peer died: every client long-polls the service for
  errors. If a process goes silent for `heartbeat_timeout_seconds`, the
  service reports "The following tasks are unhealthy (stopped sending
  heartbeats): <ids>" to all others, and each client's default
  missed-heartbeat callback aborts its process (SIGABRT, "Terminating process
  because the JAX distributed service detected fatal errors"), even one
  blocked inside a gloo collective. If process 0 (the service) dies, the poll
  fails at once ("the leader task was preempted/died") and survivors abort
  within a second or so. So no watchdog of our own is needed: the one knob is
  the heartbeat timeout. With the default 100 s a survivor waits ~100 s after
  its peer's death; measured on 2 CPU processes with 10 s: 7-11 s.
- `jax_enable_recoverability` (off) would instead let survivors run on; we
  leave it off, as a data-parallel step cannot finish without every process.
"""
from absl import flags
from absl import logging

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Declares --distributed, its address/count/id and its two timeouts."""
  flags.DEFINE_bool('distributed', False,
                    'Call jax.distributed.initialize() (multi-host). On TPU VMs '
                    'it needs no other flag; elsewhere give the three below.')
  flags.DEFINE_string('coordinator_address', None,
                      'host:port of process 0, for --distributed off TPU/SLURM.')
  flags.DEFINE_integer('num_processes', None, 'For --distributed off TPU/SLURM.')
  flags.DEFINE_integer('process_id', None, 'For --distributed off TPU/SLURM.')
  flags.DEFINE_integer('initialization_timeout_s', 300,
                       'For --distributed: how long a process waits for all '
                       'others to join before it fails.')
  flags.DEFINE_integer('heartbeat_timeout_s', 60,
                       'For --distributed: how long the coordination service '
                       'waits for a silent process before declaring it dead; '
                       'the survivors then exit (non-zero) instead of waiting '
                       'in a collective.')


def initialize_from_flags() -> None:
  """Joins the job if --distributed; call before any JAX computation."""
  if not FLAGS.distributed:
    return
  initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
             initialization_timeout_s=FLAGS.initialization_timeout_s,
             heartbeat_timeout_s=FLAGS.heartbeat_timeout_s)


def initialize(coordinator_address: str | None = None,
               num_processes: int | None = None,
               process_id: int | None = None, *,
               initialization_timeout_s: int = 300,
               heartbeat_timeout_s: int = 60) -> None:
  """`jax.distributed.initialize` with gloo for CPU collectives.

  Arguments left None are detected (TPU VMs, SLURM, Open MPI).
  """
  import jax  # Imported here so XLA flags from the environment apply first.
  # Collectives between CPU processes (tests, CPU clusters); TPU/GPU ignore it.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes,
                             process_id=process_id,
                             initialization_timeout=initialization_timeout_s,
                             heartbeat_timeout_seconds=heartbeat_timeout_s)
  # No jax.process_index() here: it would start the backend before the caller
  # is done configuring JAX.
  logging.info('Joined the distributed job; a process silent for %d s will be '
               'declared dead and the others will exit.', heartbeat_timeout_s)
