"""The CSS-style benchmark table: Recall@1/5/10/50 of LBF big, LBF small,
TIRG, image only, text only and concat, each trained and tested with

  python -m sbir_jax.main --config=configs/css.py:<model>,<size> --workdir=<root>/css_<model>_<size>

(one process per model, run one after another), then collected from each
workdir's results.json. Prints one JSON object, then the table in Markdown.

  python -m benchmarks.css_table [--size=cpu] [--models=lbf_big,tirg] [--root=workdir]

Data: the CSS-style generator with configs/css.py's settings for that size
(seeded; generated once and cached). Restarting resumes unfinished runs.
"""
import json
import os
import platform
import subprocess
import sys
import time

from absl import app
from absl import flags

MODELS = ('lbf_big', 'lbf_small', 'tirg', 'image_only', 'text_only', 'concat')
flags.DEFINE_string('size', 'cpu', 'Config size variant (cpu or tiny).')
flags.DEFINE_list('models', list(MODELS), 'Model variants to run.')
flags.DEFINE_string('root', 'workdir', 'Parent folder of the workdirs.')
flags.DEFINE_list('extra', [], 'Extra --config.x=y flags for every run.')
FLAGS = flags.FLAGS
KS = (1, 5, 10, 50)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(model: str) -> dict:
  workdir = os.path.join(FLAGS.root, f'css_{model}_{FLAGS.size}')
  command = [sys.executable, '-m', 'sbir_jax.main',
             f'--config=configs/css.py:{model},{FLAGS.size}', f'--workdir={workdir}',
             *FLAGS.extra]
  start = time.time()
  done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
  seconds = time.time() - start
  if done.returncode:
    raise RuntimeError(f'{" ".join(command)} failed:\n{done.stderr[-3000:]}')
  results = json.loads(open(os.path.join(REPO, workdir, 'results.json')).read())['train']
  return {'command': ' '.join(['python'] + command[1:]), 'wall_seconds': round(seconds, 1),
          **{f'recall@{k}': round(results[f'test_recall@{k}'], 2) for k in KS},
          'selected_step': results['selected_step'],
          'train_seconds': round(results['train_seconds_this_run'], 1)}


def main(argv):
  del argv
  rows = {model: run(model) for model in FLAGS.models}
  print(json.dumps({'machine': {'platform': platform.platform(),
                                'processor': platform.processor(),
                                'cpu_count': os.cpu_count()},
                    'size': FLAGS.size, 'results': rows}, indent=2))
  print('\n| model | R@1 | R@5 | R@10 | R@50 | train s |\n|---|---|---|---|---|---|')
  for model, r in rows.items():
    print(f'| {model} | ' + ' | '.join(f'{r[f"recall@{k}"]:.1f}' for k in KS)
          + f' | {r["train_seconds"]:.0f} |')


if __name__ == '__main__':
  app.run(main)
