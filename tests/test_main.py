"""The command line a user types: train, then --mode=eval, and its errors."""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args, env_extra=None):
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2')
  env.update(env_extra or {})
  return subprocess.run([sys.executable, '-m', 'sbir_jax.main', *args], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=600)


def test_cli_train_then_eval_the_selected_step(tmp_path, tfds_dir, qmul_v1_dir):
  # A relative workdir, as users type it (Orbax itself needs absolute paths).
  common = ['--config=configs/handbag.py:tiny',
            f'--workdir={os.path.relpath(tmp_path, REPO)}',
            f'--config.data.tfds_data_dir={tfds_dir}',
            f'--config.data.manual_dir={qmul_v1_dir}']
  trained = _run(*common)
  assert trained.returncode == 0, trained.stderr[-3000:]
  # A run a person can read: config, data sizes, progress, results on screen;
  # library chatter (Orbax's INFO lines, the full config) only in the log file.
  screen = trained.stdout
  for line in ('Config configs/handbag.py:tiny', 'Data: train sketches/photos',
               'step 4/4', 'steps/s', 'ETA', 'Selected checkpoint (best, step'):
    assert line in screen, line
  assert 'checkpoint_manager.py' not in trained.stderr + screen
  log = (tmp_path / 'log.txt').read_text()
  assert 'checkpoint_manager.py' in log and 'Config:' in log
  results = json.loads((tmp_path / 'results.json').read_text())
  selected = results['train']['selected_step']
  # Whichever step validation selected, eval of that step (named by number)
  # reproduces the numbers training reported for it, on val and on test.
  evaluated = _run(*common, '--mode=eval', f'--checkpoint={selected}')
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  results = json.loads((tmp_path / 'results.json').read_text())
  got = results[f'eval_{selected}']
  assert got['step'] == selected
  for name in ('val_acc@1', 'val_acc@10', 'test_acc@1', 'test_acc@10'):
    assert got[name] == pytest.approx(results['train'][name]), name
  # The run's record names what produced it.
  record = json.loads((tmp_path / 'record.json').read_text())
  assert record['config_arg'] == 'configs/handbag.py:tiny'
  assert record['selected_step'] == selected and record['seed'] == 0
  assert record['test']['acc@1'] == results['train']['test_acc@1']
  assert record['val']['acc@1'] == results['train']['val_acc@1']
  assert len(record['git']['commit']) == 40
  assert record['data']['manual_dir']['files'] > 0
  assert len(record['data']['manual_dir']['sha256']) == 64


def test_cli_unknown_config_key_fails_clearly(tmp_path):
  run = _run('--config=configs/handbag.py:tiny', f'--workdir={tmp_path}',
             '--config.model.atention=False')
  assert run.returncode != 0
  assert 'atention' in run.stderr


def test_default_workdir_names_config_and_variants():
  from sbir_jax import main
  assert main.default_workdir('configs/shoes.py:cpu,no_shortcut') == os.path.join(
      'workdir', 'shoes_cpu_no_shortcut')
  assert main.default_workdir('configs/handbag.py') == os.path.join('workdir', 'handbag')


def test_cli_modes_come_from_the_task(tmp_path):
  # Composed retrieval adds no mode: the error lists what its task offers.
  run = _run('--config=configs/css.py:tiny', f'--workdir={tmp_path}', '--mode=retrieve')
  assert run.returncode != 0
  assert "--mode=retrieve: use train, eval (the modes of task 'composed')" in run.stderr
  assert not (tmp_path / 'checkpoints').exists()
  # FG-SBIR's retrieve needs its query before anything is restored.
  run = _run('--config=configs/handbag.py:tiny', f'--workdir={tmp_path}', '--mode=retrieve')
  assert run.returncode != 0
  assert '--mode=retrieve needs --query=<sketch image file>' in run.stderr
