"""Sketchy builder (real airplane class + generated classes), TU-Berlin and QuickDraw loaders."""
import os

import numpy as np
import pytest

from sbir_jax.datasets import quickdraw
from sbir_jax.datasets import sketchy
from sbir_jax.datasets import tu_berlin
from tests import helpers
from tests import zs_helpers


@pytest.fixture(scope='module')
def airplane_builder(tmp_path_factory):
  """The real class, exactly as shared (image/airplane, sketch/airplane)."""
  root = helpers.require_data('sketchy_airplane')
  return sketchy.build(root, str(tmp_path_factory.mktemp('tfds_airplane')))


def test_real_airplane_class(airplane_builder):
  sketches = sketchy.image_set(airplane_builder, 'sketch')
  photos = sketchy.image_set(airplane_builder, 'photo')
  assert (len(photos), len(sketches)) == (100, 709)
  assert set(sketches.labels) == set(photos.labels) == {'airplane'}
  assert len(set(sketches.ids)) == 709
  # Every sketch names the photo it was drawn from, and that photo exists.
  assert set(sketches.photo_ids) <= set(photos.ids)
  i = int(np.flatnonzero(sketches.ids == 'airplane/n02691156_10151-1')[0])
  assert sketches.photo_ids[i] == 'airplane/n02691156_10151'
  # Images decode as RGB at the requested size, in the order asked for.
  batch = next(photos.reader(np.array([0, 5]), 64, 8))
  assert batch.shape == (2, 64, 64, 3) and batch.dtype == np.uint8
  assert 'extended' not in airplane_builder.info.splits


def test_several_classes_and_zero_shot_split(tmp_path):
  root = zs_helpers.make_sketchy_dir(str(tmp_path / 'sketchy'),
                                     helpers.require_data('sketchy_airplane'),
                                     extended=True)
  builder = sketchy.build(root, str(tmp_path / 'tfds'))
  sketches = sketchy.image_set(builder, 'sketch')
  extended = sketchy.image_set(builder, 'extended')
  assert set(sketches.labels) == {'airplane', 'ant', 'bat', 'cabin'}
  assert np.sum(sketches.labels == 'bat') == 12
  assert set(extended.labels) == {'ant', 'bat', 'cabin'}
  split = zs_helpers.write_split_file(str(tmp_path / 'split.txt'))
  seen, unseen = sketchy.zero_shot_split(sketches.labels,
                                         sketchy.read_unseen_classes(split), root)
  assert seen == ['airplane', 'ant'] and unseen == ['bat', 'cabin']
  sketchy.check_gallery(extended.labels, unseen, 'extended')


def test_real_split_file_lists_21_unseen_classes():
  path = os.path.join(helpers.require_data('zeroshot_splits'),
                      'zeroshot_classes_sketchy.txt')
  unseen = sketchy.read_unseen_classes(path)
  assert len(unseen) == 21 and 'airplane' not in unseen
  # On the one real class, every unseen class is missing: named in the error.
  with pytest.raises(sketchy.SketchyError, match=r"21 class\(es\) missing.*'bat'"):
    sketchy.zero_shot_split(['airplane'], unseen, 'sketchy_airplane')


def test_gallery_without_an_unseen_class_is_named():
  with pytest.raises(sketchy.SketchyError, match=r"no photo of unseen class\(es\) \['cabin'\]"):
    sketchy.check_gallery(np.array(['bat', 'ant']), ['bat', 'cabin'], 'extended')


def test_data_prepared_from_another_dir_is_not_reused(airplane_builder, tmp_path):
  root = zs_helpers.make_sketchy_dir(str(tmp_path / 's'), None, photos_per_class=1)
  tfds_dir = os.path.dirname(os.path.dirname(airplane_builder.data_dir))  # <dir>/sketchy/1.0.0
  with pytest.raises(sketchy.SketchyError, match='was prepared from'):
    sketchy.build(root, tfds_dir)


def test_sketch_without_its_photo_is_refused(tmp_path):
  root = zs_helpers.make_sketchy_dir(str(tmp_path / 's'), None, photos_per_class=2)
  os.remove(os.path.join(root, 'photo', 'bat', 'gen_bat_1.jpg'))
  with pytest.raises(sketchy.SketchyError, match="drawn from photo 'gen_bat_1'"):
    sketchy.build(root, str(tmp_path / 'tfds'))


def test_missing_manual_dir_says_what_to_set(tmp_path):
  with pytest.raises(FileNotFoundError, match='config.data.manual_dir'):
    sketchy.build(str(tmp_path / 'nowhere'), str(tmp_path / 'tfds'))
  os.makedirs(tmp_path / 'empty')
  with pytest.raises(sketchy.SketchyError, match='photo/<class>'):
    sketchy.locate(str(tmp_path / 'empty'))


def test_tu_berlin_real_files():
  root = helpers.require_data('tu_berlin_40')
  assert len(tu_berlin.classes(root)) == 40
  s = tu_berlin.load(root, ('train', 'test'), ['ant', 'camel'])
  assert len(s) == 160
  assert s.ids[0] == 'train/ant/251' and set(s.labels) == {'ant', 'camel'}
  images = next(s.reader(np.arange(3), 32, 8))
  assert images.shape == (3, 32, 32, 3)
  assert np.median(images) == 255  # White paper, dark strokes.
  with pytest.raises(FileNotFoundError, match='no class folder'):
    tu_berlin.load(root, ('train',), ['unicorn'])


def test_quickdraw_real_files_are_inverted_to_dark_on_white():
  root = helpers.require_data('quickdraw_14')
  assert len(quickdraw.classes(root)) == 14
  s = quickdraw.load(root, ('train', 'test'), ['ant'])
  assert len(s) == 299 and s.ids[289] == 'test/ant/000000'
  raw = np.load(os.path.join(root, 'quickdraw-train', 'ant.npy'))[0].reshape(28, 28)
  image = next(s.reader(np.array([0]), 28, 1))[0]
  np.testing.assert_array_equal(image[..., 0], 255 - raw)


def test_bad_quickdraw_file_is_named(tmp_path):
  os.makedirs(tmp_path / 'quickdraw-train')
  np.save(tmp_path / 'quickdraw-train' / 'ant.npy', np.zeros((3, 10), np.float32))
  with pytest.raises(ValueError, match='ant.npy holds float32'):
    quickdraw.load(str(tmp_path), ('train',))
