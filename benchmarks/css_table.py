"""The CSS-style composed-retrieval table (issue 14): LBF big, LBF small,
TIRG, concat, image only and text only in the LBF paper's CSS settings,
trained and tested through `sbir_jax.experiments` (records under
results/css_<recipe>/, a row whose record exists is skipped, so a stopped
run resumes), then one JSON object and the Markdown table (validation beside
test, training time per row) and, with --readme, the README block
<!-- results:css_<recipe> -->.

  python -m benchmarks.css_table [--recipe=cpu] [--groups=imagenet:2d_to_2d,...]
      [--models=lbf_big,tirg] [--losses=batch_classification] [--seeds=0,1,2]
      [--readme=README.md]

Groups (trunk:setting): the frozen ImageNet Lite0 trunk with cached maps
(`imagenet_cached`) in 2D-to-2D, 3D-style-to-3D-style and 2D-to-3D-style,
and the small CNN from scratch (`small_cnn`) in 2D-to-2D. Each row runs
`python -m sbir_jax.main --config=configs/css.py:<model>,<recipe>,<setting>[,imagenet_cached][,soft_triplet]`.
LBF big and TIRG get --seeds (mean ± std), the other rows the first seed
only (the table's seed column says so). LBF big also runs with the paper's
soft triplet (its LBF form) beside the recipe's batch classification; every
row names its loss. --losses limits the rows to some losses (e.g. to train
the batch-classification rows' extra seeds first); records of every row
already run stay in the table.
"""
from typing import Iterator

from absl import app
from absl import flags

from sbir_jax import experiments

MODELS = {'lbf_big': 'LBF big', 'lbf_small': 'LBF small', 'tirg': 'TIRG',
          'concat': 'concat', 'image_only': 'image only', 'text_only': 'text only'}
SEEDED_MODELS = ('lbf_big', 'tirg')  # 3 seeds; the others one.
TRUNKS = {'imagenet': ('imagenet_cached', 'frozen ImageNet Lite0, cached maps'),
          'small_cnn': ('', 'small CNN from scratch')}
SETTINGS = {'2d_to_2d': '2D-to-2D', '3d_to_3d': '3D-style-to-3D-style',
            '2d_to_3d': '2D-to-3D-style'}
GROUPS = ('imagenet:2d_to_2d', 'imagenet:3d_to_3d', 'imagenet:2d_to_3d',
          'small_cnn:2d_to_2d')
LOSS_NAMES = {'batch_classification': 'batch classification',
              'soft_triplet': "soft triplet (the LBF paper's form)"}

FLAGS = flags.FLAGS


def _define_flags() -> None:
  """Defined only when run as a command, so that tests can import `rows`
  beside the other table commands (which define flags of the same names)."""
  flags.DEFINE_string('recipe', 'cpu', 'Variant of configs/css.py for every row.')
  flags.DEFINE_list('groups', list(GROUPS), 'trunk:setting groups to run.')
  flags.DEFINE_list('models', list(MODELS), 'Models to run in each group.')
  flags.DEFINE_list('losses', list(LOSS_NAMES), 'Losses to run (soft_triplet: LBF big only).')
  flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds of LBF big and TIRG.')
  experiments.define_table_flags()
  flags.adopt_module_key_flags(experiments)  # --help lists them.


def rows(group: str, models: list[str], recipe: str = 'cpu',
         losses: tuple[str, ...] = tuple(LOSS_NAMES)) -> Iterator[tuple[str, str, str]]:
  """(model, config argument, row label) of a trunk:setting group, for the
  `losses` among LOSS_NAMES (soft_triplet rows: LBF big only)."""
  trunk, _, setting = group.partition(':')
  if trunk not in TRUNKS or setting not in SETTINGS:
    raise ValueError(f'--groups: {group!r}; use trunk:setting with trunk in '
                     f'{list(TRUNKS)} and setting in {list(SETTINGS)}.')
  trunk_variant, trunk_name = TRUNKS[trunk]
  for model in models:
    model_losses = ['batch_classification'] + (['soft_triplet'] if model == 'lbf_big' else [])
    for loss in (l for l in model_losses if l in losses):
      variants = [model, recipe, setting, trunk_variant,
                  'soft_triplet' if loss == 'soft_triplet' else '']
      arg = 'configs/css.py:' + ','.join(v for v in variants if v)
      label = (f'{SETTINGS[setting]}: {MODELS[model]} ({trunk_name}; '
               f'{LOSS_NAMES[loss]})')
      yield model, arg, label


def row_order(recipe: str = 'cpu') -> list[str]:
  """Config arguments of every row, in the table's order (groups as in
  GROUPS, models as in MODELS), whichever rows a command runs."""
  return [arg for group in GROUPS for _, arg, _ in rows(group, list(MODELS), recipe)]


def main(argv):
  experiments.check_table_args(argv, 'models', FLAGS.models, list(MODELS))
  experiments.check_table_args(argv, 'losses', FLAGS.losses, list(LOSS_NAMES))
  study = f'css_{FLAGS.recipe}'
  seeds = [int(s) for s in FLAGS.seeds]
  order = row_order(FLAGS.recipe)
  for group in FLAGS.groups:
    for model, arg, label in rows(group, FLAGS.models, FLAGS.recipe, tuple(FLAGS.losses)):
      experiments.run_seeds(study, arg, seeds if model in SEEDED_MODELS else seeds[:1],
                            FLAGS.set, label, FLAGS.results_root, FLAGS.workdir_root,
                            row=order.index(arg))
  experiments.report(study, FLAGS.results_root, FLAGS.readme)


if __name__ == '__main__':
  _define_flags()
  app.run(main)
