"""The seen-class trunk for zero-shot features (issue 13 item 5): the
`sketchy_seen` FG-SBIR source on the real Sketchy subset, category-level
negatives, and the `fg_checkpoint` feature extractor keyed by the
checkpoint's fingerprint."""
import os

import jax
import ml_collections
import numpy as np
import pytest

from configs import sketchy_seen
from configs import zs_sketchy
from sbir_jax import image_sets
from sbir_jax.core import checkpointing
from sbir_jax.core import sharding
from sbir_jax.core import task as task_lib
from sbir_jax.core import trainer
from sbir_jax.datasets import sketchy
from sbir_jax.tasks.fg_sbir import input_pipeline
from sbir_jax.tasks.fg_sbir import task as fg_task
from sbir_jax.tasks.zs_sbir import features
from tests import helpers

TINY = 'configs/sketchy_seen.py:zs_trunk_tiny'


def test_seen_class_pairs_are_split_as_the_zero_shot_task(tmp_path):
  """Train / val / test are the zero-shot task's training, validation and
  unseen classes (same split file, fraction and seed), each sketch paired
  with the photo it was drawn from."""
  manual = helpers.require_data('sketchy_zs_subset')
  helpers.require_data('zeroshot_splits')
  config = sketchy_seen.get_config('zs_trunk_cpu')
  config.data.tfds_data_dir = str(tmp_path / 'tfds')
  splits = input_pipeline.load_splits(config.data)
  sizes = {k: (len(s), s.num_photos) for k, s in splits.items()}
  assert sizes == {'train': (2200, 409), 'val': (400, 73), 'test': (525, 96)}
  zs_data = zs_sketchy.get_config().data
  builder = sketchy.build(manual, config.data.tfds_data_dir)
  sketch = sketchy.image_set(builder, 'sketch')
  expected = sketchy.class_splits(sketch.labels, zs_data)
  names = sorted(set(sketch.labels.tolist()))
  for name, split in splits.items():
    assert sorted({names[c] for c in split.photo_classes}) == sorted(expected[name])
  # Pairs: sketch i of the split (file order) was drawn from photo photo_index[i].
  val = sketch.select(np.isin(sketch.labels, expected['val']))
  photo = sketchy.image_set(builder, 'photo')
  val_photos = photo.ids[np.isin(photo.ids, val.photo_ids)]
  np.testing.assert_array_equal(val_photos[splits['val'].photo_index], val.photo_ids)
  assert splits['train'].photos.shape[-1] == 3  # RGB photos (zs_trunk_cpu).


def test_category_level_negatives_leave_out_same_class_photos():
  """Instance level: every batch photo but the anchor's positive and match is
  a negative; category level: only photos of other classes than the match's."""
  photo_ids = np.array([0, 1, 2, 3, 4, 5])  # Positives 0-2, then negatives 3-5.
  positive = match = np.array([0, 1, 2])
  classes = np.array([7, 7, 8, 8, 9, 7])  # Of photos 0..5.
  instance = np.asarray(fg_task.negative_mask(photo_ids, positive, match))
  np.testing.assert_array_equal(instance, [[0, 1, 1, 1, 1, 1],
                                           [1, 0, 1, 1, 1, 1],
                                           [1, 1, 0, 1, 1, 1]])
  category = np.asarray(fg_task.negative_mask(photo_ids, positive, match, classes))
  np.testing.assert_array_equal(category, [[0, 0, 1, 1, 1, 0],
                                           [0, 0, 1, 1, 1, 0],
                                           [1, 1, 0, 0, 1, 1]])


def test_category_level_needs_batch_negatives_and_classes():
  config = sketchy_seen.get_config('zs_trunk_tiny')
  config.unlock()
  config.loss.negatives = 'sampled'
  with pytest.raises(ValueError, match="negatives to 'batch' or 'hardest'"):
    task_lib.make_task(config, sharding.make_mesh())
  config.loss.negatives, config.loss.negative_classes = 'batch', 'same'
  with pytest.raises(ValueError, match='negative_classes=.same.; use one of'):
    task_lib.make_task(config, sharding.make_mesh())


def _save_untrained(workdir: str, seed: int):
  config = sketchy_seen.get_config('zs_trunk_tiny')
  config.unlock()
  config.seed = seed
  task = task_lib.make_task(config, sharding.make_mesh())
  state = trainer.create_state(task, config, task.mesh)
  manager = checkpointing.make_manager(workdir)
  checkpointing.save(manager, state, {'val_acc@1': 1.0}, 'val_acc@1')
  manager.wait_until_finished()
  return task, state


def _rgb_set(name: str, domain: str, images_Nx112x112x3: np.ndarray) -> image_sets.ImageSet:
  def read(indices, size, batch):
    assert size == images_Nx112x112x3.shape[1]
    for start in range(0, len(indices), batch):
      yield images_Nx112x112x3[np.asarray(indices)[start:start + batch]]
  n = len(images_Nx112x112x3)
  return image_sets.ImageSet(name, np.array([f'{name}/{i}' for i in range(n)]),
                             np.array(['c'] * n), read, domain=domain)


def test_checkpoint_features_are_the_models_and_cached_by_its_fingerprint(tmp_path):
  """Sketches go through the sketch branch, photos through the photo branch
  (centre crop, as evaluated); two checkpoints of one config never share a
  cache folder, nor with the ImageNet features."""
  task, state = _save_untrained(str(tmp_path / 'a'), seed=0)
  _save_untrained(str(tmp_path / 'b'), seed=1)
  load, crop = task.config.data.load_size, task.config.data.crop_size
  cfg = ml_collections.ConfigDict(dict(
      extractor='fg_checkpoint', fg_config=TINY, fg_workdir=str(tmp_path / 'a'),
      fg_checkpoint='best', dim=task.model.output_dim, image_size=load, batch_size=8,
      weights='', cache_dir=str(tmp_path / 'cache'), precomputed_dir=''))
  mesh = sharding.make_mesh()
  rng = np.random.default_rng(0)
  photos = rng.integers(0, 256, (5, load, load, 3), dtype=np.uint8)
  strokes = np.full((5, load, load, 3), 255, np.uint8)
  strokes[:, 30:80:7] = rng.integers(0, 80, (5, 8, load, 1), dtype=np.uint8)
  directory = features.cache_dir(cfg, 'data')
  store = features.FeatureStore(cfg, mesh, directory)
  got_sketch = store.get(_rgb_set('s', 'sketch', strokes))
  got_photo = store.get(_rgb_set('p', 'photo', photos))
  start = (load - crop) // 2
  centre = lambda x: x[:, start:start + crop, start:start + crop]
  grey = np.round(centre(strokes).astype(np.float32).mean(-1, keepdims=True)).astype(np.uint8)
  want_sketch = task.embed_images(state.variables, grey, 'sketch', batch_size=8)
  want_photo = task.embed_images(state.variables, centre(photos), 'photo', batch_size=8)
  np.testing.assert_allclose(got_sketch, want_sketch, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(got_photo, want_photo, rtol=1e-4, atol=1e-5)
  assert not np.allclose(got_sketch, got_photo[:, :got_sketch.shape[1]])
  assert sorted(os.listdir(directory)) == ['p.npz', 's.npz']

  other = cfg.copy_and_resolve_references()
  other.fg_workdir = str(tmp_path / 'b')
  imagenet = cfg.copy_and_resolve_references()
  imagenet.extractor = 'efficientnet_lite0'
  dirs = {features.cache_dir(c, 'data') for c in (cfg, other, imagenet)}
  assert len(dirs) == 3
  assert 'fg_checkpoint_' in directory

  wrong = cfg.copy_and_resolve_references()
  wrong.dim = 1280
  with pytest.raises(features.FeatureError, match='config.features.dim='):
    features.make_extract_fn(wrong, mesh)
