"""Triplet batches are reproducible from the seed, whatever the host count."""
import numpy as np
import pytest

from sbir_jax.datasets import image_pipeline
from sbir_jax.tasks.fg_sbir import input_pipeline
from tests import helpers


@pytest.fixture(scope='module')
def shoes(tfds_dir, qmul_v1_dir):
  config = helpers.tiny_config('shoes', tfds_dir, qmul_v1_dir)
  return config, input_pipeline.load_splits(config.data)


def _batches(shoes, count, **kwargs):
  config, splits = shoes
  args = dict(global_batch_size=8, seed=0)
  args.update(kwargs)
  it = image_pipeline.iterate(
      input_pipeline.triplet_dataset(splits['train'], config.data, **args))
  return [next(it) for _ in range(count)]


def test_same_seed_same_batches_other_seed_other_batches(shoes):
  a, b = _batches(shoes, 2), _batches(shoes, 2)
  for x, y in zip(a, b):
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])
  c = _batches(shoes, 1, seed=1)[0]
  assert not np.array_equal(a[0]['sketch'], c['sketch'])
  assert a[0]['sketch'].shape == (8, 97, 97, 1) and a[0]['sketch'].dtype == np.uint8


def test_resume_and_hosts_see_the_same_global_batches(shoes):
  full = _batches(shoes, 2)
  resumed = _batches(shoes, 1, start_step=1)[0]
  np.testing.assert_array_equal(resumed['negative'], full[1]['negative'])
  halves = [_batches(shoes, 1, process_index=p, process_count=2)[0] for p in (0, 1)]
  np.testing.assert_array_equal(
      np.concatenate([h['positive'] for h in halves]), full[0]['positive'])


def test_true_match_positive_is_the_sketch_photo(shoes):
  config, splits = shoes
  data = config.data.copy_and_resolve_references()
  data.unlock()
  data.triplet_sampling, data.flip = 'true_match', False
  data.crop_size = data.load_size  # No crop: images come through unchanged.
  batch = next(image_pipeline.iterate(input_pipeline.triplet_dataset(
      splits['train'], data, global_batch_size=4, seed=0)))
  train = splits['train']
  for sketch, positive, negative in zip(batch['sketch'], batch['positive'], batch['negative']):
    i = int(np.flatnonzero((train.sketches == sketch).all(axis=(1, 2, 3)))[0])
    np.testing.assert_array_equal(positive, train.photos[i])
    assert not np.array_equal(negative, train.photos[i])


def test_ten_views_are_corners_centre_and_flips():
  images = np.arange(2 * 6 * 6).reshape(2, 6, 6, 1).astype(np.uint8)
  views = image_pipeline.ten_views(images, 4)
  assert views.shape == (2, 10, 4, 4, 1)
  np.testing.assert_array_equal(views[:, 0], images[:, :4, :4])
  np.testing.assert_array_equal(views[:, 3], images[:, 2:, 2:])
  np.testing.assert_array_equal(views[:, 4], images[:, 1:5, 1:5])
  np.testing.assert_array_equal(views[:, 9], images[:, 1:5, 1:5][:, :, ::-1])


def test_unknown_sampling_is_refused(shoes):
  config, splits = shoes
  data = config.data.copy_and_resolve_references()
  data.unlock()
  data.triplet_sampling = 'hardest'
  with pytest.raises(ValueError, match='triplet_sampling'):
    input_pipeline.triplet_dataset(splits['train'], data, global_batch_size=8, seed=0)
