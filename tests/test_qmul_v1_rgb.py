"""Shoe V1 with RGB photos: builder on the real files, same shoes and val split
as qmul_v1, RGB or edge-map photos, and its errors."""
import json
import os

import numpy as np
import pytest
import scipy.io
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from configs import shoes_rgb
from sbir_jax.tasks.fg_sbir import input_pipeline
from sbir_jax.datasets import qmul_v1_rgb
from tests import helpers


@pytest.fixture(scope='module')
def rgb_dir() -> str:
  return helpers.require_data('qmul_v1_rgb')


def _tiny(tfds_dir, rgb_dir):
  return helpers.tiny_config('shoes', tfds_dir, rgb_dir, source='qmul_v1_rgb')


def test_builder_reads_real_files(tfds_dir, rgb_dir, qmul_v1_dir):
  builder = input_pipeline.build_builder(_tiny(tfds_dir, rgb_dir).data)
  assert builder.info.splits['train'].num_examples == 304
  assert builder.info.splits['test'].num_examples == 115
  test = sorted(tfds.as_numpy(builder.as_dataset(split='test')),
                key=lambda e: e['instance_id'])
  assert test[0]['photo'].shape == (256, 256, 3) and test[0]['sketch'].shape == (256, 256, 1)
  assert all(e['triplets'].shape == (45, 2) for e in test)
  # The RGBA sketches are exactly the QMUL V1 sketches, in the same order.
  v1 = scipy.io.loadmat(os.path.join(qmul_v1_dir, 'shoes', 'shoes_sketch_db_test.mat'))['data']
  np.testing.assert_array_equal(np.stack([e['sketch'][..., 0] for e in test]), v1)
  jpeg = np.asarray(Image.open(os.path.join(rgb_dir, 'shoes', 'test', 'images', '305.jpg')))
  np.testing.assert_array_equal(test[0]['photo'], jpeg)


def test_rgb_and_edge_photos_with_the_v1_val_split(tfds_dir, rgb_dir, qmul_v1_dir):
  config = _tiny(tfds_dir, rgb_dir)
  config.data.photo_input = 'rgb'
  rgb = input_pipeline.load_splits(config.data)
  config.data.photo_input = 'edge'
  edge = input_pipeline.load_splits(config.data)
  v1 = input_pipeline.load_splits(helpers.tiny_config('shoes', tfds_dir, qmul_v1_dir).data)
  size = config.data.load_size
  for name in ('train', 'val', 'test'):
    assert rgb[name].photos.shape == (len(v1[name]), size, size, 3)
    assert edge[name].photos.shape == (len(v1[name]), size, size, 1)
    # Same shoes, same carving: identical sketches and re-indexed annotations.
    np.testing.assert_array_equal(rgb[name].sketches, v1[name].sketches)
    np.testing.assert_array_equal(rgb[name].pairs, v1[name].pairs)
    np.testing.assert_array_equal(rgb[name].photo_index, np.arange(len(v1[name])))
  # Edge maps: dark lines on white, like the V1 edge maps.
  dark = (edge['test'].photos < 128).mean()
  assert 0.005 < dark < 0.1 and np.median(edge['test'].photos) == 255


def test_qmul_v1_cannot_give_rgb(tfds_dir, qmul_v1_dir):
  config = helpers.tiny_config('shoes', tfds_dir, qmul_v1_dir)
  config.data.photo_input = 'rgb'
  with pytest.raises(ValueError, match='qmul_v1_rgb'):
    input_pipeline.load_splits(config.data)
  config.data.photo_input, config.data.source = 'edge', 'qmul_v3'
  with pytest.raises(ValueError, match='config.data.source'):
    input_pipeline.load_splits(config.data)


def test_missing_images_are_named(tmp_path, rgb_dir):
  annotation = tmp_path / 'manual' / 'shoes' / 'annotation'
  annotation.mkdir(parents=True)
  with open(os.path.join(rgb_dir, 'shoes', 'annotation', 'shoes_annotation.json')) as f:
    (annotation / 'shoes_annotation.json').write_text(f.read())
  config = _tiny(str(tmp_path / 'tfds'), str(tmp_path / 'manual'))
  with pytest.raises(qmul_v1_rgb.QmulV1RgbError, match=r'838 files .* missing.*images/305.jpg'):
    input_pipeline.build_builder(config.data)
  (annotation / 'shoes_annotation.json').write_text(json.dumps({'train': {}}))
  with pytest.raises(qmul_v1_rgb.QmulV1RgbError, match='images, sketches, triplets'):
    input_pipeline.build_builder(config.data)


def test_transparent_sketch_pixels_become_white(tmp_path):
  rgba = np.zeros((256, 256, 4), np.uint8)  # Transparent black everywhere...
  rgba[100, :, 3] = 255  # ...but one opaque black row.
  Image.fromarray(rgba, 'RGBA').save(tmp_path / 's.png')
  grey = qmul_v1_rgb.load_image(epath.Path(tmp_path / 's.png'), 'L')
  assert (grey[100] == 0).all() and (np.delete(grey, 100, axis=0) == 255).all()


def test_config_variants(rgb_dir):
  for variants in ('cpu', 'tiny', 'base'):
    config = shoes_rgb.get_config(variants)
    assert config.data.source == 'qmul_v1_rgb' and config.data.dataset == 'shoes'
  assert shoes_rgb.get_config().data.triplet_sampling == 'annotated'
  assert os.path.samefile(shoes_rgb.get_config().data.manual_dir, rgb_dir)
