"""QMUL-Chair-V2: builder on the real files, stroke rendering, edge maps,
several-sketches-per-photo batches and evaluation, a tiny training run."""
import os
import pickle

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from configs import chair_v2
from sbir_jax.datasets import image_pipeline
from sbir_jax import edge_maps
from sbir_jax.tasks.fg_sbir import input_pipeline
from sbir_jax import safe_pickle
from sbir_jax.core import sharding
from sbir_jax.core import state as state_lib
from sbir_jax import strokes
from sbir_jax.core import task as task_lib
from sbir_jax.datasets import qmul_chair_v2
from tests import helpers


@pytest.fixture(scope='module')
def chair_dir() -> str:
  return helpers.require_data('qmul_chair_v2')


def _tiny(tfds_dir, chair_dir, variants='tiny'):
  return helpers.tiny_config('chairv2', tfds_dir, chair_dir, variants,
                             source='qmul_chair_v2')


@pytest.fixture(scope='module')
def chair(tfds_dir, chair_dir):
  config = _tiny(tfds_dir, chair_dir)
  return config, input_pipeline.load_splits(config.data)


# --- builder ------------------------------------------------------------------
def test_builder_reads_real_files(tfds_dir, chair_dir):
  builder = input_pipeline.build_builder(_tiny(tfds_dir, chair_dir).data)
  assert builder.info.splits['train'].num_examples == 952
  assert builder.info.splits['test'].num_examples == 323
  raw = safe_pickle.load_plain_pickle(os.path.join(chair_dir, 'ChairV2_Coordinate'))
  for split, num_photos in (('train', 300), ('test', 100)):
    names = {e['photo_name'] for e in tfds.as_numpy(
        builder.as_dataset(split=split).map(lambda e: {'photo_name': e['photo_name']}))}
    assert len(names) == num_photos
  example = next(iter(tfds.as_numpy(builder.as_dataset(split='test').take(1))))
  assert example['photo'].shape == (256, 256, 3) and example['photo'].dtype == np.uint8
  key = '/test/' + example['sketch_name'].decode()
  np.testing.assert_array_equal(example['strokes'], raw[key].astype(np.float32))
  assert key.startswith('/test/' + example['photo_name'].decode() + '_')


def test_sketch_without_photo_names_the_key(tmp_path):
  manual = tmp_path / 'manual'
  (manual / 'photo').mkdir(parents=True)
  Image.new('RGB', (256, 256), 'white').save(manual / 'photo' / 'chair_a.png')
  line = np.array([[10, 10, 0], [50, 50, 1]], np.float64)
  with open(manual / 'ChairV2_Coordinate', 'wb') as f:
    pickle.dump({'/train/chair_a_1': line, '/test/chair_b_7': line}, f)
  config = _tiny(str(tmp_path / 'tfds'), str(manual))
  with pytest.raises(qmul_chair_v2.QmulChairV2Error, match="'/test/chair_b_7'"):
    input_pipeline.build_builder(config.data)


def test_malformed_key_and_code_in_pickle_are_refused(tmp_path):
  with pytest.raises(qmul_chair_v2.QmulChairV2Error, match='not of the form'):
    qmul_chair_v2.parse_coordinates({'/val/a_1': np.zeros((2, 3))})
  path = tmp_path / 'evil'
  path.write_bytes(b'cos\nsystem\n(S"true"\ntR.')  # os.system('true')
  with pytest.raises(safe_pickle.UnsafePickleError, match='os.system'):
    qmul_chair_v2.read_coordinates(path)


def test_download_urls_follow_the_pickle(chair_dir, tmp_path):
  """Offline: a stand-in download manager serves the shared files by URL."""

  class LocalDownloads:
    requested = []

    @property
    def manual_dir(self):
      raise AssertionError('no manual dir')  # What TFDS does without one.

    def download(self, urls):
      def local(url):
        self.requested.append(url)
        rel = url[len(qmul_chair_v2._REPO_URL) + 1:]
        return os.path.join(chair_dir, *rel.split('/'))
      return {k: local(u) for k, u in urls.items()} if isinstance(urls, dict) else local(urls)

  dl = LocalDownloads()
  builder = qmul_chair_v2.QmulChairV2(data_dir=str(tmp_path))
  entries, photos = builder._locate_files(dl)
  assert dl.requested[0].endswith('/data/chairv2/ChairV2_Coordinate')
  assert len(entries) == 1275 and len(photos) == 400 == len(dl.requested) - 1
  assert all(os.path.exists(p) for p in photos.values())


# --- rendering and edge maps ---------------------------------------------------
def test_strokes_render_where_drawn_and_pen_up_breaks_them():
  # Two horizontal strokes; pen up after (50, 10), so no line to (10, 50).
  points = np.array([[10, 10, 0], [50, 10, 1], [10, 50, 0], [50, 50, 1]], float)
  image = strokes.render_strokes(points, 256, stroke_width=1)
  assert image.shape == (256, 256) and image.dtype == np.uint8
  assert image[10, 30] == 0 and image[50, 30] == 0  # (row y, column x)
  assert image[30, 30] == 255  # The diagonal a missing pen-up would draw.
  assert image[12, 30] == 255 and (image == 0).sum() < 100
  wide = strokes.render_strokes(points, 256, stroke_width=5)
  assert wide[12, 30] == 0 and wide[30, 30] == 255
  half = strokes.render_strokes(points, 128, stroke_width=1)  # Coordinates scale.
  assert half[5, 15] == 0 and half[25, 15] == 0
  dot = strokes.render_strokes(np.array([[100, 60, 1]], float), 256, 3)
  assert dot[60, 100] == 0 and (dot == 0).sum() < 20
  with pytest.raises(ValueError, match=r'\(points, 3\)'):
    strokes.render_strokes(np.zeros((4, 2)))


def test_edge_map_of_a_square_is_its_border():
  image = np.full((64, 64, 3), 255, np.uint8)
  image[20:44, 20:44] = (40, 90, 160)
  edges = edge_maps.edge_map(image)
  assert edges.shape == (64, 64) and edges.dtype == np.uint8
  assert set(np.unique(edges)) == {0, 255}
  for row, col in ((19, 32), (44, 32), (32, 19), (32, 44)):  # The four sides.
    assert (edges[row - 1:row + 2, col] == 0).any() or (edges[row, col - 1:col + 2] == 0).any()
  assert (edges[26:38, 26:38] == 255).all()  # Flat inside: white.
  assert (edges[:14] == 255).all() and (edges[:, 50:] == 255).all()  # Outside.
  assert (edge_maps.edge_map(np.full((16, 16, 3), 7, np.uint8)) == 255).all()
  np.testing.assert_array_equal(edge_maps.edge_maps(image[None])[0, ..., 0], edges)


# --- pipeline and evaluation ----------------------------------------------------
def test_splits_by_photo(chair):
  config, splits = chair
  train_, val, test = splits['train'], splits['val'], splits['test']
  assert (train_.num_photos, val.num_photos, test.num_photos) == (270, 30, 100)
  assert len(train_) + len(val) == 952 and len(test) == 323
  size = config.data.load_size
  assert train_.photos.shape == (270, size, size, 1)  # photo_input='edge'.
  assert test.sketches.shape == (323, size, size, 1)
  for split in (train_, val, test):
    # Every photo has a sketch; photo_index is sorted by construction.
    np.testing.assert_array_equal(np.unique(split.photo_index), np.arange(split.num_photos))


def test_rgb_photos_and_true_match_batches(chair, tfds_dir, chair_dir):
  config = _tiny(tfds_dir, chair_dir)
  config.data.photo_input = 'rgb'
  config.data.flip = False
  config.data.crop_size = config.data.load_size  # No crop: photos unchanged.
  splits = input_pipeline.load_splits(config.data)
  train_ = splits['train']
  assert train_.photos.shape[-1] == 3
  np.testing.assert_array_equal(train_.photo_index, chair[1]['train'].photo_index)
  batch = next(image_pipeline.iterate(input_pipeline.triplet_dataset(
      train_, config.data, global_batch_size=16, seed=0)))
  np.testing.assert_array_equal(batch['positive_id'], train_.photo_index[batch['sketch_id']])
  np.testing.assert_array_equal(batch['match_id'], batch['positive_id'])
  assert (batch['negative_id'] != batch['positive_id']).all()
  np.testing.assert_array_equal(batch['positive'], train_.photos[batch['positive_id']])
  np.testing.assert_array_equal(batch['negative'], train_.photos[batch['negative_id']])
  np.testing.assert_array_equal(batch['sketch'], train_.sketches[batch['sketch_id']])


def test_eval_scores_every_sketch_against_every_photo(chair):
  config, splits = chair
  config = config.copy_and_resolve_references()
  config.eval.num_views = 1
  mesh = sharding.make_mesh()
  task = task_lib.make_task(config, mesh)
  task.__dict__['splits'] = splits  # Reuse the loaded splits.
  variables = state_lib.variables_of(*task.init_variables(jax.random.key(0)))
  energy = task.energy_matrix(variables, 'test')
  assert energy.shape == (323, 100) and np.isfinite(energy).all()
  metrics = helpers.evaluate_split(config, task, variables, 'test')
  assert 0 <= metrics['acc@1'] <= metrics['acc@10'] <= 100


def test_config_variants(chair_dir):
  for variants in ('cpu', 'tiny', 'base,true_match', 'cpu,batch_negatives'):
    config = chair_v2.get_config(variants)
    assert config.data.source == 'qmul_chair_v2'
    assert config.data.triplet_sampling == 'true_match'  # No annotation.
  assert os.path.samefile(chair_v2.get_config().data.manual_dir, chair_dir)
