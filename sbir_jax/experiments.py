"""Runs a config over seeds, keeps the records, and builds tables from them.

  # Train configs/shoes.py:cpu with seeds 0 and 1 (resumable: a seed whose
  # record exists is skipped), records under results/<study>/:
  python -m sbir_jax.experiments run --study=fg_recipe \\
      --config=configs/shoes.py:cpu --seeds=0,1 --set=num_train_steps=500
  # The markdown table of a study (mean +- std over seeds, val beside test):
  python -m sbir_jax.experiments table --study=fg_recipe
  # Rewrite the README block <!-- results:fg_recipe --> ... <!-- /results:fg_recipe -->:
  python -m sbir_jax.experiments table --study=fg_recipe --readme=README.md

Each record (`core/records.py`) names the commit, config, seed, data fingerprint,
metrics, time and machine behind its row; tests check that every README block
equals the table its records give.
"""
import json
import os
import re
import statistics
import subprocess
import sys
import time
from typing import Any, Optional, Sequence

from absl import app
from absl import flags

FLAGS = flags.FLAGS

RESULTS_ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            'results')
# The metrics a table shows per task (first one: the selection metric's family).
TABLE_METRICS = {
    'fg_sbir': ('acc@1', 'acc@10'),
    'sketch_classification': ('acc@1', 'acc@5'),
    'zs_sbir': ('mAP@all', 'P@25'),
    'composed': ('recall@1', 'recall@10'),
}


def run_name(config_arg: str, overrides: Sequence[str], seed: int) -> str:
  """configs/shoes.py:cpu,true_match + [num_train_steps=500] -> a file name."""
  path, _, variants = config_arg.partition(':')
  parts = [os.path.splitext(os.path.basename(path))[0]] + variants.split(',')
  parts += [o.replace('=', '-') for o in overrides]
  name = '_'.join(p for p in parts if p)
  return re.sub(r'[^A-Za-z0-9_.@-]+', '-', name) + f'_seed{seed}'


def command_line(config_arg: str, overrides: Sequence[str]) -> str:
  """The training command of a row (seed omitted: rows span seeds)."""
  sets = ''.join(f' --config.{o}' for o in overrides)
  return f'python -m sbir_jax.main --config={config_arg}{sets}'


def run_seeds(study: str, config_arg: str, seeds: Sequence[int],
              overrides: Sequence[str], label: Optional[str],
              results_root: str, workdir_root: str, row: Optional[int] = None) -> list[str]:
  """Trains each seed in its own process; returns the record paths. `row`:
  the row's place in the study's table (a table command's order; rows
  without one follow, by file name)."""
  out_dir = os.path.join(results_root, study)
  os.makedirs(out_dir, exist_ok=True)
  paths, started = [], time.time()
  for i, seed in enumerate(seeds):
    name = run_name(config_arg, overrides, seed)
    path = os.path.join(out_dir, name + '.json')
    paths.append(path)
    if os.path.exists(path):
      print(f'[{study}] {name}: record exists, skipped ({path})', flush=True)
      continue
    workdir = os.path.join(workdir_root, study, name)
    cmd = [sys.executable, '-m', 'sbir_jax.main', f'--config={config_arg}',
           f'--config.seed={seed}', f'--workdir={workdir}']
    cmd += [f'--config.{o}' for o in overrides]
    os.makedirs(os.path.dirname(workdir), exist_ok=True)
    log_path = workdir + '.log'
    print(f'[{study}] {name}: {" ".join(cmd[1:])} (log: {log_path})', flush=True)
    with open(log_path, 'w') as log:
      if subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode:
        raise RuntimeError(f'{name} failed; see {log_path}. Rerunning the same '
                           'command resumes it from its last checkpoint.')
    with open(os.path.join(workdir, 'record.json')) as f:
      record = json.load(f)
    record.update(study=study, overrides=list(overrides),
                  label=label or command_line(config_arg, overrides),
                  command=command_line(config_arg, overrides) + f' --config.seed={seed}')
    if row is not None:
      record['row'] = row
    write_record(path, record)
    done = i + 1
    eta = (time.time() - started) / done * (len(seeds) - done)
    print(f'[{study}] {name}: val {_short(record["val"])} test {_short(record["test"])}'
          f' ({done}/{len(seeds)}, ETA {eta / 60:.0f} min)', flush=True)
  return paths


def check_table_args(argv: Sequence[str], flag: str, given: Sequence[str],
                     known: Sequence[str]) -> None:
  """A table command's checks: no stray arguments, every --<flag> value known."""
  from absl import app
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  unknown = [g for g in given if g not in known]
  if unknown:
    raise app.UsageError(f'--{flag}: unknown {unknown}; use some of {list(known)}.')


def write_record(path: str, record: dict[str, Any]) -> None:
  """Writes a record atomically: a kill never leaves half a file."""
  with open(path + '.tmp', 'w') as f:
    json.dump(record, f, indent=2, sort_keys=True)
  os.replace(path + '.tmp', path)


def _short(metrics: dict[str, float]) -> str:
  return ', '.join(f'{k} {v:.2f}' for k, v in metrics.items() if '_ci_' not in k)


def load_records(study: str, results_root: str = RESULTS_ROOT) -> list[dict[str, Any]]:
  folder = os.path.join(results_root, study)
  if not os.path.isdir(folder):
    raise FileNotFoundError(f'No study {study!r} under {results_root}; run '
                            f'`python -m sbir_jax.experiments run --study={study} ...` first.')
  records = []
  for name in sorted(os.listdir(folder)):
    if name.endswith('.json'):
      with open(os.path.join(folder, name)) as f:
        records.append(json.load(f))
  if not records:
    raise FileNotFoundError(f'Study folder {folder} holds no records.')
  return records


# Decimals per task (default 2): zero-shot metrics are fractions, not percent.
TABLE_DIGITS = {'zs_sbir': 3}


def _mean_std(values: Sequence[float], digits: int = 2) -> str:
  if len(values) == 1:
    return f'{values[0]:.{digits}f}'
  return f'{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}'


def table(records: Sequence[dict[str, Any]]) -> str:
  """Markdown: one row per label, mean ± std over its seeds, val beside test."""
  rows: dict[str, list[dict]] = {}
  for record in sorted(records, key=lambda r: r.get('row', float('inf'))):
    rows.setdefault(record['label'], []).append(record)
  metrics = TABLE_METRICS.get(records[0]['task'], tuple(records[0]['test'])[:2])
  digits = TABLE_DIGITS.get(records[0]['task'], 2)
  # A published number beside each row, where the table command put one in
  # the records (`record['paper']`, e.g. benchmarks/dssa_tables.py).
  paper = [m for m in metrics if any(m in r.get('paper', {}) for r in records)]
  header = (['run', 'seeds'] + [f'val {m}' for m in metrics[:1]]
            + [f'test {m}' for m in metrics] + [f'paper {m}' for m in paper]
            + ['steps (selected)', 'train min / run'])
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for label, group in rows.items():
    group = sorted(group, key=lambda r: r['seed'])
    cells = [label, ','.join(str(r['seed']) for r in group)]
    cells += [_mean_std([r['val'].get(m, float('nan')) for r in group], digits)
              for m in metrics[:1]]
    cells += [_mean_std([r['test'][m] for r in group], digits) for m in metrics]
    cells += [f"{group[0]['paper'][m]:.{digits}f}" if m in group[0].get('paper', {}) else '—'
              for m in paper]
    if group[0]['trained_steps']:
      cells.append(f"{group[0]['trained_steps']} ({'/'.join(str(r['selected_step']) for r in group)})")
      cells.append(f"{statistics.mean(r['train_seconds'] / 60 for r in group):.1f}")
    else:  # A parameter-free row (e.g. a baseline computed in another run).
      cells += ['—', '—']
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def define_table_flags() -> None:
  """The flags every table command (benchmarks/*_tables.py, css_table.py)
  shares: --set, --readme, --results_root and --workdir_root."""
  flags.DEFINE_multi_string('set', [], 'Overrides for every row, e.g. num_train_steps=200.')
  flags.DEFINE_string('readme', None, 'Rewrite this file\'s block of the study.')
  flags.DEFINE_string('results_root', RESULTS_ROOT, 'Records folder.')
  flags.DEFINE_string('workdir_root', 'workdir', 'Parent folder of the workdirs.')


def readme_block(study: str) -> tuple[str, str]:
  return f'<!-- results:{study} -->\n', f'<!-- /results:{study} -->'


def replace_block(text: str, study: str, body: str) -> str:
  """`text` with the study's marked block replaced by `body`."""
  start, end = readme_block(study)
  if start not in text or end not in text:
    raise ValueError(f'The README has no block for study {study!r}: add the two '
                     f'lines {start.strip()} and {end} where its table goes.')
  head, rest = text.split(start, 1)
  _, tail = rest.split(end, 1)
  return head + start + body + end + tail


def rewrite_readme(readme: str, study: str, body: str) -> None:
  """Replaces the study's block of the file `readme` (atomically: a failure
  leaves the file as it was)."""
  with open(readme) as f:
    text = replace_block(f.read(), study, body)
  with open(readme + '.tmp', 'w') as f:
    f.write(text)
  os.replace(readme + '.tmp', readme)


def report(study: str, results_root: str, readme: Optional[str]) -> None:
  """Prints a study's records as JSON and its Markdown table; with `readme`,
  rewrites that file's block of the study (the table commands' last step)."""
  records = load_records(study, results_root)
  print(json.dumps({'study': study, 'rows': [
      {k: r[k] for k in ('label', 'command', 'val', 'test', 'train_seconds', 'seed')}
      for r in records]}, indent=2))
  body = table(records)
  print(body)
  if readme:
    rewrite_readme(readme, study, body)


def current_block(text: str, study: str) -> str:
  start, end = readme_block(study)
  return text.split(start, 1)[1].split(end, 1)[0]


def _define_flags() -> None:
  """The command's flags; defined only when run as a command, so importing
  this module next to sbir_jax.main (which owns --config) does not clash."""
  flags.DEFINE_string('study', None, 'Name of the results folder under results/.')
  flags.DEFINE_string('config', None, 'For run: config file[:variants].')
  flags.DEFINE_list('seeds', ['0'], 'For run: seeds (--config.seed) to train.')
  flags.DEFINE_multi_string('set', [], 'For run: config overrides key=value, e.g. '
                            'num_train_steps=500 (passed as --config.key=value).')
  flags.DEFINE_string('label', None, 'For run: the row name in tables '
                      '(default: the config argument and overrides).')
  flags.DEFINE_string('results_root', RESULTS_ROOT, 'Where studies are kept.')
  flags.DEFINE_string('workdir_root', os.path.join('workdir', 'studies'),
                      'For run: workdirs of the runs (not committed).')
  flags.DEFINE_string('readme', None, 'For table: rewrite this file\'s block of the study.')


def main(argv):
  if len(argv) != 2 or argv[1] not in ('run', 'table'):
    raise app.UsageError('Usage: python -m sbir_jax.experiments run|table --study=NAME ...')
  if not FLAGS.study:
    raise app.UsageError('--study is required.')
  if argv[1] == 'run':
    if not FLAGS.config:
      raise app.UsageError('run needs --config=<file>[:variants].')
    run_seeds(FLAGS.study, FLAGS.config, [int(s) for s in FLAGS.seeds], FLAGS.set,
              FLAGS.label, FLAGS.results_root, FLAGS.workdir_root)
  body = table(load_records(FLAGS.study, FLAGS.results_root))
  print(body)
  if FLAGS.readme:
    rewrite_readme(FLAGS.readme, FLAGS.study, body)


if __name__ == '__main__':
  _define_flags()
  app.run(main)
