"""Entry point: python -m sbir_jax.main --config=configs/handbag.py[:variants].

--mode=train (default) trains then tests; --mode=eval evaluates a checkpoint;
--mode=retrieve --query=<sketch file> [--gallery=test|<folder>|<file.npz>]
[--top_k=10] searches a gallery with a checkpoint (sbir_jax/retrieval.py).
"""
import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Experiment config file[:variants].',
                                lock_config=True)
flags.DEFINE_string('workdir', None,
                    'Output folder (default ./workdir/<config>[_<variants>]).')
flags.DEFINE_enum('mode', 'train', ['train', 'eval', 'retrieve'],
                  'train: train (resuming), then test; eval: restore and evaluate; '
                  'retrieve: answer --query from --gallery with a checkpoint.')
flags.DEFINE_string('checkpoint', 'best',
                    'For --mode=eval/retrieve: best, latest or a step.')
flags.DEFINE_string('query', None, 'For --mode=retrieve: a sketch image file.')
flags.DEFINE_string('gallery', 'test',
                    "For --mode=retrieve: 'test' (the task's test photos), a "
                    'folder of photos, or a gallery .npz written before.')
flags.DEFINE_integer('top_k', 10, 'For --mode=retrieve: results to show.')
flags.DEFINE_bool('distributed', False,
                  'Call jax.distributed.initialize() (multi-host). On TPU VMs '
                  'it needs no other flag; elsewhere give the three below.')
flags.DEFINE_string('coordinator_address', None,
                    'host:port of process 0, for --distributed off TPU/SLURM.')
flags.DEFINE_integer('num_processes', None, 'For --distributed off TPU/SLURM.')
flags.DEFINE_integer('process_id', None, 'For --distributed off TPU/SLURM.')
flags.mark_flags_as_required(['config'])


def default_workdir(config_flag_value: str) -> str:
  """configs/shoes.py:cpu,no_shortcut -> workdir/shoes_cpu_no_shortcut."""
  path, _, variants = config_flag_value.partition(':')
  name = os.path.splitext(os.path.basename(path))[0]
  if variants:
    name += '_' + variants.replace(',', '_')
  return os.path.join('workdir', name)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if FLAGS.mode == 'retrieve' and not FLAGS.query:
    raise app.UsageError('--mode=retrieve needs --query=<sketch image file>.')
  import jax  # Imported here so XLA flags from the environment apply first.
  if FLAGS.distributed:
    # Collectives between CPU processes (tests, CPU clusters); TPU/GPU ignore it.
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                               num_processes=FLAGS.num_processes,
                               process_id=FLAGS.process_id)
  from sbir_jax import train  # Heavy imports after distributed init.

  workdir = FLAGS.workdir or default_workdir(_config_arg())
  logging.info('Process %d/%d, %d devices, workdir %s', jax.process_index(),
               jax.process_count(), jax.device_count(), workdir)
  if FLAGS.mode == 'train':
    train.train_and_evaluate(FLAGS.config, workdir, config_arg=_config_arg())
  elif FLAGS.mode == 'eval':
    train.evaluate(FLAGS.config, workdir, FLAGS.checkpoint)
  else:
    from sbir_jax import retrieval
    result = retrieval.retrieve(FLAGS.config, workdir, FLAGS.query, FLAGS.gallery,
                                FLAGS.top_k, FLAGS.checkpoint)
    found = (f"true match {result['true_match']} at rank {result['true_match_rank']}"
             if result['true_match'] else 'true match unknown')
    print(f"Top {len(result['top'])} of {result['gallery_size']} ({found}): "
          f"{result['grid_png']}")
    if result['attention_png']:
      print(f"Attention: {result['attention_png']}")


def _config_arg() -> str:
  return FLAGS['config'].serialize().split('=', 1)[1]


if __name__ == '__main__':
  app.run(main)
