"""The real-data check of zero-shot SBIR: QuickDraw doodles -> TU-Berlin sketches.

Trains CVAE, CAAE and direct regression with configs/zs_doodle.py (each as
`python -m sbir_jax.main --config=configs/zs_doodle.py:<model>` would, in
<workdir_root>/<model>), evaluates the CVAE checkpoint also with k-means
retrieval, and prints a Markdown table of the unseen-class test metrics with
the parameter-free baselines (untrained features, ESZSL, SAE), then one JSON
object with every number and the wall-clock times.

  python -m benchmarks.zs_doodle [--workdir_root=workdir/zs_doodle_table]

A workdir that already holds a finished run is reused (only re-tested):
delete it to retrain. Not the paper's benchmark (see configs/zs_doodle.py).
"""
import json
import os
import platform
import time

from absl import app
from absl import flags
import jax

from configs import zs_doodle
from sbir_jax.core import trainer

flags.DEFINE_string('workdir_root', os.path.join('workdir', 'zs_doodle_table'),
                    'One sub-folder per model.')
flags.DEFINE_string('extra_variants', '',
                    'Appended to every config arg, e.g. ",tiny" for a smoke run.')
FLAGS = flags.FLAGS

def _columns(config) -> tuple[str, ...]:
  ks = tuple(config.eval.ks)
  return tuple(f'P@{k}' for k in ks) + (f'mAP@{ks[-1]}', f'mAP@{ks[-1]}_div_k', 'mAP@all')


def main(argv):
  del argv
  rows, times = {}, {}
  columns = _columns(zs_doodle.get_config('cvae' + FLAGS.extra_variants))
  start_all = time.time()
  for model in ('cvae', 'caae', 'regression'):
    config = zs_doodle.get_config(model + FLAGS.extra_variants)
    workdir = os.path.join(FLAGS.workdir_root, model)
    start = time.time()
    results = trainer.train_and_evaluate(config, workdir)
    times[model] = time.time() - start
    rows[model.upper() if model != 'regression' else 'regression'] = {
        c: results[f'test_{c}'] for c in columns}
    if model == 'cvae':
      for base in config.eval.baselines:
        rows[f'{base} (no training)'] = {c: results[f'test_{base}_{c}'] for c in columns}
      kmeans = zs_doodle.get_config('cvae,kmeans' + FLAGS.extra_variants)
      start = time.time()
      evaluated = trainer.evaluate(kmeans, workdir, results['selected_checkpoint'])
      times['cvae_kmeans_eval'] = time.time() - start
      rows['CVAE (k-means retrieval)'] = {c: evaluated[f'test_{c}'] for c in columns}
  times['total'] = time.time() - start_all

  print('| method | ' + ' | '.join(columns) + ' |')
  print('|---|' + '---|' * len(columns))
  for name, row in rows.items():
    print(f'| {name} | ' + ' | '.join(f'{row[c]:.3f}' for c in columns) + ' |')
  print(json.dumps({'rows': rows, 'seconds': times, 'devices': jax.device_count(),
                    'platform': jax.default_backend(), 'cpu_count': os.cpu_count(),
                    'machine': platform.machine()}, indent=1))


if __name__ == '__main__':
  app.run(main)
