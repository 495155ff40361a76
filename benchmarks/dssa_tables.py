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
full row is that recipe's seed-0 model and the other rows differ from it in
the paper's switches only.
"""

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
  experiments.report(study, FLAGS.results_root, FLAGS.readme)


if __name__ == '__main__':
  define_flags()
  app.run(main)
