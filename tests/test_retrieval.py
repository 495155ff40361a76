"""Retrieval at scale: sharded exact top-K, scores, gallery files, query images,
and `--mode=retrieve` end to end on real Shoe V1 (8 simulated devices)."""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import scipy.io
from PIL import Image

from sbir_jax.tasks.fg_sbir import gallery_file
from sbir_jax.tasks.fg_sbir import gallery_index
from sbir_jax.tasks.fg_sbir import query_images
from sbir_jax.tasks.fg_sbir import retrieval
from sbir_jax.tasks.fg_sbir import scoring
from sbir_jax.core import sharding
from sbir_jax.core import task as task_lib
from sbir_jax.core import trainer
from sbir_jax.models import energies
from tests import helpers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _reference_scores(kind, W, q_BxD, g_NxD):
  """Scores by the definitions (outer differences), independent of retrieval."""
  diff_BxNxD = q_BxD[:, None, :] - g_NxD[None, :, :]
  if kind == 'inner_product':
    return q_BxD @ g_NxD.T
  if kind == 'euclidean':
    return -np.sum(diff_BxNxD ** 2, axis=-1)
  if kind == 'holef':
    return -np.asarray(energies.holef_literal(W, q_BxD, g_NxD))
  return -np.sum((diff_BxNxD @ W.T) ** 2, axis=-1)  # mahalanobis


@pytest.mark.parametrize('kind', scoring.SCORE_KINDS)
def test_sharded_top_k_equals_numpy_argsort(kind):
  assert jax.device_count() == 8
  rng = np.random.default_rng(0)
  # 37 rows on 8 devices: 5 per device, 3 padding rows that must never win.
  g_NxD = rng.standard_normal((37, 6)).astype(np.float32)
  q_BxD = rng.standard_normal((4, 6)).astype(np.float32)
  W = (np.eye(6) + 0.3 * rng.standard_normal((6, 6))).astype(np.float32)
  scorer = scoring.Scorer(kind, W if kind in ('holef', 'mahalanobis') else None)
  index = gallery_index.GalleryIndex(g_NxD, scorer, sharding.make_mesh())
  expected = _reference_scores(kind, W, q_BxD, g_NxD)
  order = np.argsort(-expected, axis=1, kind='stable')
  for k in (1, 5, 7, 37):  # 7 > rows per device; 37 = the whole gallery.
    top, idx = index.search(q_BxD, k)
    np.testing.assert_array_equal(idx, order[:, :k])
    np.testing.assert_allclose(top, np.take_along_axis(expected, order[:, :k], 1),
                               rtol=1e-4, atol=1e-4)
  assert index.rank_of(q_BxD[:1], int(order[0, 3])) == 3
  with pytest.raises(ValueError, match='gallery size 37'):
    index.search(q_BxD, 38)


@pytest.mark.parametrize('kind', energies.ENERGIES)
def test_scores_are_minus_the_model_energy(kind):
  dim = 6
  module = energies.Energy(kind, dim)
  s = jax.random.normal(jax.random.key(1), (4, dim))
  p = jax.random.normal(jax.random.key(2), (9, dim))
  params = module.init(jax.random.key(0), s, s)
  # Away from the identity so HOLEF's off-diagonal terms count.
  params = jax.tree.map(
      lambda x: x + 0.3 * jax.random.normal(jax.random.key(7), x.shape), params)
  energy = np.asarray(module.apply(params, s, p, method=energies.Energy.pairwise))
  scorer = scoring.scorer_for_energy(kind, params['params'] if params else None)
  np.testing.assert_allclose(scoring.scores(scorer, s, p), -energy,
                             rtol=1e-4, atol=1e-4)
  index = gallery_index.GalleryIndex(np.asarray(p), scorer, sharding.make_mesh())
  top, idx = index.search(np.asarray(s), 9)
  np.testing.assert_allclose(top, np.take_along_axis(-energy, idx, 1), rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(idx, np.argsort(energy, axis=1, kind='stable'))


@pytest.fixture(scope='module')
def tiny_task(tfds_dir, qmul_v1_dir):
  config = helpers.tiny_config('shoes', tfds_dir, qmul_v1_dir)
  config.eval.num_views = 1
  mesh = sharding.make_mesh()
  task = task_lib.make_task(config, mesh)
  state = trainer.create_state(task, config, mesh)
  return config, task, state


def test_fg_sbir_ranking_equals_energy_matrix_on_one_view(tiny_task):
  config, task, state = tiny_task
  energy_QxG = task.energy_matrix(state.variables, 'test')  # Centre view (num_views=1).
  split = task.splits['test']
  crop = config.data.crop_size
  embed = lambda images: task.embed_images(state.variables, images)
  gallery = retrieval.embed_gallery(
      embed, len(split), lambda a, b: query_images.centre_crop(split.photos[a:b], crop),
      chunk_size=48)
  queries = embed(query_images.centre_crop(split.sketches, crop))
  scorer = scoring.scorer_for_energy(config.loss.energy, state.params['energy'])
  assert scorer.kind == 'holef'
  index = gallery_index.GalleryIndex(gallery, scorer, task.mesh)
  top, idx = index.search(queries, 10)
  # Same best-10 energies as the evaluator's matrix, and the returned rows
  # are the ones with those energies (robust to float near-ties).
  np.testing.assert_allclose(top, -np.sort(energy_QxG, axis=1)[:, :10],
                             rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.take_along_axis(energy_QxG, idx, 1), -top,
                             rtol=1e-4, atol=1e-4)
  agree = np.mean(idx == np.argsort(energy_QxG, axis=1)[:, :10])
  assert agree > 0.98


def test_gallery_file_round_trip_and_refusals(tiny_task, tmp_path):
  config, task, state = tiny_task
  params = state.params
  fingerprint = gallery_file.model_fingerprint(config, task.model.output_dim, params)
  rng = np.random.default_rng(0)
  gallery = gallery_file.Gallery(
      rng.standard_normal((5, task.model.output_dim)).astype(np.float32),
      np.array(['a.jpg', 'b.jpg', 'c.jpg', 'd.jpg', 'e.jpg']), fingerprint, '/photos')
  path = str(tmp_path / 'gallery.npz')
  gallery_file.save_gallery(path, gallery)
  loaded = gallery_file.load_gallery(path, fingerprint)
  np.testing.assert_array_equal(loaded.embeddings, gallery.embeddings)
  assert list(loaded.ids) == list(gallery.ids)
  assert loaded.fingerprint == fingerprint and loaded.source == '/photos'

  # Other weights (e.g. another checkpoint): refused, naming what differs.
  other_params = jax.tree.map(lambda x: x + 1.0, params)
  other = gallery_file.model_fingerprint(config, task.model.output_dim, other_params)
  with pytest.raises(gallery_file.GalleryMismatchError, match='params_hash'):
    gallery_file.load_gallery(path, other)
  # Another embedding size: refused on the dimension.
  small = dict(fingerprint, embedding_dim=8)
  with pytest.raises(gallery_file.GalleryMismatchError, match='holds 48-d.*embeds 8-d'):
    gallery_file.load_gallery(path, small)
  # Not a gallery file at all.
  junk = tmp_path / 'junk.npz'
  junk.write_bytes(b'not a zip')
  with pytest.raises(gallery_file.GalleryMismatchError, match='not a gallery file'):
    gallery_file.load_gallery(str(junk))


def test_query_files_are_refused_or_converted(tmp_path):
  text = tmp_path / 'notes.txt'
  text.write_text('this is not a sketch')
  with pytest.raises(query_images.ImageFileError, match=r'notes\.txt is not an image'):
    query_images.load_query(str(text), 112)
  empty = tmp_path / 'empty.png'
  empty.write_bytes(b'')
  with pytest.raises(query_images.ImageFileError, match=r'empty\.png is empty'):
    query_images.load_query(str(empty), 112)
  with pytest.raises(query_images.ImageFileError, match='no such file'):
    query_images.load_query(str(tmp_path / 'missing.png'), 112)
  tiny = tmp_path / 'tiny.png'
  Image.new('L', (8, 8), 0).save(tiny)
  with pytest.raises(query_images.ImageFileError, match='too small'):
    query_images.load_query(str(tiny), 112)
  blank = tmp_path / 'blank.png'
  Image.new('RGB', (256, 256), 'white').save(blank)
  with pytest.raises(query_images.ImageFileError, match='blank'):
    query_images.load_query(str(blank), 112)

  # RGBA with a transparent background: strokes stay dark, the rest is white.
  rgba = np.zeros((300, 200, 4), np.uint8)  # Not square, not 256.
  rgba[100:200, 50:150] = (10, 20, 30, 255)
  path = tmp_path / 'sketch.png'
  Image.fromarray(rgba, 'RGBA').save(path)
  image = query_images.load_query(str(path), 112)
  assert image.shape == (112, 112, 1) and image.dtype == np.uint8
  assert image[0, 0, 0] == 255 and image[56, 56, 0] < 40
  # 16-bit grey is scaled, not clipped.
  wide = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
  Image.fromarray(wide).save(tmp_path / 'wide.png')
  grey = query_images.read_grey_image(str(tmp_path / 'wide.png'))
  assert grey.shape == (256, 256) and grey.min() < 10 and grey.max() > 245


def test_real_rgba_sketch_converts_to_the_dataset_sketch(qmul_v1_dir):
  sketches = helpers.require_data('qmul_v1_rgb/shoes/test/sketches')
  path = os.path.join(sketches, '305.png')  # Test sketch 0 of Shoe V1.
  assert Image.open(path).mode == 'RGBA'
  expected = scipy.io.loadmat(
      os.path.join(qmul_v1_dir, 'shoes', 'shoes_sketch_db_test.mat'))['data'][0]
  np.testing.assert_array_equal(query_images.read_grey_image(path), expected)


def test_photo_folder_is_listed_and_read(tmp_path):
  photos = helpers.require_data('qmul_v1_rgb/shoes/test/images')
  names = query_images.list_images(photos)
  assert len(names) == 115 and names[0] == '305.jpg'
  image = query_images.load_image(os.path.join(photos, names[0]), 144)
  assert image.shape == (144, 144, 1) and image.dtype == np.uint8
  with pytest.raises(query_images.ImageFileError, match='holds no image files'):
    query_images.list_images(str(tmp_path))


def test_retrieve_mode_writes_results_and_attention_pictures(tfds_dir, qmul_v1_dir,
                                                             tmp_path):
  query = os.path.join(helpers.require_data('qmul_v1_rgb/shoes/test/sketches'),
                       '305.png')
  config = helpers.tiny_config('shoes', tfds_dir, qmul_v1_dir)
  # 129 crops give a 3x3 attention map (the tiny 97 crops give 1x1).
  config.data.load_size, config.data.crop_size = 144, 129
  config.num_train_steps, config.eval.num_views = 2, 1  # Seconds, not minutes.
  workdir = tmp_path / 'run'
  trainer.train_and_evaluate(config, str(workdir))

  # The command line, on 2 devices (the checkpoint was written by 8).
  overrides = ['--config.data.load_size=144', '--config.data.crop_size=129',
               f'--config.data.tfds_data_dir={tfds_dir}',
               f'--config.data.manual_dir={qmul_v1_dir}']
  run = subprocess.run(
      [sys.executable, '-m', 'sbir_jax.main', '--config=configs/shoes.py:tiny',
       f'--workdir={workdir}', '--mode=retrieve', f'--query={query}',
       '--gallery=test', '--top_k=5', *overrides],
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2'))
  assert run.returncode == 0, run.stderr[-3000:]
  grid = workdir / 'retrieval' / '305_top5.png'
  attention = workdir / 'retrieval' / '305_attention.png'
  # 305.png is test sketch 0 of Shoe V1, so its true match is test photo 0.
  assert 'Top 5 of 115 (true match test/0 at rank ' in run.stdout
  assert str(grid) in run.stdout and str(attention) in run.stdout
  with Image.open(grid) as image:
    assert image.mode == 'RGB' and image.width > 5 * 160
  with Image.open(attention) as image:
    assert image.width > 2 * 256
  gallery = gallery_file.load_gallery(str(workdir / 'retrieval' / 'gallery_test.npz'))
  assert gallery.embeddings.shape == (115, 48) and gallery.source == 'test'

  # A bad query stops before anything slow, naming the file.
  empty = tmp_path / 'empty.png'
  empty.write_bytes(b'')
  with pytest.raises(query_images.ImageFileError, match=r'empty\.png is empty'):
    # No restored state: the query is read before the model is touched.
    retrieval.retrieve(task_lib.make_task(config, sharding.make_mesh()), None,
                       str(workdir), str(empty), 'test', 3)
