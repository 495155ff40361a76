"""End to end on 8 simulated devices with the `tiny` variant on real Shoe V1."""
import json
import os

import jax
import numpy as np
import pytest

from sbir_jax.core import checkpointing
from sbir_jax.core import records
from sbir_jax.core import trainer
from tests import helpers


@pytest.fixture
def config(tfds_dir, qmul_v1_dir):
  return helpers.tiny_config('shoes', tfds_dir, qmul_v1_dir)


def _latest_params(workdir, config):
  restored = checkpointing.load_on_one_device(workdir)
  return int(restored['step']), restored['params']


def test_train_on_8_devices_then_eval_reproduces_metrics(config, tmp_path, monkeypatch):
  assert jax.device_count() == 8
  workdir = str(tmp_path / 'run')
  # A checkout during training (HEAD moves on once steps are written) must not
  # relabel the run.
  def head_now():
    moved = os.path.exists(os.path.join(workdir, 'results.json'))
    return {'commit': 'checked_out_later' if moved else 'started', 'dirty': False}
  monkeypatch.setattr(records, 'git_state', head_now)
  results = trainer.train_and_evaluate(config, workdir)
  assert json.loads((tmp_path / 'run' / 'record.json').read_text())['git']['commit'] == (
      'started')
  assert results['devices'] == 8
  assert 0 <= results['test_acc@1'] <= results['test_acc@10'] <= 100
  assert np.isfinite(results['test_acc@1'])
  evaluated = trainer.evaluate(config, workdir, 'best')
  assert evaluated['step'] == results['selected_step']
  assert evaluated['test_acc@1'] == pytest.approx(results['test_acc@1'])
  assert evaluated['test_acc@10'] == pytest.approx(results['test_acc@10'])
  saved = json.loads((tmp_path / 'run' / 'results.json').read_text())
  assert set(saved) == {'train', 'eval_best', 'train_seconds_at_checkpoint'}


def test_kill_and_resume_matches_uninterrupted_run(config, tmp_path):
  straight, resumed = str(tmp_path / 'straight'), str(tmp_path / 'resumed')
  trainer.train_and_evaluate(config, straight)
  # Killed after step 2 (its checkpoint is written), then restarted.
  trainer.train_and_evaluate(config, resumed, stop_after_steps=2)
  assert checkpointing.make_manager(resumed, read_only=True).latest_step() == 2
  clock_at_2 = json.loads((tmp_path / 'resumed' / 'results.json').read_text())[
      'train_seconds_at_checkpoint']['2']
  results = trainer.train_and_evaluate(config, resumed)
  # The record counts the whole training, the killed part included.
  assert results['train_seconds'] == pytest.approx(
      clock_at_2 + results['train_seconds_this_run'])
  assert clock_at_2 > 0
  step_a, params_a = _latest_params(straight, config)
  step_b, params_b = _latest_params(resumed, config)
  assert step_a == step_b == config.num_train_steps
  jax.tree.map(np.testing.assert_array_equal, params_a, params_b)


def test_batch_not_divisible_by_devices_is_refused(config, tmp_path):
  config.batch_size = 12
  with pytest.raises(ValueError, match='not divisible by the 8 devices'):
    trainer.train_and_evaluate(config, str(tmp_path))


def test_eval_without_checkpoint_says_train_first(config, tmp_path):
  with pytest.raises(checkpointing.CheckpointError, match='Train first'):
    trainer.evaluate(config, str(tmp_path / 'empty'), 'latest')


def test_resume_skips_a_damaged_newest_checkpoint_and_keeps_it(config, tmp_path,
                                                                capsys, caplog):
  # Checkpoints at 2 and 4 of 6 steps, then a kill; step 4's files get damaged
  # (every file truncated to garbage, metadata too, as a full disk leaves them).
  config.num_train_steps, config.keep_latest = 6, 2
  config.eval.num_views = 1  # Seconds, not tens of seconds.
  workdir = tmp_path / 'run'
  trainer.train_and_evaluate(config, str(workdir), stop_after_steps=4)
  assert checkpointing.make_manager(str(workdir), read_only=True).all_steps() == [2, 4]
  damaged = workdir / 'checkpoints' / '4'
  for root, _, files in os.walk(damaged):
    for name in files:
      with open(os.path.join(root, name), 'wb') as f:
        f.write(b'garbage')
  # The restart resumes from step 2, naming the unreadable step 4 in the log,
  # and runs on (killed again after one step, before it would reach step 4).
  capsys.readouterr()
  with caplog.at_level('WARNING'):
    trainer.train_and_evaluate(config, str(workdir), stop_after_steps=1)
  assert 'Resumed from step 2 in' in capsys.readouterr().out
  warnings = [r.getMessage() for r in caplog.records if r.levelname == 'WARNING']
  assert any('Checkpoint 4 in' in w and 'unreadable' in w for w in warnings), warnings
  assert damaged.exists()  # Nothing deleted.
  # Asked for by name, the damaged step still fails clearly.
  with pytest.raises(checkpointing.CheckpointError, match='Checkpoint 4 in .* unreadable'):
    trainer.evaluate(config, str(workdir), '4')
  assert damaged.exists()
  # Run to the end: step 4 is written anew, the damaged one kept beside it.
  results = trainer.train_and_evaluate(config, str(workdir))
  assert results['trained_steps'] == 6 and np.isfinite(results['test_acc@1'])
  assert (workdir / 'checkpoints' / '4.unreadable' / 'default').is_dir()
  assert checkpointing.make_manager(str(workdir), read_only=True).latest_step() == 6


def test_non_finite_loss_stops_with_advice(config, tmp_path):
  config.optimizer.learning_rate = 1e30
  config.optimizer.name = 'sgd'
  with pytest.raises(trainer.NonFiniteLossError, match='learning_rate'):
    trainer.train_and_evaluate(config, str(tmp_path))


def test_unknown_variant_and_key_are_refused(tfds_dir, qmul_v1_dir):
  with pytest.raises(ValueError, match='Unknown config variant'):
    helpers.tiny_config('shoes', tfds_dir, qmul_v1_dir, 'tiny,fancy')
  config = helpers.tiny_config('shoes', tfds_dir, qmul_v1_dir)
  with pytest.raises(AttributeError):
    config.model.atention = False
