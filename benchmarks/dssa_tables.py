"""The rows of DSSA's ablation tables (ICCV 2017, Tables 2-5) on one dataset
and trunk: trains and tests each row (one seed each, said so in the table),
then prints one JSON object and the Markdown table (validation beside test,
training time per row) and, with --readme, rewrites the README block
<!-- results:dssa_tables_<dataset>_<trunk> -->.

  python -m benchmarks.dssa_tables --dataset=shoes [--trunk=imagenet]
      [--rows=base,cff,holef,full,no_attention] [--set=num_train_steps=200] [--readme=README.md]

Rows (configs/fg_sbir/common.py variants): Table 2 base (Triplet SN), +CFF,
+HOLEF, full; Table 3 with and without attention; Table 4 with and without
the shortcut; Table 5 the energies (Euclidean, weighted Euclidean,
Mahalanobis, HOLEF) on the full model. Each row runs
`python -m sbir_jax.main --config=configs/<dataset>.py:<recipe>,<row>`
through `sbir_jax.experiments` (records under results/<study>/; a row whose
record exists is skipped, so a stopped run resumes). The recipe is the one
the results rows use (RECIPES: chosen on Shoe V1 validation), so the table's
full row is that recipe's config at seed 0, trained again here, and the other
rows differ from it in the paper's switches only. (Config and seed repeat a
run only on the same CPU and libraries, which each record names.) Beside
each row the table shows the paper's number for it (PAPER; Shoe V1, Chair V1
and Handbag, on the paper's trunk).
"""

import json
import os

from absl import app
from absl import flags

from sbir_jax import experiments

# --rows name -> (the table's label, the variants after the recipe), in the
# paper's order. Names have no commas: --rows is a comma-separated list.
ROWS = {
    'base': ('base', 'base'), 'cff': ('+CFF', 'cff'), 'holef': ('+HOLEF', 'holef'),
    'full': ('full', 'full'),
    'no_attention': ('full, no attention', 'full,no_attention'),
    'no_shortcut': ('full, no shortcut', 'full,no_shortcut'),
    'euclidean': ('full, Euclidean', 'full,euclidean'),
    'weighted': ('full, weighted Euclidean', 'full,weighted'),
    'mahalanobis': ('full, Mahalanobis', 'full,mahalanobis'),
}
# The DSSA paper's (acc@1, acc@10) of each row on the Sketch-a-Net trunk
# (../shared/papers: Tables 2-5; acc@10 only where the table gives it). The
# rows without attention (base, cff, holef, no_attention) take Table 3's
# "without attention" column: its Base + CFF (57.39 on Shoe) differs from
# Table 2's 58.26, which equals Table 3's "with attention" one.
PAPER = {
    'shoes': {'base': (52.17, 92.17), 'cff': (57.39, None), 'holef': (56.52, 88.70),
              'full': (61.74, 94.78), 'no_attention': (58.26, None),
              'no_shortcut': (27.83, None), 'euclidean': (58.26, 93.04),
              'weighted': (58.26, 93.04), 'mahalanobis': (52.17, 89.57)},
    'chairs': {'base': (72.16, 98.96), 'cff': (75.25, None), 'holef': (74.23, 97.94),
               'full': (81.44, 95.88), 'no_attention': (77.32, None),
               'no_shortcut': (49.48, None), 'euclidean': (79.38, 95.88),
               'weighted': (79.38, 95.88), 'mahalanobis': (78.35, 95.88)},
    'handbag': {'base': (39.88, 82.14), 'cff': (47.02, None), 'holef': (40.48, 83.93),
                'full': (49.40, 82.74), 'no_attention': (48.21, None),
                'no_shortcut': (23.81, None), 'euclidean': (48.21, 83.33),
                'weighted': (48.81, 82.14), 'mahalanobis': (44.64, 79.76)},
}
# The results recipe of each trunk (README "DSSA on an ImageNet EfficientNet
# trunk" for the ImageNet one; `cpu` for the paper's Sketch-a-Net).
RECIPES = {'imagenet': 'imagenet_cpu,hardest_negatives', 'sketch_a_net': 'cpu'}
TRUNKS = tuple(RECIPES)
DATASETS = ('shoes', 'chairs', 'handbag', 'chair_v2', 'shoes_rgb')

FLAGS = flags.FLAGS


def define_flags() -> None:
  # Defined when run, not on import: tests import several table modules, and
  # absl refuses a flag name defined twice.
  flags.DEFINE_enum('dataset', 'shoes', DATASETS, 'configs/<dataset>.py.')
  flags.DEFINE_enum('trunk', 'imagenet', TRUNKS, 'The trunk (sketch_a_net: the paper\'s).')
  flags.DEFINE_list('rows', list(ROWS), 'Rows to run, by name.')
  flags.DEFINE_integer('seed', 0, 'One seed per ablation row.')
  experiments.define_table_flags()
  flags.adopt_module_key_flags(experiments)  # --help lists them.


def config_arg(dataset: str, trunk: str, row: str) -> str:
  return f'configs/{dataset}.py:{RECIPES[trunk]},{ROWS[row][1]}'


def main(argv):
  experiments.check_table_args(argv, 'rows', FLAGS.rows, list(ROWS))
  study = f'dssa_tables_{FLAGS.dataset}_{FLAGS.trunk}'
  order = list(ROWS)  # The paper's order, whichever --rows ran first.
  for row in FLAGS.rows:
    experiments.run_seeds(study, config_arg(FLAGS.dataset, FLAGS.trunk, row), [FLAGS.seed],
                          FLAGS.set, f'{ROWS[row][0]} (one seed)', FLAGS.results_root,
                          FLAGS.workdir_root, row=order.index(row))
  add_paper_numbers(study, FLAGS.dataset, FLAGS.results_root)
  experiments.report(study, FLAGS.results_root, FLAGS.readme)


def paper_numbers(dataset: str, row: str) -> dict[str, float]:
  """The paper's metrics of a row ({} where it has none: Chair-V2, Shoe RGB)."""
  acc1, acc10 = PAPER.get(dataset, {}).get(row, (None, None))
  return {m: v for m, v in (('acc@1', acc1), ('acc@10', acc10)) if v is not None}


def add_paper_numbers(study: str, dataset: str, results_root: str) -> None:
  """Puts the paper's numbers of its row into every record of the study (the
  table shows them beside ours; records written before PAPER existed get them
  too)."""
  folder = os.path.join(results_root, study)
  for name in sorted(os.listdir(folder)):
    if not name.endswith('.json'):
      continue
    path = os.path.join(folder, name)
    with open(path) as f:
      record = json.load(f)
    paper = paper_numbers(dataset, list(ROWS)[record['row']])
    if record.get('paper', {}) != paper:
      experiments.write_record(path, dict(record, paper=paper))


if __name__ == '__main__':
  define_flags()
  app.run(main)
