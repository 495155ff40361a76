"""Sketch pre-training: the TU-Berlin / QuickDraw builder on the real files,
the classification task, and warm-starting DSSA from it (init_from, frozen)."""
import json

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import sketch_pretrain
from sbir_jax.core import checkpointing
from sbir_jax.core import optim
from sbir_jax.core import trainer
from sbir_jax.core import warm_start
from sbir_jax.datasets import sketch_classes
from tests import helpers


def _prepared(name: str, manual_dir: str, tfds_dir: str) -> tfds.core.DatasetBuilder:
  builder = sketch_classes.SketchClasses(config=name, data_dir=tfds_dir)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder


def test_tu_berlin_builder_reads_the_real_subset(tfds_dir):
  builder = _prepared('tu_berlin', helpers.require_data('tu_berlin_40'), tfds_dir)
  assert builder.info.splits['train'].num_examples == 40 * 70
  assert builder.info.splits['test'].num_examples == 40 * 10
  example = next(iter(tfds.as_numpy(builder.as_dataset(split='test'))))
  assert example['image'].shape == (150, 150, 1)
  # Dark strokes on white: mostly white pixels, some dark ones.
  assert np.median(example['image']) == 255 and example['image'].min() < 100


def test_quickdraw_builder_inverts_the_real_bitmaps(tfds_dir):
  builder = _prepared('quickdraw', helpers.require_data('quickdraw_14'), tfds_dir)
  assert builder.info.splits['train'].num_examples == 14 * 289
  assert builder.info.splits['test'].num_examples == 14 * 10
  labels = {e['label'] for e in tfds.as_numpy(builder.as_dataset(split='test'))}
  assert len(labels) == 14
  image = next(iter(tfds.as_numpy(builder.as_dataset(split='train'))))['image']
  assert image.shape == (28, 28, 1) and np.median(image) == 255


def test_official_tu_berlin_layout_is_split_per_class(tmp_path):
  for name in ('cat', 'dog'):
    (tmp_path / 'png' / name).mkdir(parents=True)
    for i in range(20):
      (tmp_path / 'png' / name / f'{i}.png').touch()
  root = sketch_classes.epath.Path(tmp_path)
  test = sketch_classes._tu_berlin_files(root, 'test')
  train = sketch_classes._tu_berlin_files(root, 'train')
  assert len(test) == 4 and len(train) == 36
  assert not {p for _, p in test} & {p for _, p in train}


def test_missing_quickdraw_dir_says_what_to_put_there(tmp_path):
  builder = sketch_classes.SketchClasses(config='quickdraw', data_dir=str(tmp_path / 'tfds'))
  empty = tmp_path / 'empty'
  empty.mkdir()
  with pytest.raises(sketch_classes.SketchClassesError, match='quickdraw_dir'):
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(empty)))


def test_merge_matching_copies_only_same_name_and_shape():
  params = {'trunk': {'conv1': {'kernel': np.zeros((3, 3))}},
            'fc6': {'kernel': np.zeros((4, 2))}, 'fc7': {'kernel': np.zeros(2)}}
  loaded = {'trunk': {'conv1': {'kernel': np.ones((3, 3))}},
            'fc6': {'kernel': np.ones((5, 2))}, 'classifier': {'kernel': np.ones(7)}}
  merged, copied, fresh = warm_start.merge_matching(params, loaded)
  assert copied == ['trunk/conv1/kernel']
  assert sorted(fresh) == ['fc6/kernel', 'fc7/kernel']
  np.testing.assert_array_equal(merged['trunk']['conv1']['kernel'], 1)
  np.testing.assert_array_equal(merged['fc6']['kernel'], 0)


def test_frozen_prefix_gets_no_update_and_unknown_prefix_is_refused():
  params = {'trunk': {'conv1': {'kernel': np.ones(3)}, 'conv5': {'kernel': np.ones(3)}}}
  config = sketch_pretrain.get_config('cpu')
  opt, steps = config.optimizer, config.num_train_steps
  tx = optim.make_optimizer(opt, steps, frozen=('trunk/conv1',))
  grads = jax.tree.map(np.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_array_equal(updates['trunk']['conv1']['kernel'], 0)
  assert np.all(np.asarray(updates['trunk']['conv5']['kernel']) != 0)
  with pytest.raises(ValueError, match='trunk/conv9'):
    optim.make_optimizer(opt, steps, frozen=('trunk/conv9',)).init(params)


def test_pretrain_then_warm_start_dssa_with_frozen_conv1_4(tfds_dir, qmul_v1_dir, tmp_path):
  pre = sketch_pretrain.get_config('tiny')
  pre.data.tu_berlin_dir = helpers.require_data('tu_berlin_40')
  pre.data.tfds_data_dir = tfds_dir
  pre_dir = str(tmp_path / 'pretrain')
  results = trainer.train_and_evaluate(pre, pre_dir)
  assert 0 <= results['test_acc@1'] <= results['test_acc@5'] <= 100

  fine = helpers.tiny_config('shoes', tfds_dir, qmul_v1_dir, 'tiny,freeze_conv1_4')
  fine.init_from = pre_dir
  fine_dir = str(tmp_path / 'fine')
  trainer.train_and_evaluate(fine, fine_dir)
  summary = json.loads((tmp_path / 'fine' / 'results.json').read_text())['warm_start']
  assert set(summary['init_from_copied']) == {
      f'trunk/conv{i}/{w}' for i in range(1, 6) for w in ('kernel', 'bias')} | {
          'fc6/kernel', 'fc6/bias'}
  source = warm_start.load_params(pre_dir)
  tuned = checkpointing.load_on_one_device(fine_dir)['params']
  for i in range(1, 5):  # Frozen: still the pre-trained values.
    np.testing.assert_array_equal(tuned['trunk'][f'conv{i}']['kernel'],
                                  source['trunk'][f'conv{i}']['kernel'])
  # conv5 was copied, then trained.
  assert not np.array_equal(tuned['trunk']['conv5']['kernel'],
                            source['trunk']['conv5']['kernel'])


def test_init_from_a_folder_without_checkpoints_is_refused(tfds_dir, qmul_v1_dir, tmp_path):
  fine = helpers.tiny_config('shoes', tfds_dir, qmul_v1_dir)
  fine.init_from = str(tmp_path / 'nowhere')
  with pytest.raises(checkpointing.CheckpointError, match='sketch_pretrain'):
    trainer.train_and_evaluate(fine, str(tmp_path / 'fine'))
