"""RGB photo branch (models/rgb_dssa.py) in the fg_sbir task, both designs:
shapes, ImageNet initialisation, frozen parts, refusals, DSSA unchanged, and a
few training steps on the real Shoe V1 RGB files.

Everything with EfficientNet runs under jit: op by op, its hundreds of small
ops would each be compiled on their own, which is far slower.
"""
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from PIL import Image

from configs import fg_sbir_common
from sbir_jax import losses
from sbir_jax.core import optim
from sbir_jax.core import sharding
from sbir_jax.core import state as state_lib
from sbir_jax.core import trainer
from sbir_jax.models import convert_efficientnet
from sbir_jax.models import depthwise
from sbir_jax.models import dssa
from sbir_jax.models import rgb_dssa
from sbir_jax.tasks import fg_sbir
from sbir_jax.tasks.fg_sbir import retrieval
from tests import helpers

DESIGNS = ('rgb_two_towers', 'rgb_shared_stem')
BATCH = 8  # Triplets: one per simulated device.


def _config(variants: str, weights: str = ''):
  config = fg_sbir_common.get_config('shoes', variants, source='qmul_v1_rgb')
  if weights:
    config.model.pretrained_weights = weights
  return config


def _task(config) -> fg_sbir.Task:
  return fg_sbir.Task(config, sharding.make_mesh())


def _triplets(config, seed: int = 0) -> dict:
  size, rng = config.data.crop_size, np.random.default_rng(seed)
  photo_channels = 3 if config.data.photo_input == 'rgb' else 1
  batch = {'sketch': rng.integers(0, 256, (BATCH, size, size, 1), np.uint8)}
  batch.update({k: rng.integers(0, 256, (BATCH, size, size, photo_channels), np.uint8)
                for k in ('positive', 'negative')})
  batch.update({k: rng.permutation(BATCH * 3)[:BATCH].astype(np.int32)
                for k in ('sketch_id', 'match_id', 'positive_id', 'negative_id')})
  return batch


@pytest.fixture(scope='module')
def imagenet():
  try:
    return convert_efficientnet.load_pretrained()
  except FileNotFoundError as e:
    helpers.skip_or_fail(str(e))


@pytest.fixture(scope='module')
def weights(imagenet, tmp_path_factory) -> str:
  """The ImageNet weights as .npz: read in a blink, unlike the torch pickle."""
  return convert_efficientnet.save_npz(imagenet, tmp_path_factory.mktemp('weights'))


def _init(task):
  """(params, model_state) of the task's jitted init."""
  return jax.jit(task.init_variables)(jax.random.key(0))


@pytest.fixture(scope='module', params=DESIGNS)
def initialised(request, weights):
  """(task, its initial variables: params and model_state)."""
  task = _task(_config(f'tiny,{request.param}', weights))
  return task, state_lib.variables_of(*_init(task))


def test_depthwise_conv_and_its_gradient_equal_xla_grouped_conv():
  rng = np.random.default_rng(0)
  for shape, k, stride in (((2, 9, 8, 3), 3, 2), ((1, 7, 7, 2), 5, 1), ((2, 4, 5, 2), 5, 2)):
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    w = jnp.asarray(rng.standard_normal((k, k, 1, shape[-1])), jnp.float32)
    xla = lambda x, w: jax.lax.conv_general_dilated(
        x, w, (stride, stride), 'SAME', feature_group_count=shape[-1],
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    ours = lambda x, w: depthwise.depthwise_conv(x, w, stride)
    y_and_grads = jax.jit(lambda f, x, w, dy: (f(x, w), *jax.vjp(f, x, w)[1](dy)),
                          static_argnums=0)
    dy = jnp.asarray(rng.standard_normal(xla(x, w).shape), jnp.float32)
    for a, b in zip(y_and_grads(ours, x, w, dy), y_and_grads(xla, x, w, dy)):
      np.testing.assert_allclose(a, b, atol=1e-4)


def test_embeddings_have_one_shape_and_norm_for_both_domains(initialised):
  task, variables = initialised
  size = task.config.data.crop_size
  rng = np.random.default_rng(1)
  sketches = rng.integers(0, 256, (5, size, size, 1), np.uint8)
  photos = rng.integers(0, 256, (5, size, size, 3), np.uint8)
  s = task.embed_images(variables, sketches, 'sketch')
  p = task.embed_images(variables, photos, 'photo')
  assert s.shape == p.shape == (5, task.model.output_dim)
  # DSSA's output is coarse and fine parts, each unit length: norm sqrt(2).
  parts = 2 if task.config.model.name == 'rgb_two_towers' else 1
  np.testing.assert_allclose(np.linalg.norm(s, axis=1), np.sqrt(parts), rtol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(p, axis=1), np.sqrt(parts), rtol=1e-5)
  assert not np.allclose(p[0], p[1])
  with pytest.raises(ValueError, match="pass domain='sketch' or domain='photo'"):
    task.embed_images(variables, photos)


def test_initial_backbone_is_the_imagenet_weights(initialised, imagenet):
  task, variables = initialised
  params = variables['params']
  ours = traverse_util.flatten_dict({'params': params['backbone'],
                                     'batch_stats': variables['batch_stats']['backbone']})
  theirs = traverse_util.flatten_dict(imagenet)
  assert {k for k in theirs if 'fc' not in k} == set(ours)  # All but the classifier.
  for path, value in ours.items():
    np.testing.assert_array_equal(value, theirs[path], err_msg='/'.join(path))
  if task.config.model.name == 'rgb_shared_stem':
    # Sketch stem: the RGB stem's kernel summed over its input channels.
    stem = params['sketch_stem']
    np.testing.assert_allclose(
        stem['conv_stem']['kernel'][:, :, 0],
        imagenet['params']['conv_stem']['kernel'].sum(axis=2), rtol=1e-6)
    np.testing.assert_array_equal(stem['bn0']['scale'], imagenet['params']['bn0']['scale'])
  else:  # The sketch tower is DSSA, under DSSA's own names.
    dssa_params, _ = jax.eval_shape(
        lambda: _task(_config('tiny')).init_variables(jax.random.key(0)))
    assert set(dssa_params) < set(params)


def test_frozen_layers_and_statistics_get_zero_updates(weights):
  config = _config('tiny,rgb_shared_stem', weights)
  config.model.frozen_backbone_layers = 5  # Stem and blocks 0-3.
  config.optimizer.name = 'adam'
  task = _task(config)
  params, model_state = _init(task)
  grads, (_, new_state) = jax.jit(jax.grad(
      lambda p: task.loss_fn(p, model_state, _triplets(config), jax.random.key(1)),
      has_aux=True))(params)
  tx = optim.make_optimizer(config.optimizer, config.num_train_steps)
  updates, _ = tx.update(grads, tx.init(params), params)
  frozen = ['conv_stem', 'bn0'] + [f'blocks_{i}' for i in range(4)]
  for name in frozen:
    assert all(not np.any(u) for u in jax.tree.leaves(updates['backbone'][name])), name
  # BatchNorm statistics are not parameters: they live in model_state, which
  # the optimizer never sees, and with frozen_batch_norm the loss returns them
  # unchanged.
  assert 'batch_stats' not in params and 'batch_stats' not in updates
  assert set(model_state) == {'batch_stats'}
  jax.tree.map(np.testing.assert_array_equal, new_state, model_state)
  for trained in (updates['backbone']['blocks_4'], updates['backbone']['conv_head'],
                  updates['sketch_stem'], updates['projection']):
    assert any(np.any(u) for u in jax.tree.leaves(trained))


def test_batch_statistics_mode_updates_the_running_averages(weights):
  config = _config('tiny,rgb_two_towers', weights)
  config.model.frozen_batch_norm = False
  task = _task(config)
  params, model_state = _init(task)
  # The loss returns the model_state after the batch; the trainer's one step
  # carries it into the next state.
  _, (_, new_state) = jax.jit(task.loss_fn)(params, model_state, _triplets(config),
                                            jax.random.key(1))
  old = traverse_util.flatten_dict(model_state['batch_stats'])
  new = traverse_util.flatten_dict(new_state['batch_stats'])
  assert set(old) == set(new) and any(not np.allclose(old[k], new[k]) for k in old)


def test_dssa_path_is_unchanged():
  config = _config('tiny,sampled_negatives')
  config.data.photo_input = 'edge'
  task = _task(config)
  assert isinstance(task.model, dssa.DSSA)
  params, model_state = task.init_variables(jax.random.key(0))
  assert model_state == {}  # Nothing but parameters.
  assert 'batch_stats' not in params and 'backbone' not in params
  variables = state_lib.variables_of(params, model_state)
  batch, rng = _triplets(config), jax.random.key(1)
  loss, (_, new_state) = task.loss_fn(params, model_state, batch, rng)
  assert new_state == {}
  # The triplet loss of one shared branch, computed by hand.
  x = np.concatenate([batch['sketch'], batch['positive'], batch['negative']])
  x = (x.astype(np.float32) - config.pixel_mean) * config.input_scale
  apply = lambda *a, **k: task.model.apply({'params': params}, *a, **k)
  a, p, n = jnp.split(apply(x, True, method=dssa.DSSA.embed, rngs={'dropout': rng}), 3)
  want = (losses.triplet_hinge(apply(a, p, method=dssa.DSSA.paired_energy),
                               apply(a, n, method=dssa.DSSA.paired_energy), config.loss.margin)
          + config.loss.holef_lambda * apply(method=dssa.DSSA.energy_regulariser))
  np.testing.assert_allclose(loss, want, rtol=1e-6)
  images = batch['positive'][:4]
  one = task.embed_images(variables, images)
  for domain in rgb_dssa.DOMAINS:
    np.testing.assert_array_equal(task.embed_images(variables, images, domain), one)


@pytest.mark.parametrize('change, message', [
    (dict(photo_input='edge'), "config.data.photo_input='edge': select the model with"),
    # Weight decay on frozen layers (BatchNorm statistics are model_state, not
    # parameters, so decay alone is fine: see the test below).
    (dict(weight_decay=1e-4, frozen_backbone_layers=1),
     r"weight_decay would shrink \['backbone/conv_stem', 'backbone/bn0'\]"),
    (dict(frozen_backbone_layers=19), 'frozen_backbone_layers=19; use 0'),
])
def test_bad_settings_are_refused_with_the_fix(change, message):
  config = _config('tiny,rgb_two_towers')
  if 'photo_input' in change:
    config.data.photo_input = change['photo_input']
  if 'weight_decay' in change:
    config.optimizer.weight_decay = change['weight_decay']
  if 'frozen_backbone_layers' in change:
    config.model.frozen_backbone_layers = change['frozen_backbone_layers']
  with pytest.raises(ValueError, match=message):
    _task(config)


def test_weight_decay_never_reaches_batch_norm_statistics(weights):
  # The old guard (decay would shrink params['batch_stats']) is gone by design:
  # the statistics are model_state, which the optimizer is never given.
  config = _config('tiny,rgb_two_towers', weights)
  config.optimizer.weight_decay = 1e-4
  task = _task(config)
  params, model_state = jax.eval_shape(task.init_variables, jax.random.key(0))
  assert 'batch_stats' not in params and 'batch_stats' in model_state
  tx = optim.make_optimizer(config.optimizer, config.num_train_steps)
  state = jax.eval_shape(lambda: state_lib.TrainState.create(params, model_state, tx))
  assert 'batch_stats' not in str(jax.tree_util.tree_structure(state.opt_state))


def test_rgb_model_name_without_its_variant_is_refused():
  config = _config('tiny')
  config.model.name = 'rgb_two_towers'
  with pytest.raises(ValueError, match='configs/shoes_rgb.py:rgb_two_towers'):
    _task(config)


def test_few_training_steps_then_retrieve_on_real_rgb_shoes(tfds_dir, tmp_path, weights):
  root = helpers.require_data('qmul_v1_rgb')
  config = helpers.tiny_config('shoes', tfds_dir, root,
                               variants='tiny,rgb_two_towers', source='qmul_v1_rgb')
  config.model.pretrained_weights = weights
  # 129 crops give the sketch tower a 3x3 attention map (97 crops: 1x1).
  config.data.load_size, config.data.crop_size = 144, 129
  config.num_train_steps = config.checkpoint_every_steps = 2
  config.eval.num_views = 1
  # The photo tower's gradient is tested above; frozen, it costs no backward
  # pass to compile (half this test's time).
  config.model.frozen_backbone_layers = 18
  workdir = str(tmp_path / 'run')
  results = trainer.train_and_evaluate(config, workdir)
  assert 0 <= results['test_acc@1'] <= results['test_acc@10'] <= 100

  # --mode=retrieve on this RGB checkpoint: the sketch through the sketch
  # tower, a folder of real RGB photos through the photo tower.
  gallery = tmp_path / 'photos'
  gallery.mkdir()
  for name in sorted(os.listdir(os.path.join(root, 'shoes/test/images')))[:6]:
    shutil.copy(os.path.join(root, 'shoes/test/images', name), gallery)
  query = os.path.join(root, 'shoes/test/sketches', '305.png')
  out = retrieval.retrieve_mode(lambda: trainer.restore_for_mode(config, workdir),
                                workdir, dict(query=query, gallery=str(gallery), top_k=4))
  assert len(out['top']) == 4 and out['gallery_size'] == 6
  assert out['true_match'] == '305.jpg', out  # Found by file name.
  with Image.open(out['grid_png']) as image:
    assert image.mode == 'RGB' and image.width > 4 * 160
  with Image.open(out['attention_png']) as image:
    assert image.width > 2 * 129
