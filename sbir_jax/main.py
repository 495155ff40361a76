"""Entry point: python -m sbir_jax.main --config=configs/handbag.py[:variants].

--mode=train (default) trains then evaluates the selected checkpoint;
--mode=eval evaluates a checkpoint; --mode=serve starts the search web page
and JSON API (`sbir_jax/serve/`; FG-SBIR and composed-query configs)
[--gallery=...] [--host=127.0.0.1] [--port=8000]; any other mode is one the
config's task adds (`Task.modes`, e.g. FG-SBIR's --mode=retrieve
--query=<sketch file> [--gallery=test|<folder>|<file.npz>] [--top_k=10]).
"""
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TensorFlow's C++ chatter off screen.

from absl import app  # noqa: E402
from absl import flags
from ml_collections import config_flags

from sbir_jax.core import distributed

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Experiment config file[:variants].',
                                lock_config=True)
flags.DEFINE_string('workdir', None,
                    'Output folder (default ./workdir/<config>[_<variants>]).')
flags.DEFINE_string('mode', 'train',
                    'train: train (resuming), then test; eval: restore and evaluate; '
                    'serve: the search web page and JSON API; '
                    "or a mode of the config's task (FG-SBIR: retrieve).")
flags.DEFINE_string('checkpoint', 'best',
                    'For --mode=eval and task modes: best, latest or a step.')
# Options of the task modes (read by the mode as `options`).
flags.DEFINE_string('query', None, 'For --mode=retrieve: a sketch image file.')
flags.DEFINE_string('gallery', 'test',
                    "For --mode=retrieve: 'test' (the task's test photos), a "
                    'folder of photos, or a gallery .npz written before.')
flags.DEFINE_integer('top_k', 10, 'For --mode=retrieve and serve: results to show.')
flags.DEFINE_string('host', '127.0.0.1',
                    'For --mode=serve: address to bind (0.0.0.0 opens it to the network).')
flags.DEFINE_integer('port', 8000, 'For --mode=serve: port.')
distributed.define_flags()  # --distributed and its options.
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
  distributed.initialize_from_flags()
  # Heavy imports after distributed init (XLA flags from the environment apply first).
  from sbir_jax.core import console
  from sbir_jax.core import task as task_lib
  from sbir_jax.core import trainer

  config, workdir = FLAGS.config, FLAGS.workdir or default_workdir(_config_arg())
  mode_fn = None
  if FLAGS.mode not in ('train', 'eval', 'serve'):
    modes = task_lib.task_class(config).modes
    if FLAGS.mode not in modes:
      raise app.UsageError(f'--mode={FLAGS.mode}: use train, eval'
                           + ''.join(f', {m}' for m in modes)
                           + f' (the modes of task {config.task!r}).')
    mode_fn = modes[FLAGS.mode]
  console.log_to_file(workdir)
  if FLAGS.mode == 'train':
    trainer.train_and_evaluate(config, workdir, config_arg=_config_arg())
  elif FLAGS.mode == 'eval':
    trainer.evaluate(config, workdir, FLAGS.checkpoint)
  elif FLAGS.mode == 'serve':
    from sbir_jax.serve import server  # FastAPI and uvicorn only where served.
    server.serve(config, workdir, checkpoint=FLAGS.checkpoint, gallery=FLAGS.gallery,
                 host=FLAGS.host, port=FLAGS.port, top_k=FLAGS.top_k)
  else:
    restore = lambda: trainer.restore_for_mode(config, workdir, FLAGS.checkpoint)
    mode_fn(restore, workdir, {'query': FLAGS.query, 'gallery': FLAGS.gallery,
                               'top_k': FLAGS.top_k})


def _config_arg() -> str:
  return FLAGS['config'].serialize().split('=', 1)[1]


if __name__ == '__main__':
  app.run(main)
