"""The ZS-SBIR paper's table (ECCV 2018, Table 2) on the real Sketchy subset:
trains and tests every row, then prints one JSON object and the Markdown
table (validation beside test, time per row) and, with --readme, rewrites the
README block <!-- results:zs_sketchy_<recipe> -->.

  python -m benchmarks.zs_tables [--recipe=cpu] [--seeds=0,1,2]
      [--rows=regression,caae,cvae] [--features=imagenet] [--readme=README.md]

--features=finetuned_trunk runs the rows on the features of the trunk
fine-tuned on the seen classes (configs/sketchy_seen.py, trained first; the
zs_sketchy variant `finetuned_trunk`) into the same study, each row's name
saying so, so one table holds both.

Trained rows (direct regression, CAAE, CVAE) run
`python -m sbir_jax.main --config=configs/zs_sketchy.py:<recipe>,<row>` once
per seed through `sbir_jax.experiments` (records under results/<study>/; a
row whose record exists is skipped, so a stopped run resumes). Derived rows
are kept as records of their own beside them:
- CVAE with the k-means centres of its decoded samples (the paper's
  retrieval) is the same trained CVAE, evaluated a second way (variant
  `also_kmeans`), so it shares that row's seeds and training time;
- the parameter-free rows (untrained features, ESZSL, SAE; ESZSL / SAE
  hyper-parameters chosen on the validation classes) are computed here, on the
  recipe's data and features, once (they have no seed); `baseline_<kind>.json`,
  first in the table.
"""
import os
from typing import Any

from absl import app
from absl import flags

from sbir_jax import experiments

# Row variant -> row name. Trained rows, in the paper's order.
TRAINED_ROWS = {
    'regression': 'direct regression',
    'caae': 'CAAE',
    'cvae': 'CVAE (mean of samples)',
}
ROW_VARIANTS = {'cvae': 'cvae,also_kmeans'}
KMEANS_ROW = 'CVAE (k-means centres of samples)'
# Baseline metric prefix (tasks/zs_sbir/baselines.py) -> row name.
BASELINE_ROWS = {
    'untrained': 'untrained features, cosine (no training)',
    'eszsl': 'ESZSL (closed form, word vectors)',
    'sae': 'SAE (closed form, word vectors)',
}

# Feature variant -> (variant of configs/zs_sketchy.py before the recipe, row name suffix).
FEATURES = {
    'imagenet': ('', ''),
    'finetuned_trunk': ('finetuned_trunk', ', features of the seen-class fine-tuned trunk'),
}

flags.DEFINE_string('recipe', 'cpu', 'Variant of configs/zs_sketchy.py before each row.')
flags.DEFINE_enum('features', 'imagenet', list(FEATURES),
                  'Whose features: the ImageNet Lite0 or the seen-class fine-tuned trunk.')
flags.DEFINE_list('rows', list(TRAINED_ROWS), 'Trained rows to run.')
flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds of each trained row.')
experiments.define_table_flags()
flags.adopt_module_key_flags(experiments)  # --help lists them.
FLAGS = flags.FLAGS


def variants_of(recipe: str, features: str = 'imagenet') -> str:
  """The zs_sketchy variants of every row: features first, then the recipe."""
  return ','.join(filter(None, (FEATURES[features][0], recipe)))


def config_arg(recipe: str, row: str, features: str = 'imagenet') -> str:
  return f'configs/zs_sketchy.py:{variants_of(recipe, features)},{ROW_VARIANTS.get(row, row)}'


def row_name(name: str, features: str = 'imagenet') -> str:
  return name + FEATURES[features][1]


def _derived(record: dict[str, Any], prefix: str, label: str,
             **fields: Any) -> dict[str, Any] | None:
  """The row of metrics `<prefix>_*` in a record's val / test (None: absent)."""
  prefix += '_'
  split = {s: {k[len(prefix):]: v for k, v in record[s].items() if k.startswith(prefix)}
           for s in ('val', 'test')}
  return dict(record, label=label, **fields, **split) if split['test'] else None


# The raw-feature row of fine-tuned features (they are trained, by the trunk).
FINETUNED_COSINE_ROW = 'seen-class fine-tuned trunk features, cosine (no zero-shot model)'


def baseline_records(record: dict[str, Any], features: str = 'imagenet'
                     ) -> dict[str, dict[str, Any]]:
  """kind -> table row of each parameter-free baseline a trained run evaluated."""
  def name(kind, label):
    if kind == 'untrained' and features == 'finetuned_trunk':
      return FINETUNED_COSINE_ROW
    return row_name(label, features)
  rows = {kind: _derived(record, kind, name(kind, label), trained_steps=0,
                         selected_step=0, train_seconds=0.0)
          for kind, label in BASELINE_ROWS.items()}
  return {kind: row for kind, row in rows.items() if row}


def kmeans_record(record: dict[str, Any], features: str = 'imagenet'
                  ) -> dict[str, Any] | None:
  """The k-means retrieval row of a CVAE run evaluated both ways."""
  return _derived(record, 'kmeans', row_name(KMEANS_ROW, features))


def evaluate_baselines(recipe: str, features: str = 'imagenet') -> dict[str, Any]:
  """A record of the baselines' val and test metrics under the recipe's config."""
  from configs import zs_sketchy
  from sbir_jax.core import records
  from sbir_jax.core import sharding
  from sbir_jax.tasks.zs_sbir import baselines
  from sbir_jax.tasks.zs_sbir import task as zs_task
  code = records.git_state()  # Before the evaluation, as the trainer does.
  variants = variants_of(recipe, features)
  config = zs_sketchy.get_config(variants)
  task = zs_task.ZsSbirTask(config, sharding.make_mesh())
  metrics = {}
  for split in ('val', 'test'):
    evaluator = baselines.Evaluator(task.predict_fns['features'], split, config)
    metrics.update({f'{split}_{k}': float(v) for k, v in evaluator.run({}).items()})
  record = records.make_record(config, f'configs/zs_sketchy.py:{variants}', metrics, code)
  record['command'] = (f'python -m benchmarks.zs_tables --recipe={recipe}'
                       + (f' --features={features}' if features != 'imagenet' else ''))
  return record


def write_derived_records(study: str, recipe: str, results_root: str,
                          features: str = 'imagenet') -> None:
  """The k-means rows of the CVAE records, and the baselines' rows."""
  folder = os.path.join(results_root, study)
  suffix = '' if features == 'imagenet' else f'_{features}'
  for r in experiments.load_records(study, results_root):
    if r['label'] == row_name(TRAINED_ROWS['cvae'], features) and kmeans_record(r, features):
      experiments.write_record(
          os.path.join(folder, f"{study}{suffix}_cvae_kmeans_seed{r['seed']}.json"),
          kmeans_record(r, features))
  for kind, row in baseline_records(evaluate_baselines(recipe, features), features).items():
    experiments.write_record(os.path.join(folder, f'baseline_{kind}{suffix}.json'), row)


def main(argv):
  experiments.check_table_args(argv, 'rows', FLAGS.rows, list(TRAINED_ROWS))
  study = f'zs_sketchy_{FLAGS.recipe}'
  seeds = [int(s) for s in FLAGS.seeds]
  for row in FLAGS.rows:
    experiments.run_seeds(study, config_arg(FLAGS.recipe, row, FLAGS.features), seeds,
                          FLAGS.set, row_name(TRAINED_ROWS[row], FLAGS.features),
                          FLAGS.results_root, FLAGS.workdir_root)
  write_derived_records(study, FLAGS.recipe, FLAGS.results_root, FLAGS.features)
  experiments.report(study, FLAGS.results_root, FLAGS.readme)


if __name__ == '__main__':
  app.run(main)
