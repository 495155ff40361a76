"""End to end on 8 simulated devices with the `tiny` variant on real Shoe V1."""
import json
import os
import shutil

import jax
import numpy as np
import pytest

from sbir_jax import checkpointing
from sbir_jax import train
from tests import helpers


@pytest.fixture
def config(tfds_dir, qmul_v1_dir):
  return helpers.tiny_config('shoes', tfds_dir, qmul_v1_dir)


def _latest_params(workdir, config):
  restored = checkpointing.load_on_one_device(workdir)
  return int(restored['step']), restored['params']


def test_train_on_8_devices_then_eval_reproduces_metrics(config, tmp_path):
  assert jax.device_count() == 8
  workdir = str(tmp_path / 'run')
  results = train.train_and_evaluate(config, workdir)
  assert results['devices'] == 8
  assert 0 <= results['test_acc@1'] <= results['test_acc@10'] <= 100
  assert np.isfinite(results['test_acc@1'])
  evaluated = train.evaluate(config, workdir, 'best')
  assert evaluated['step'] == results['selected_step']
  assert evaluated['test_acc@1'] == pytest.approx(results['test_acc@1'])
  assert evaluated['test_acc@10'] == pytest.approx(results['test_acc@10'])
  saved = json.loads((tmp_path / 'run' / 'results.json').read_text())
  assert set(saved) == {'train', 'eval_best'}


def test_kill_and_resume_matches_uninterrupted_run(config, tmp_path):
  straight, resumed = str(tmp_path / 'straight'), str(tmp_path / 'resumed')
  train.train_and_evaluate(config, straight)
  # Killed after step 2 (its checkpoint is written), then restarted.
  train.train_and_evaluate(config, resumed, stop_after_steps=2)
  assert checkpointing.make_manager(resumed, read_only=True).latest_step() == 2
  train.train_and_evaluate(config, resumed)
  step_a, params_a = _latest_params(straight, config)
  step_b, params_b = _latest_params(resumed, config)
  assert step_a == step_b == config.num_train_steps
  jax.tree.map(np.testing.assert_array_equal, params_a, params_b)


def test_batch_not_divisible_by_devices_is_refused(config, tmp_path):
  config.batch_size = 12
  with pytest.raises(ValueError, match='not divisible by the 8 devices'):
    train.train_and_evaluate(config, str(tmp_path))


def test_eval_without_checkpoint_says_train_first(config, tmp_path):
  with pytest.raises(checkpointing.CheckpointError, match='Train first'):
    train.evaluate(config, str(tmp_path / 'empty'), 'latest')


def test_corrupt_checkpoint_is_named_and_nothing_is_deleted(config, tmp_path):
  workdir = tmp_path / 'run'
  train.train_and_evaluate(config, str(workdir), stop_after_steps=2)
  step_dir = workdir / 'checkpoints' / '2'
  for root, _, files in os.walk(step_dir / 'default'):
    for name in files:
      if 'metadata' not in name:
        with open(os.path.join(root, name), 'wb') as f:
          f.write(b'garbage')
  with pytest.raises(checkpointing.CheckpointError, match='unreadable'):
    train.evaluate(config, str(workdir), 'latest')
  assert step_dir.exists()


def test_non_finite_loss_stops_with_advice(config, tmp_path):
  config.optimizer.learning_rate = 1e30
  config.optimizer.name = 'sgd'
  with pytest.raises(train.NonFiniteLossError, match='learning_rate'):
    train.train_and_evaluate(config, str(tmp_path))


def test_unknown_variant_and_key_are_refused(tfds_dir, qmul_v1_dir):
  with pytest.raises(ValueError, match='Unknown config variant'):
    helpers.tiny_config('shoes', tfds_dir, qmul_v1_dir, 'tiny,fancy')
  config = helpers.tiny_config('shoes', tfds_dir, qmul_v1_dir)
  with pytest.raises(AttributeError):
    config.model.atention = False
