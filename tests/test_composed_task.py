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
from sbir_jax import train
from sbir_jax.tasks import composed

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
  results = train.train_and_evaluate(config, workdir)
  for k in (1, 5, 10, 50):
    assert 0 <= results[f'test_recall@{k}'] <= 100
  assert results['test_recall@1'] <= results['test_recall@50']
  evaluated = train.evaluate(config, workdir, 'best')
  assert evaluated['step'] == results['selected_step']
  assert evaluated['test_recall@1'] == pytest.approx(results['test_recall@1'])
  assert 'val_recall@1' in evaluated
  saved = json.loads((tmp_path / 'run' / 'results.json').read_text())
  assert set(saved) == {'train', 'eval_best'}
  assert (tmp_path / 'run' / 'test_examples.png').stat().st_size > 0


def test_splits_batches_and_vocabulary(tfds_dir):
  config = _config(tfds_dir)
  task = composed.ComposedTask(config, None)
  splits = task.splits
  assert set(splits) == {'train', 'val', 'test'}
  val_texts, train_texts = set(splits['val'].texts), set(splits['train'].texts)
  assert val_texts and not val_texts & train_texts  # Whole texts held out.
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
    composed.ComposedTask(config, None)
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
  task = composed.ComposedTask(config, None)
  params = jax.jit(task.init_params)(jax.random.key(0))  # As the trainer does.
  imagenet = convert_efficientnet.load_pretrained()
  np.testing.assert_array_equal(params['cnn']['backbone']['conv_stem']['kernel'],
                                imagenet['params']['conv_stem']['kernel'])
  assert 'fc' not in params['cnn']['backbone']  # Only the feature map is used.
  batch = next(task.train_batches(0))
  batch = {k: v[:2] for k, v in batch.items()}
  loss, _ = task.loss_fn(params, batch, jax.random.key(1))  # BN stats passed.
  assert np.isfinite(float(loss))
