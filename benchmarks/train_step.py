"""Train-step throughput of DSSA (full model, HOLEF) on each trunk
(Sketch-a-Net; the ImageNet EfficientNet-Lite0 of the `imagenet` variant) at
the paper-sized input (225 / 224) and at the `cpu` variant's size. Prints one
JSON object: compile time, seconds per step, XLA's FLOPs per step and
triplets/s per setting.

  python -m benchmarks.train_step [--steps=5] [--batch_size=16]
      [--variants=';cpu;imagenet;imagenet,cpu'] [--frozen_trunk_layers=12]
  python -m benchmarks.train_step --config=configs/shoes_rgb.py:cpu,rgb_two_towers

With --config, only that FG-SBIR config is measured, at its own batch size
unless --batch_size is given (photos RGB when config.data.photo_input='rgb').

Uses the real jitted, sharded train step of sbir_jax.core.trainer on random uint8
images (throughput does not depend on pixel values), so no data is needed
(benchmarks/synthetic.py, shared with benchmarks/device_check.py). EfficientNet
trunks start from a random initialisation (no weight file needed; speed does
not depend on the weights).
"""
import json
import platform

from absl import app
from absl import flags
import jax
import ml_collections
from ml_collections import config_flags

from benchmarks import synthetic
from configs import fg_sbir_common

flags.DEFINE_integer('steps', 5, 'Timed steps per setting (after warm-up).')
flags.DEFINE_integer('batch_size', 16, 'Triplets per step.')
flags.DEFINE_string('variants', ';cpu;imagenet;imagenet,cpu',
                    'configs/shoes.py variants to measure, settings separated by ";" '
                    '(an empty one = the paper config).')
flags.DEFINE_integer('frozen_trunk_layers', None,
                     'Override config.model.frozen_trunk_layers (EfficientNet trunk).')
config_flags.DEFINE_config_file('config', None,
                                'Measure only this FG-SBIR config[:variants].')
FLAGS = flags.FLAGS


def measure(config: ml_collections.ConfigDict, steps: int) -> dict:
  state, step_fn, batch, _ = synthetic.train_setup(config)
  timing, _ = synthetic.time_train_step(state, step_fn, batch, steps)
  seconds = timing['seconds_per_step']
  return {'input_size': config.data.crop_size,
          'batch_size': config.batch_size, 'compile_seconds': timing['compile_seconds'],
          'seconds_per_step': round(seconds, 4), 'flops_per_step': timing['flops_per_step'],
          'triplets_per_second': round(config.batch_size / seconds, 2)}


def _measure_variant(variant: str) -> dict:
  config = fg_sbir_common.get_config('shoes', variant)
  config.batch_size = FLAGS.batch_size
  if FLAGS.frozen_trunk_layers is not None:
    config.model.frozen_trunk_layers = FLAGS.frozen_trunk_layers
  return {'variant': variant or 'paper', 'trunk': config.model.trunk,
          'frozen_trunk_layers': config.model.frozen_trunk_layers,
          **measure(config, FLAGS.steps)}


def _measure_config_flag() -> dict:
  config = FLAGS.config
  if FLAGS['batch_size'].present:
    config.batch_size = FLAGS.batch_size
  return {'config': FLAGS['config'].config_filename, 'model': config.model.name,
          **measure(config, FLAGS.steps)}


def main(_):
  if FLAGS.config is not None:
    results = [_measure_config_flag()]
  else:
    results = [_measure_variant(v) for v in FLAGS.variants.split(';')]
  print(json.dumps({
      'benchmark': 'dssa_train_step',
      'backend': jax.default_backend(), 'devices': jax.device_count(),
      'device_kind': jax.devices()[0].device_kind,
      'machine': platform.machine(), 'processor': platform.processor(),
      'jax': jax.__version__, 'results': results}, indent=2))


if __name__ == '__main__':
  app.run(main)
