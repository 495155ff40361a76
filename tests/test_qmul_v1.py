"""The QMUL V1 builder on the real shared files, and its errors on bad files."""
import os

import numpy as np
import pytest
import scipy.io
import tensorflow_datasets as tfds

from sbir_jax.tasks.fg_sbir import input_pipeline
from sbir_jax.datasets import qmul_v1
from tests import helpers


@pytest.mark.parametrize('dataset,train,test,annotated', [
    ('shoes', 304, 115, True), ('handbags', 400, 168, False)])
def test_builder_reads_real_files(dataset, train, test, annotated, tfds_dir, qmul_v1_dir):
  builder = input_pipeline.build_builder(
      helpers.tiny_config(dataset, tfds_dir, qmul_v1_dir).data)
  assert builder.info.splits['train'].num_examples == train
  assert builder.info.splits['test'].num_examples == test
  example = next(iter(tfds.as_numpy(builder.as_dataset(split='test'))))
  assert example['sketch'].shape == (256, 256, 1)
  assert example['photo'].dtype == np.uint8
  raw = scipy.io.loadmat(os.path.join(qmul_v1_dir, dataset,
                                      f'{dataset}_sketch_db_test.mat'))['data']
  np.testing.assert_array_equal(example['sketch'][..., 0], raw[example['instance_id']])
  if annotated:  # Every test sketch has 45 human-annotated pairs.
    assert example['triplets'].shape == (45, 2)
  else:
    assert example['triplets'].shape == (0, 2)


def test_val_split_is_carved_from_train(tfds_dir, qmul_v1_dir):
  splits = input_pipeline.load_splits(helpers.tiny_config('shoes', tfds_dir, qmul_v1_dir).data)
  assert len(splits['train']) + len(splits['val']) == 304
  assert len(splits['val']) == 30
  assert len(splits['test']) == 115
  # Remaining annotated pairs only name train photos.
  train = splits['train']
  assert train.pairs.max() < len(train)
  assert train.num_pairs.max() <= 135 and train.num_pairs.min() > 0


def _write_mat(path, **arrays):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  scipy.io.savemat(path, arrays)


def _fake_handbags(root, sketch_train):
  ok = np.full((2, 256, 256), 255, np.uint8)
  for kind in ('sketch', 'edge'):
    for split in ('train', 'test'):
      _write_mat(os.path.join(root, 'handbags', f'handbags_{kind}_db_{split}.mat'), data=ok)
  _write_mat(os.path.join(root, 'handbags', 'handbags_sketch_db_train.mat'), **sketch_train)


@pytest.mark.parametrize('content,message', [
    ({'images': np.zeros((2, 256, 256), np.uint8)}, 'no key "data"'),
    ({'data': np.zeros((2, 128, 128), np.uint8)}, 'expected'),
])
def test_malformed_mat_is_refused(tmp_path, content, message):
  _fake_handbags(str(tmp_path / 'manual'), content)
  config = helpers.tiny_config('handbags', str(tmp_path / 'tfds'), str(tmp_path / 'manual'))
  with pytest.raises(qmul_v1.QmulV1Error, match=message):
    input_pipeline.build_builder(config.data)


def test_missing_data_dir_says_how_to_fix(tmp_path):
  config = helpers.tiny_config('shoes', str(tmp_path / 'tfds'), str(tmp_path / 'nowhere'))
  with pytest.raises(FileNotFoundError, match='SBIR_JAX_DATA'):
    input_pipeline.build_builder(config.data)


def test_wrong_data_dir_names_missing_files(tmp_path):
  (tmp_path / 'manual' / 'other').mkdir(parents=True)
  config = helpers.tiny_config('chairs', str(tmp_path / 'tfds'), str(tmp_path / 'manual'))
  with pytest.raises(qmul_v1.QmulV1Error, match='chairs_sketch_db_train.mat'):
    input_pipeline.build_builder(config.data)
