"""Results records and the tables built from them (sbir_jax/experiments.py)."""
import os
import platform

import pytest

from sbir_jax import experiments
from sbir_jax.core import records

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _record(label, seed, val, test1, test10, step=300):
  return {'label': label, 'seed': seed, 'task': 'fg_sbir', 'trained_steps': 500,
          'selected_step': step, 'train_seconds': 600.0,
          'val': {'acc@1': val}, 'test': {'acc@1': test1, 'acc@10': test10}}


def _table_lines(records):
  """The table of `records` as lines, the header's separator left out."""
  header, _, *rows = experiments.table(records).strip().split('\n')
  return [header, *rows]


def test_table_shows_mean_and_std_over_seeds_with_val_beside_test():
  assert _table_lines([_record('a', 1, 20.0, 30.0, 70.0, 400),
                       _record('a', 0, 10.0, 20.0, 60.0),
                       _record('b', 0, 5.0, 6.0, 7.0)]) == [
      '| run | seeds | val acc@1 | test acc@1 | test acc@10 | steps (selected) | train min / run |',
      '| a | 0,1 | 15.00 ± 7.07 | 25.00 ± 7.07 | 65.00 ± 7.07 | 500 (300/400) | 10.0 |',
      '| b | 0 | 5.00 | 6.00 | 7.00 | 500 (300) | 10.0 |']


def test_a_paper_column_shows_published_numbers_where_records_carry_them():
  assert _table_lines([dict(_record('a', 0, 1.0, 2.0, 3.0), paper={'acc@1': 52.17}),
                       _record('b', 0, 1.0, 2.0, 3.0)]) == [
      '| run | seeds | val acc@1 | test acc@1 | test acc@10 | paper acc@1 | steps (selected) '
      '| train min / run |',
      '| a | 0 | 1.00 | 2.00 | 3.00 | 52.17 | 500 (300) | 10.0 |',
      '| b | 0 | 1.00 | 2.00 | 3.00 | — | 500 (300) | 10.0 |']


def test_rows_follow_their_table_order_then_file_order():
  placed = [dict(_record('late', 0, 1.0, 1.0, 1.0), row=5),
            _record('unplaced', 0, 1.0, 1.0, 1.0),
            dict(_record('early', 0, 1.0, 1.0, 1.0), row=2)]
  labels = [line.split(' | ')[0][2:] for line in _table_lines(placed)[1:]]
  assert labels == ['early', 'late', 'unplaced']


def test_readme_block_is_replaced_and_a_missing_block_named():
  text = 'intro\n<!-- results:s -->\nold\n<!-- /results:s -->\nend\n'
  new = experiments.replace_block(text, 's', 'new\n')
  assert new == 'intro\n<!-- results:s -->\nnew\n<!-- /results:s -->\nend\n'
  assert experiments.current_block(new, 's') == 'new\n'
  with pytest.raises(ValueError, match='no block for study .t.'):
    experiments.replace_block(text, 't', 'x')


def test_run_names_are_file_names():
  assert experiments.run_name('configs/shoes.py:cpu,sampled_negatives',
                              ['num_train_steps=500'], 1) == (
                                  'shoes_cpu_sampled_negatives_num_train_steps-500_seed1')


def test_every_readme_table_equals_the_table_of_its_records():
  with open(os.path.join(REPO, 'README.md')) as f:
    readme = f.read()
  root = experiments.RESULTS_ROOT
  studies = sorted(s for s in os.listdir(root) if any(
      n.endswith('.json') for n in os.listdir(os.path.join(root, s))))
  assert studies, 'results/ holds no study'  # The README's tables come from here.
  for study in studies:
    expected = experiments.table(experiments.load_records(study))
    assert experiments.current_block(readme, study) == expected, (
        f'README table of {study} is stale: run python -m sbir_jax.experiments '
        f'table --study={study} --readme=README.md')
    for record in experiments.load_records(study):
      assert record['git']['commit'] and record['data'] and record['machine']


def test_machine_names_the_cpu_and_the_library_versions():
  # A seed repeats a run only on the same CPU and libraries (README, ablation table).
  info = records.machine()
  assert info['cpu'] and info['jax']
  # x86 generations share a brand name; /proc/cpuinfo tells them apart.
  if os.path.exists('/proc/cpuinfo') and platform.machine() == 'x86_64':
    assert info['cpu_id'].startswith('family ') and info['cpu_vector']
  assert info['packages']['flax'] and info['packages']['numpy']
  assert 'tensorflow-datasets' in info['packages']


def test_fingerprint_changes_with_content(tmp_path):
  (tmp_path / 'a.txt').write_text('one')
  first = records.fingerprint_files(str(tmp_path))
  (tmp_path / 'a.txt').write_text('two')
  second = records.fingerprint_files(str(tmp_path))
  assert first['files'] == second['files'] == 1
  assert first['sha256'] != second['sha256']


def test_zero_shot_baseline_rows_come_from_a_trained_record():
  from benchmarks import zs_tables
  record = {'label': 'CVAE (mean of samples)', 'seed': 0, 'task': 'zs_sbir',
            'trained_steps': 3000, 'selected_step': 3000, 'train_seconds': 60.0,
            'val': {'mAP@all': 0.3, 'untrained_mAP@all': 0.2},
            'test': {'mAP@all': 0.25, 'P@25': 0.2, 'untrained_mAP@all': 0.15,
                     'untrained_P@25': 0.13}}
  rows = zs_tables.baseline_records(record)
  assert list(rows) == ['untrained']  # ESZSL / SAE were not evaluated.
  assert rows['untrained']['test'] == {'mAP@all': 0.15, 'P@25': 0.13}
  lines = experiments.table([rows['untrained'], record]).strip().split('\n')
  assert lines[0].startswith('| run | seeds | val mAP@all | test mAP@all | test P@25 |')
  assert lines[2].endswith('| 0.200 | 0.150 | 0.130 | — | — |')
  assert lines[3].endswith('| 0.300 | 0.250 | 0.200 | 3000 (3000) | 1.0 |')
  record['test'].update({'kmeans_mAP@all': 0.24, 'kmeans_P@25': 0.19})
  kmeans = zs_tables.kmeans_record(record)
  assert kmeans['label'] == zs_tables.KMEANS_ROW and kmeans['trained_steps'] == 3000
  assert kmeans['test'] == {'mAP@all': 0.24, 'P@25': 0.19}


def test_zero_shot_rows_on_finetuned_features_are_named_and_configured_apart():
  """--features=finetuned_trunk: the same rows in the same table, each named
  for its features, configured with the fg_checkpoint extractor."""
  from benchmarks import zs_tables
  from configs import variants
  arg = zs_tables.config_arg('cpu', 'cvae', 'finetuned_trunk')
  assert arg == 'configs/zs_sketchy.py:finetuned_trunk,cpu,cvae,also_kmeans'
  config = variants.load_config(arg)
  assert config.features.extractor == 'fg_checkpoint' and config.features.dim == 256
  assert config.model.encoder_dims == (256, 128)  # The paper's widths x 256 / 4096.
  assert zs_tables.config_arg('cpu', 'cvae') == 'configs/zs_sketchy.py:cpu,cvae,also_kmeans'
  record = {'label': zs_tables.row_name('CVAE (mean of samples)', 'finetuned_trunk'),
            'val': {}, 'test': {'untrained_mAP@all': 0.3, 'kmeans_mAP@all': 0.4}}
  assert zs_tables.baseline_records(record, 'finetuned_trunk')['untrained']['label'] == (
      zs_tables.FINETUNED_COSINE_ROW)
  assert zs_tables.kmeans_record(record, 'finetuned_trunk')['label'].startswith(
      'CVAE (k-means centres of samples), features of')


def test_css_table_rows_configure_their_trunk_setting_and_loss():
  from benchmarks import css_table
  from configs import variants
  rows = list(css_table.rows('imagenet:2d_to_3d', ['lbf_big', 'tirg']))
  assert [r[0] for r in rows] == ['lbf_big', 'lbf_big', 'tirg']
  configs = [variants.load_config(arg) for _, arg, _ in rows]
  assert {c.data.setting for c in configs} == {'2d_to_3d'}
  assert {c.model.backbone for c in configs} == {'efficientnet_lite0_cached'}
  assert [c.loss.name for c in configs] == ['batch_classification', 'soft_triplet',
                                            'batch_classification']
  assert rows[1][2] == ("2D-to-3D-style: LBF big (frozen ImageNet Lite0, cached maps; "
                        "soft triplet (the LBF paper's form))")
  only_bc = css_table.rows('imagenet:2d_to_3d', ['lbf_big'], losses=('batch_classification',))
  assert [variants.load_config(arg).loss.name for _, arg, _ in only_bc] == [
      'batch_classification']
  scratch = variants.load_config(next(css_table.rows('small_cnn:2d_to_2d', ['concat']))[1])
  assert scratch.model.backbone == 'small_cnn' and scratch.data.setting == '2d_to_2d'
  with pytest.raises(ValueError, match='trunk:setting'):
    list(css_table.rows('imagenet:3d', ['tirg']))
  order = css_table.row_order()
  assert len(order) == len(set(order)) == 4 * (len(css_table.MODELS) + 1)
  assert order.index(rows[0][1]) < order.index(rows[2][1])  # LBF big before TIRG.


def test_dssa_table_rows_differ_from_the_results_recipe_in_the_papers_switches_only():
  from benchmarks import dssa_tables
  from configs import variants
  recipe = variants.load_config('configs/shoes.py:imagenet_cpu,hardest_negatives')
  switches = ('model.attention', 'model.attention_shortcut', 'model.coarse_fine_fusion',
              'loss.energy')
  expected = {  # Tables 2-5 of DSSA: (attention, shortcut, CFF, energy).
      'base': (False, True, False, 'euclidean'), 'cff': (False, True, True, 'euclidean'),
      'holef': (False, True, False, 'holef'), 'full': (True, True, True, 'holef'),
      'no_attention': (False, True, True, 'holef'), 'no_shortcut': (True, False, True, 'holef'),
      'euclidean': (True, True, True, 'euclidean'), 'weighted': (True, True, True, 'weighted'),
      'mahalanobis': (True, True, True, 'mahalanobis')}
  assert list(dssa_tables.ROWS) == list(expected)
  assert all(',' not in name for name in expected)  # --rows splits at commas.

  def switch_values(config):
    return tuple(config[k.split('.')[0]][k.split('.')[1]] for k in switches)

  for row, values in expected.items():
    config = variants.load_config(dssa_tables.config_arg('shoes', 'imagenet', row))
    assert switch_values(config) == values, row
    with config.unlocked():  # Everything else is the recipe's.
      for key, value in zip(switches, switch_values(recipe)):
        config[key.split('.')[0]][key.split('.')[1]] = value
    assert config.to_dict() == recipe.to_dict(), row
  assert dssa_tables.config_arg('chairs', 'sketch_a_net', 'base') == 'configs/chairs.py:cpu,base'


def test_dssa_table_records_get_the_papers_number_of_their_row(tmp_path):
  from benchmarks import dssa_tables
  assert all(list(rows) == list(dssa_tables.ROWS) for rows in dssa_tables.PAPER.values())
  study = tmp_path / 'dssa_tables_shoes_imagenet'
  study.mkdir()
  for row in ('base', 'no_shortcut'):
    experiments.write_record(str(study / f'{row}.json'), dict(
        _record(row, 0, 1.0, 2.0, 3.0), row=list(dssa_tables.ROWS).index(row)))
  dssa_tables.add_paper_numbers(study.name, 'shoes', str(tmp_path))
  records = {r['label']: r for r in experiments.load_records(study.name, str(tmp_path))}
  assert records['base']['paper'] == {'acc@1': 52.17, 'acc@10': 92.17}  # Table 2.
  assert records['no_shortcut']['paper'] == {'acc@1': 27.83}  # Table 4: acc@1 only.
  assert dssa_tables.paper_numbers('chair_v2', 'base') == {}  # Not in the paper.
