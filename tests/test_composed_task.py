"""Composed retrieval end to end on generated CSS-style data (`tiny` variant):
train -> checkpoint -> --mode=eval, in process (8 devices) and from the CLI."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import css
from sbir_jax.core import optim
from sbir_jax.core import trainer
from sbir_jax.datasets import css_style
from sbir_jax.datasets import regions
from sbir_jax.tasks.composed import task as composed_task

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(tfds_dir, variants='lbf_big,tiny'):
  config = css.get_config(variants)
  config.data.tfds_data_dir = tfds_dir
  return config


@pytest.mark.parametrize('variants', ['lbf_small,tiny',
                                      'tirg,batch_classification,tiny'])
def test_train_checkpoint_then_eval_reproduces(variants, tfds_dir, tmp_path):
  assert jax.device_count() == 8
  config = _config(tfds_dir, variants)
  workdir = str(tmp_path / 'run')
  results = trainer.train_and_evaluate(config, workdir)
  for k in (1, 5, 10, 50):
    assert 0 <= results[f'test_recall@{k}'] <= 100
  assert results['test_recall@1'] <= results['test_recall@50']
  evaluated = trainer.evaluate(config, workdir, 'best')
  assert evaluated['step'] == results['selected_step']
  assert evaluated['test_recall@1'] == pytest.approx(results['test_recall@1'])
  assert 'val_recall@1' in evaluated
  saved = json.loads((tmp_path / 'run' / 'results.json').read_text())
  assert set(saved) == {'train', 'eval_best', 'train_seconds_at_checkpoint'}
  assert (tmp_path / 'run' / 'test_examples.png').stat().st_size > 0


def test_splits_batches_and_vocabulary(tfds_dir):
  config = _config(tfds_dir)
  task = composed_task.ComposedTask(config, None)
  splits = task.splits
  assert set(splits) == {'train', 'val', 'test'}
  # Default: reference images held out with their pairs (new images at val).
  val, fit = splits['val'], splits['train']
  assert len(val.source_ids) and not set(val.gallery_ids) & set(fit.gallery_ids)
  test = splits['test']
  assert len(test.gallery_ids) == len(test.images)  # TIRG: all test images.
  batches = task.train_batches(start_step=3)
  first = next(batches)
  again = next(task.train_batches(start_step=3))  # Keyed by (seed, step).
  for k in first:
    np.testing.assert_array_equal(first[k], again[k])
  assert first['reference'].shape == (config.batch_size, 64, 64, 3)
  assert first['tokens'].shape == (config.batch_size, config.data.max_text_length)


def test_bad_config_values_are_refused(tfds_dir):
  with pytest.raises(ValueError, match='Unknown config variant'):
    css.get_config('tiny,fancy')
  config = _config(tfds_dir)
  config.loss.name = 'hinge'
  with pytest.raises(ValueError, match='config.loss.name'):
    composed_task.ComposedTask(config, None)
  with pytest.raises(AttributeError):
    config.model.nmae = 'x'


def test_cli_train_then_eval(tmp_path, tfds_dir):
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2')
  common = [sys.executable, '-m', 'sbir_jax.main', '--config=configs/css.py:concat,tiny',
            f'--workdir={tmp_path}', f'--config.data.tfds_data_dir={tfds_dir}']
  for extra in ([], ['--mode=eval', '--checkpoint=latest']):
    run = subprocess.run(common + extra, cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
  results = json.loads((tmp_path / 'results.json').read_text())
  assert results['eval_latest']['step'] == 4
  assert 0 <= results['eval_latest']['test_recall@1'] <= 100


def test_efficientnet_backbone_gets_imagenet_weights(tfds_dir):
  from sbir_jax.models import convert_efficientnet
  config = _config(tfds_dir, 'lbf_small,efficientnet,tiny')
  task = composed_task.ComposedTask(config, None)
  # Jitted, as the trainer does.
  params, model_state = jax.jit(task.init_variables)(jax.random.key(0))
  imagenet = convert_efficientnet.load_pretrained()
  np.testing.assert_array_equal(params['cnn']['backbone']['conv_stem']['kernel'],
                                imagenet['params']['conv_stem']['kernel'])
  assert 'fc' not in params['cnn']['backbone']  # Only the feature map is used.
  # The ImageNet BatchNorm statistics are constants of the model_state.
  np.testing.assert_array_equal(
      model_state['batch_stats']['cnn']['backbone']['bn0']['mean'],
      imagenet['batch_stats']['bn0']['mean'])
  batch = next(task.train_batches(0))
  batch = {k: v[:2] for k, v in batch.items()}
  loss, _ = jax.jit(task.loss_fn)(params, model_state, batch, jax.random.key(1))  # BN stats passed.
  assert np.isfinite(float(loss))


@pytest.mark.parametrize('model', ['lbf_small', 'tirg'])
def test_cached_imagenet_maps_give_the_live_trunks_outputs(tfds_dir, model, monkeypatch):
  """backbone efficientnet_lite0_cached: the model on the cached float16
  maps composes as the model with the live ImageNet trunk on the pixels
  (same other parameters); a second load reads the cache."""
  from sbir_jax.tasks.composed import cached_backbone
  live = composed_task.ComposedTask(_config(tfds_dir, f'{model},efficientnet,tiny'), None)
  cached = composed_task.ComposedTask(_config(tfds_dir, f'{model},imagenet_cached,tiny'), None)
  params, model_state = jax.jit(live.init_variables)(jax.random.key(0))
  split_live, split_cached = live.splits['test'], cached.splits['test']
  assert split_cached.inputs(np.arange(2)).shape == (2, 7, 7, 1280)
  assert split_cached.inputs(np.arange(2)).dtype == np.float16
  ids = split_live.source_ids[:4]
  tokens = split_live.tokens[:4]
  variables = {'params': params, **model_state}
  want = live.model.apply(variables, split_live.reference_inputs(ids), tokens,
                          method=live.model.compose)
  got = cached.model.apply({'params': _without_trunk(params)},
                           split_cached.reference_inputs(ids), tokens,
                           method=cached.model.compose)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-2, atol=2e-2)
  # The maps come from the cache now: extraction would fail.
  monkeypatch.setattr(cached_backbone, '_jitted', lambda mesh: 1 / 0)
  again = composed_task.ComposedTask(_config(tfds_dir, f'{model},imagenet_cached,tiny'), None)
  np.testing.assert_array_equal(again.splits['test'].image_features,
                                split_cached.image_features)


def _without_trunk(tree):
  """The parameters minus the ImageNet trunk's (the 'backbone' subtrees)."""
  if not isinstance(tree, dict):
    return tree
  return {k: _without_trunk(v) for k, v in tree.items() if k != 'backbone'}


def _write_region_file(path, config, feature_dim=8, k=6):
  """An .npz in the regions layout for the generated data: each scene's object
  boxes padded to k, and random region features."""
  raw = css_style.load(composed_task.ensure_generated(config.data), config.data.tfds_data_dir)
  arrays = {}
  rng = np.random.default_rng(0)
  for split in ('train', 'test'):
    scenes = regions.scene_regions(raw[split]['objects'])
    n, found = scenes.mask.shape
    arrays[f'{split}_boxes'] = np.zeros((n, k, 4), np.float32)
    arrays[f'{split}_boxes'][:, :found] = scenes.boxes
    arrays[f'{split}_num_boxes'] = scenes.mask.sum(1)
    arrays[f'{split}_features'] = rng.normal(size=(n, k, feature_dim)).astype(np.float32)
  np.savez(path, **arrays)
  return arrays


def test_lbf_on_a_region_feature_file_trains_and_evaluates(tfds_dir, tmp_path):
  config = _config(tfds_dir, 'lbf_small,tiny')
  config.model.entities_from = 'region_features'
  config.data.regions_file = str(tmp_path / 'regions.npz')
  arrays = _write_region_file(config.data.regions_file, config)
  task = composed_task.ComposedTask(config, None)
  test = task.splits['test']
  first = test.inputs(np.array([0, 1]))
  assert set(first) == {'boxes', 'box_mask', 'features'}  # No pixels needed.
  np.testing.assert_array_equal(first['features'], arrays['test_features'][:2])
  np.testing.assert_array_equal(first['box_mask'].sum(1), arrays['test_num_boxes'][:2])
  results = trainer.train_and_evaluate(config, str(tmp_path / 'run'))
  assert 0 <= results['test_recall@1'] <= 100
  params, _ = task.init_variables(jax.random.key(0))
  assert 'cnn' not in params and params['visual_fc']['kernel'].shape[0] == 8


def test_lbf_object_boxes_and_bad_region_files(tfds_dir, tmp_path):
  config = _config(tfds_dir, 'lbf_small,object_boxes,tiny')
  task = composed_task.ComposedTask(config, None)
  batch = next(task.train_batches(0))
  assert set(batch['reference']) == {'image', 'boxes', 'box_mask'}
  counts = batch['reference']['box_mask'].sum(1)
  assert counts.min() >= 3 and counts.max() <= 5  # CSS-style: 3-5 objects.
  loss, _ = task.loss_fn(*task.init_variables(jax.random.key(0)), batch, jax.random.key(1))
  assert np.isfinite(float(loss))

  path = str(tmp_path / 'regions.npz')
  good = _write_region_file(path, config)
  bad_config = _config(tfds_dir, 'lbf_small,tiny')
  bad_config.model.entities_from = 'region_features'
  with pytest.raises(ValueError, match='needs config.data.regions_file'):
    composed_task.load_splits(bad_config)
  bad_config.data.regions_file = path
  for arrays, error in [
      ({**good, 'test_boxes': good['test_boxes'][:-1]}, r'expected \(\d+, K, 4\)'),
      ({**good, 'train_boxes': good['train_boxes'] * 64}, 'normalised'),  # Pixels.
      ({k: v for k, v in good.items() if 'features' not in k}, 'needs them')]:
    np.savez(path, **arrays)
    with pytest.raises(regions.RegionFileError, match=error):
      composed_task.load_splits(bad_config)


@pytest.mark.parametrize('holdout', ['texts', 'sources'])
def test_validation_holds_out_texts_or_reference_images(holdout):
  mods = [{'from': [0, 1, 2], 'to': [10, 11, 12], 'to_str': 'add red circle to top-left'},
          {'from': [1, 3, 4], 'to': [13, 14, 15], 'to_str': 'remove blue circle'},
          {'from': [0, 4, 5], 'to': [16, 17, 18], 'to_str': 'make red circle blue'},
          {'from': [2, 3, 5], 'to': [19, 20, 21], 'to_str': 'remove top-left object'}]
  data = css.get_config('tiny').data
  data.val_holdout, data.val_fraction = holdout, 0.34
  fit, val = composed_task.split_train_mods(mods, data)
  pairs = lambda ms: {(f, t) for m in ms for f, t in zip(m['from'], m['to'])}
  assert val and not pairs(fit) & pairs(val)
  if holdout == 'texts':
    assert len(val) == 1 and val[0]['to_str'] not in {m['to_str'] for m in fit}
    assert pairs(fit) | pairs(val) == pairs(mods)
  else:  # Two of six reference images, none of whose pairs is trained on.
    held = {f for m in val for f in m['from']}
    assert len(held) == 2
    assert not held & {i for m in fit for i in m['from'] + m['to']}
    assert len(pairs(val)) == sum(f in held for m in mods for f in m['from'])
  data.val_holdout = 'both'
  with pytest.raises(ValueError, match='val_holdout'):
    composed_task.split_train_mods(mods, data)


def test_cosine_schedule_scales_the_trainers_step():
  config = css.get_config('tiny')
  config.optimizer.name, config.optimizer.learning_rate = 'sgd', 1.0
  config.optimizer.momentum = 0.0
  config.optimizer.weight_decay = 0.0
  config.num_train_steps, config.optimizer.warmup_steps = 10, 2
  config.optimizer.schedule = 'cosine'
  tx = optim.make_optimizer(config.optimizer, config.num_train_steps)
  params = {'w': np.ones(3, np.float32)}
  state = tx.init(params)
  steps = []
  for _ in range(10):
    updates, state = tx.update({'w': np.ones(3, np.float32)}, state, params)
    steps.append(-float(updates['w'][0]))
  np.testing.assert_allclose(steps[:3], [0.0, 0.5, 1.0])  # Warm-up to the peak.
  assert all(a > b for a, b in zip(steps[2:], steps[3:])) and steps[-1] < 0.05
  config.optimizer.schedule = 'constant'  # The trainer's optimizer, unchanged.
  tx = optim.make_optimizer(config.optimizer, config.num_train_steps)
  updates, _ = tx.update({'w': np.ones(3, np.float32)}, tx.init(params), params)
  np.testing.assert_allclose(updates['w'], -1.0)
  config.optimizer.schedule = 'step'
  with pytest.raises(ValueError, match='config.optimizer.schedule'):
    optim.make_optimizer(config.optimizer, config.num_train_steps)


def test_adamw_decay_is_decoupled_from_the_gradient_statistics():
  config = css.get_config('tiny')
  config.optimizer.update(name='adamw', learning_rate=0.1, weight_decay=0.5)
  params = {'w': np.full(2, 2.0, np.float32)}
  grads = {'w': np.array([1e-3, 1.0], np.float32)}
  tx = optim.make_optimizer(config.optimizer, config.num_train_steps)
  updates, _ = tx.update(grads, tx.init(params), params)
  # First Adam step is lr * sign(g) whatever |g|; AdamW adds lr * wd * w.
  np.testing.assert_allclose(updates['w'], -0.1 * (1.0 + 0.5 * 2.0), rtol=1e-3)
  config.optimizer.name = 'adam'  # L2 in the gradient: normalised away by Adam.
  tx = optim.make_optimizer(config.optimizer, config.num_train_steps)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates['w'], -0.1, rtol=1e-3)


def test_tirg_sampling_puts_queries_of_one_reference_in_one_batch(tfds_dir):
  """TIRG's CSS batches: each odd slot keeps the reference of the slot before
  it under another text (a real training pair of that text); independent
  sampling draws the batches it always drew."""
  config = _config(tfds_dir)
  task = composed_task.ComposedTask(config, None)
  mods = task._data[2]
  by_source = composed_task.texts_by_source(mods)
  pairs = {(m, f, t) for m, mod in enumerate(mods) for f, t in zip(mod['from'], mod['to'])}
  shared = 0
  for step in range(20):
    mod_ids, sources, targets = composed_task.sample_pairs(
        mods, np.random.default_rng([0, step]), 32, by_source)
    assert all((int(m), int(f), int(t)) in pairs for m, f, t in zip(mod_ids, sources, targets))
    for slot in range(1, 32, 2):
      if len({m for m, _ in by_source[int(sources[slot - 1])]}) > 1:
        assert sources[slot] == sources[slot - 1] and mod_ids[slot] != mod_ids[slot - 1]
        shared += 1
  assert shared >= 100  # Most references of the CSS-style data have several texts.
  independent = composed_task.sample_pairs(mods, np.random.default_rng([0, 0]), 32)
  paired = composed_task.sample_pairs(mods, np.random.default_rng([0, 0]), 32, by_source)
  np.testing.assert_array_equal(independent[1][::2], paired[1][::2])  # Even slots alike.
  assert np.mean(independent[1][1::2] == independent[1][::2]) < 0.2


def test_soft_triplet_form_follows_the_model(tfds_dir):
  forms = {}
  for variants in ('lbf_big,tiny', 'tirg,tiny', 'concat,tiny', 'tirg,tiny,lbf_soft_triplet',
                   'lbf_small,tiny,tirg_soft_triplet'):
    forms[variants] = composed_task.ComposedTask(_config(tfds_dir, variants), None
                                                 ).soft_triplet_form
  assert forms == {'lbf_big,tiny': 'lbf', 'tirg,tiny': 'tirg', 'concat,tiny': 'tirg',
                   'tirg,tiny,lbf_soft_triplet': 'lbf',
                   'lbf_small,tiny,tirg_soft_triplet': 'tirg'}
