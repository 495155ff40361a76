"""Zero-shot SBIR end to end: configs/zs_sketchy.py:tiny on the real airplane
class plus generated classes, through checkpoints and --mode=eval."""
import json
import os

import jax
import numpy as np
import pytest

from configs import zs_doodle
from configs import zs_sketchy
from sbir_jax.core import checkpointing
from sbir_jax.core import sharding
from sbir_jax.core import trainer
from sbir_jax.datasets import sketchy
from sbir_jax.tasks.zs_sbir import task as zs_task
from tests import helpers
from tests import zs_helpers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def sketchy_data(tmp_path_factory):
  """(manual dir, split file, TFDS dir, feature cache dir), shared by the tests."""
  root = tmp_path_factory.mktemp('zs')
  manual = zs_helpers.make_sketchy_dir(str(root / 'sketchy'),
                                       helpers.require_data('sketchy_airplane'))
  split = zs_helpers.write_split_file(str(root / 'split.txt'))
  return manual, split, str(root / 'tfds'), str(root / 'features')


def _config(sketchy_data, variants='tiny'):
  manual, split, tfds_dir, cache = sketchy_data
  config = zs_sketchy.get_config(variants)
  config.data.manual_dir = manual
  config.data.split_file = split
  config.data.tfds_data_dir = tfds_dir
  config.features.cache_dir = cache
  config.data.val_class_fraction = 0.5  # 2 seen classes here: 1 validates.
  return config


def test_tiny_cvae_trains_checkpoints_and_evaluates(sketchy_data, tmp_path):
  assert jax.device_count() == 8
  config = _config(sketchy_data)
  workdir = str(tmp_path / 'run')
  results = trainer.train_and_evaluate(config, workdir)
  # Selected on the held-out seen class (the tiny data's val split).
  assert results['selected_checkpoint'] != 'latest'
  assert 0.0 <= results['val_mAP@all'] <= 1.0
  for name in ('P@20', 'mAP@20', 'mAP@20_div_k', 'mAP@all', 'untrained_mAP@all'):
    assert 0.0 <= results[f'test_{name}'] <= 1.0, name
  assert results['test_mAP@20_div_k'] <= results['test_mAP@20']
  evaluated = trainer.evaluate(config, workdir, 'latest')  # What --mode=eval runs.
  assert evaluated['test_mAP@all'] == pytest.approx(results['test_mAP@all'])
  saved = json.loads((tmp_path / 'run' / 'results.json').read_text())
  assert set(saved) == {'train', 'eval_latest', 'train_seconds_at_checkpoint'}
  # The paper's Fig. 3: one row per picture class present (bat, cabin here).
  from PIL import Image
  with Image.open(tmp_path / 'run' / 'retrieval_unseen.png') as im:
    assert im.size[0] > 7 * 112 and im.size[1] > 2 * 112


def test_tiny_caae_kmeans_and_regression_train(sketchy_data, tmp_path):
  for variants in ('tiny,caae,kmeans,also_kmeans', 'tiny,regression'):
    config = _config(sketchy_data, variants)
    config.num_train_steps = 2
    results = trainer.train_and_evaluate(config, str(tmp_path / variants))
    assert np.isfinite(results['test_mAP@all']), variants
  # `also_kmeans` evaluates the same model and samples with k-means retrieval,
  # which `kmeans` already is here: the two agree.
  for split in ('val', 'test'):
    assert results_kmeans(tmp_path, split) == pytest.approx(
        results_kmeans(tmp_path, split, 'kmeans_'))


def results_kmeans(tmp_path, split, prefix=''):
  saved = json.loads((tmp_path / 'tiny,caae,kmeans,also_kmeans' / 'results.json').read_text())
  return saved['train'][f'{split}_{prefix}mAP@all']


def test_caae_kill_and_resume_matches_uninterrupted_run(sketchy_data, tmp_path):
  """The task's own state (BatchNorm stats, two optimisers) restores exactly."""
  config = _config(sketchy_data, 'tiny,caae')
  config.eval.baselines = ()
  straight, resumed = str(tmp_path / 'straight'), str(tmp_path / 'resumed')
  trainer.train_and_evaluate(config, straight)
  trainer.train_and_evaluate(config, resumed, stop_after_steps=2)
  trainer.train_and_evaluate(config, resumed)
  states = [checkpointing.load_on_one_device(workdir) for workdir in (straight, resumed)]
  assert set(states[0]['params']) == {'model', 'discriminator'}
  assert 'batch_stats' in states[0]['model_state']
  for key in ('params', 'model_state', 'opt_state'):
    jax.tree.map(np.testing.assert_array_equal, states[0][key], states[1][key])


def test_sketchy_queries_and_gallery_are_the_unseen_classes(sketchy_data):
  config = _config(sketchy_data)
  task = zs_task.ZsSbirTask(config, sharding.make_mesh())
  splits = task.splits
  # One of the two seen classes trains, the other validates (class-disjoint).
  train_classes, val = set(splits['train'].sketch_labels), splits['val']
  assert set(val.query_labels) == set(val.gallery_labels)
  assert len(train_classes) == 1 and train_classes | set(val.query_labels) == {'airplane', 'ant'}
  if train_classes == {'airplane'}:
    assert np.sum(splits['train'].sketch_labels == 'airplane') == 40  # Capped.
  test = splits['test']
  assert set(test.query_labels) == set(test.gallery_labels) == {'bat', 'cabin'}
  # Each training sketch is paired with the photo it was drawn from.
  train_data = splits['train']
  assert train_data.photos[train_data.photo_of_sketch].shape == train_data.sketches.shape
  assert np.all(train_data.photo_labels[train_data.photo_of_sketch]
                == train_data.sketch_labels)


def test_split_class_missing_from_data_is_named(sketchy_data, tmp_path):
  config = _config(sketchy_data)
  config.data.split_file = zs_helpers.write_split_file(
      str(tmp_path / 'split.txt'), ('bat', 'cow'))
  with pytest.raises(sketchy.SketchyError, match=r"missing from .*\['cow'\]"):
    trainer.train_and_evaluate(config, str(tmp_path / 'run'))


def test_extended_gallery_required_when_asked(sketchy_data, tmp_path):
  config = _config(sketchy_data)
  config.data.gallery = 'extended'
  with pytest.raises(sketchy.SketchyError, match='no extended/ folder'):
    trainer.train_and_evaluate(config, str(tmp_path / 'run'))


def test_feature_dim_not_matching_precomputed_is_refused(sketchy_data, tmp_path):
  config = _config(sketchy_data)
  config.features.extractor = 'precomputed'
  config.features.precomputed_dir = str(tmp_path)
  np.savez(tmp_path / 'sketchy_sketch.npz', ids=np.array(['x']),
           features=np.zeros((1, 4096), np.float32))
  with pytest.raises(ValueError, match='4096-d features but config.features.dim=1280'):
    trainer.train_and_evaluate(config, str(tmp_path / 'run'))


def test_doodle_config_classes_are_shared_and_disjoint():
  config = zs_doodle.get_config('cvae')
  seen, unseen = set(config.data.seen_classes), set(config.data.unseen_classes)
  assert not seen & unseen and len(seen) == 8 and len(unseen) == 4
  qd = helpers.require_data('quickdraw_14')
  tu = helpers.require_data('tu_berlin_40')
  from sbir_jax.datasets import quickdraw, tu_berlin
  shared = set(quickdraw.classes(qd)) & set(tu_berlin.classes(tu))
  assert seen | unseen == shared  # Every shared class is used.
  with pytest.raises(ValueError, match='Unknown config variant'):
    zs_doodle.get_config('tiny,vae')


def test_caps_apply_within_the_selection():
  labels = np.array(['a', 'a', 'a', 'a', 'b'])
  ids = np.array(['test/1', 'test/2', 'train/3', 'train/4', 'train/5'])
  train_only = np.char.startswith(ids, 'train/')
  np.testing.assert_array_equal(zs_task._capped(train_only, labels, ids, 1),
                                [False, False, True, False, True])
  np.testing.assert_array_equal(zs_task._capped(train_only, labels, ids, 0), train_only)


def test_validation_fraction_that_leaves_no_class_is_refused():
  seen = ['ant', 'bat', 'cow']
  data = zs_sketchy.get_config().data
  for fraction in (0.0, 1.0):
    data.val_class_fraction = fraction
    with pytest.raises(sketchy.SketchyError, match='val_class_fraction.*no validation class'):
      sketchy.validation_classes(seen, data.val_class_fraction, data.val_split_seed)
  data.val_class_fraction = 0.34
  train, val = sketchy.validation_classes(seen, data.val_class_fraction,
                                          data.val_split_seed)
  assert len(val) == 1 and sorted(train + val) == seen


def test_unit_norm_scales_every_feature_to_root_dim():
  rng = np.random.default_rng(0)
  split = zs_task.EvalData(rng.random((3, 16)), np.array(['a'] * 3),
                           rng.random((2, 16)) * 9, np.array(['a'] * 2))
  scaled = zs_task._unit_norm(split)
  for field in ('queries', 'gallery'):
    np.testing.assert_allclose(np.linalg.norm(getattr(scaled, field), axis=1), 4.0, rtol=1e-5)
  # Directions (and so every cosine ranking) are unchanged.
  np.testing.assert_allclose(scaled.gallery / 4.0, split.gallery / np.linalg.norm(
      split.gallery, axis=1, keepdims=True), rtol=1e-5)
