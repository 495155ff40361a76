"""Tests of launch/tpu_vm.py: the commands it prints and how its runner fails.

Dry runs go through the real command line in a subprocess whose PATH holds no
gcloud; the runner is tested against fake gcloud/git scripts that log their
arguments. Nothing here touches a cloud, and nothing imports jax.
"""
import importlib.util
import os
import re
import shlex
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, 'launch', 'tpu_vm.py')

_spec = importlib.util.spec_from_file_location('tpu_vm', SCRIPT)
tpu_vm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tpu_vm)

POD = ['--name=sbir-pod', '--zone=us-west4-a', '--accelerator-type=v5litepod-16']


def pinned_jax_version() -> str:
  with open(os.path.join(REPO, 'requirements.txt')) as f:
    return re.search(r'^jax==(\S+)$', f.read(), re.MULTILINE).group(1)


def launch(args, path: str, **env) -> subprocess.CompletedProcess:
  """Runs tpu_vm.py with PATH=`path` only (so a real gcloud cannot be found)."""
  return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True,
                        text=True, env={'PATH': path, **env}, timeout=30,
                        check=False)


@pytest.fixture
def empty_path(tmp_path) -> str:
  path = tmp_path / 'empty_bin'
  path.mkdir()
  return str(path)


@pytest.fixture
def fake_bin(tmp_path):
  """A PATH with gcloud and git scripts that log calls; FAIL_ON picks a failure."""
  path = tmp_path / 'fake_bin'
  path.mkdir()
  log = tmp_path / 'calls.log'
  for tool in ('gcloud', 'git'):
    script = path / tool
    script.write_text(
        '#!/bin/sh\n'
        f'echo "{tool} $*" >> "$FAKE_LOG"\n'
        'case "$*" in *"$FAIL_ON"*) [ -n "$FAIL_ON" ] && exit 3;; esac\n'
        'exit 0\n')
    script.chmod(0o755)
  return str(path), log


def with_dry_run(args) -> list[str]:
  """Adds --dry-run before any `--` (after it, it would go to sbir_jax.main)."""
  cut = args.index('--') if '--' in args else len(args)
  return [*args[:cut], '--dry-run', *args[cut:]]


def dry_run_lines(args, path: str) -> list[str]:
  result = launch(with_dry_run(args), path)
  assert result.returncode == 0, result.stderr
  return result.stdout.splitlines()


def test_all_dry_run_prints_create_setup_run_delete(empty_path):
  lines = dry_run_lines(['all', *POD, '--bucket=gs://my-bucket', '--',
                         '--config.num_train_steps=100'], empty_path)
  gcloud = [line for line in lines if line.startswith('gcloud ')]
  assert len(gcloud) == 5 and len(lines) == 6  # + the local `git archive`.
  verbs = [shlex.split(line)[4] for line in gcloud]
  assert verbs == ['create', 'scp', 'ssh', 'ssh', 'delete']

  create = shlex.split(gcloud[0])
  assert 'sbir-pod' in create
  assert '--accelerator-type=v5litepod-16' in create
  assert '--zone=us-west4-a' in create
  assert '--version=v2-alpha-tpuv5-lite' in create

  archive = shlex.split(lines[0])
  assert archive[:4] == ['git', '-C', REPO, 'archive']

  scp = shlex.split(gcloud[1])
  assert '--worker=all' in scp

  install = shlex.split(gcloud[2])
  assert '--worker=all' in install
  assert f'"jax[tpu]=={pinned_jax_version()}"' in install[-1]
  assert 'pip install -q -r ~/sbir_jax/requirements.txt' in install[-1]

  run = shlex.split(gcloud[3])
  assert '--worker=all' in run
  remote = shlex.split(run[-1].removeprefix('--command='))
  assert '--distributed' in remote
  assert '--workdir=gs://my-bucket/workdir/handbag' in remote
  assert '--config.data.tfds_data_dir=gs://my-bucket/tfds' in remote
  assert remote[-1] == '--config.num_train_steps=100'  # Passed through last.

  delete = shlex.split(lines[-1])
  assert delete[4] == 'delete' and '--quiet' in delete


def test_run_uses_explicit_workdir_and_project(empty_path):
  lines = dry_run_lines(['run', '--name=sbir-v4', '--zone=us-central2-b',
                         '--project=my-proj', '--config=configs/handbag.py:cpu',
                         '--workdir=gs://b/runs/1', '--tfds-data-dir=gs://b/tfds'],
                        empty_path)
  assert len(lines) == 1
  command = shlex.split(lines[0])
  assert command[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'sbir-v4']
  assert '--project=my-proj' in command and '--worker=all' in command
  remote = command[-1]
  assert '--config=configs/handbag.py:cpu' in remote
  assert '--workdir=gs://b/runs/1 ' in remote and '--distributed' in remote


def test_local_workdir_for_pod_slice_is_refused(empty_path):
  result = launch(['run', *POD, '--dry-run', '--workdir=/tmp/run',
                   '--tfds-data-dir=gs://b/tfds'], empty_path)
  assert result.returncode == 2
  assert result.stdout == ''
  assert "--workdir='/tmp/run' is not a gs:// path" in result.stderr
  assert '4 workers' in result.stderr


def test_local_workdir_is_refused_for_all_even_on_one_host(empty_path):
  result = launch(['all', '--name=a', '--zone=us-central2-b', '--dry-run',
                   '--accelerator-type=v4-8', '--workdir=wd',
                   '--tfds-data-dir=gs://b/tfds'], empty_path)
  assert result.returncode == 2
  assert 'deletes the TPU VM' in result.stderr


@pytest.mark.parametrize('args, message', [
    (['create', '--zone=us-central2-b', '--accelerator-type=v4-8'],
     '--name is required'),
    (['delete', '--name=a'], '--zone is required'),
    (['delete', '--name=a', '--zone=us-central2'], 'is not a zone'),
    (['delete', '--name=My_TPU', '--zone=us-central2-b'], 'not a valid TPU name'),
    (['create', '--name=a', '--zone=us-central2-b'], '--accelerator-type is required'),
    (['create', '--name=a', '--zone=us-central2-b', '--accelerator-type=v9x-8'],
     'pass --version'),
    (['run', '--name=a', '--zone=us-central2-b'], '--workdir (or --bucket)'),
    (['run', '--name=a', '--zone=us-central2-b', '--bucket=my-bucket'],
     'must be a gs:// path'),
    (['run', '--name=a', '--zone=us-central2-b', '--bucket=gs://b',
      '--config=configs/missing.py'], 'is not a file of the repository'),
    (['run', '--name=a', '--zone=us-central2-b', '--bucket=gs://b', '--',
      '--workdir=/x'], 'conflicts with the flag'),
    (['setup', '--name=a', '--zone=us-central2-b', '--', '--x=1'],
     'for run and all'),
])
def test_bad_input_stops_with_a_clear_message(capsys, args, message):
  # In-process (argparse exits with status 2): fast, and still no gcloud run.
  with pytest.raises(SystemExit) as exit_info:
    tpu_vm.main(with_dry_run(args))
  assert exit_info.value.code == 2
  captured = capsys.readouterr()
  assert captured.out == ''
  assert message in captured.err


def test_dry_run_after_double_dash_is_refused(empty_path):
  # Passed through, it would leave tpu_vm.py in real mode: it must not run.
  result = launch(['all', *POD, '--bucket=gs://b', '--', '--dry-run'], empty_path)
  assert result.returncode == 2
  assert 'put it before `--`' in result.stderr
  assert result.stdout == '' and '+ ' not in result.stderr


def test_single_host_run_may_use_a_vm_local_workdir(empty_path):
  lines = dry_run_lines(['run', '--name=a', '--zone=us-central2-b',
                         '--accelerator-type=v4-8', '--workdir=/home/me/run',
                         '--tfds-data-dir=gs://b/tfds'], empty_path)
  assert '--workdir=/home/me/run' in lines[0]


def test_create_flags(empty_path):
  (line,) = dry_run_lines(['create', '--name=a', '--zone=us-central2-b',
                           '--accelerator-type=v4-8', '--spot'], empty_path)
  assert shlex.split(line) == [
      'gcloud', 'compute', 'tpus', 'tpu-vm', 'create', 'a', '--zone=us-central2-b',
      '--accelerator-type=v4-8', '--version=tpu-ubuntu2204-base', '--spot']
  (line,) = dry_run_lines(['create', '--name=a', '--zone=us-central2-b',
                           '--accelerator-type=v4-8', '--preemptible',
                           '--version=my-runtime'], empty_path)
  assert line.endswith('--version=my-runtime --preemptible')


def test_all_runs_commands_and_deletes_when_run_fails(fake_bin, tmp_path):
  path, log = fake_bin
  result = launch(['all', *POD, '--bucket=gs://b'], path, FAKE_LOG=str(log),
                  FAIL_ON='sbir_jax.main', TMPDIR=str(tmp_path))
  assert result.returncode == 1
  calls = log.read_text().splitlines()
  assert [c.split()[0] + ' ' + c.split()[4 if c.startswith('gcloud') else 3]
          for c in calls] == ['git archive', 'gcloud create', 'gcloud scp',
                              'gcloud ssh', 'gcloud ssh', 'gcloud delete']
  assert 'exit status 3' in result.stderr and 'sbir_jax.main' in result.stderr
  assert 'was deleted' in result.stderr


def test_all_does_not_delete_a_vm_it_failed_to_create(fake_bin):
  path, log = fake_bin
  result = launch(['all', *POD, '--bucket=gs://b'], path, FAKE_LOG=str(log),
                  FAIL_ON='tpu-vm create')
  assert result.returncode == 1
  calls = log.read_text().splitlines()
  assert len(calls) == 2 and 'tpu-vm create' in calls[-1]
  assert 'Command failed with exit status 3: gcloud compute tpus tpu-vm create' \
      in result.stderr


def test_all_creates_nothing_when_packing_the_code_fails(fake_bin):
  path, log = fake_bin
  result = launch(['all', *POD, '--bucket=gs://b'], path, FAKE_LOG=str(log),
                  FAIL_ON='archive')
  assert result.returncode == 1
  calls = log.read_text().splitlines()
  assert len(calls) == 1 and calls[0].startswith('git -C')  # No create, no delete.
  assert 'exit status 3: git -C' in result.stderr
  assert 'deleted' not in result.stderr


def test_missing_gcloud_is_a_clear_error(empty_path):
  result = launch(['delete', '--name=a', '--zone=us-central2-b'], empty_path)
  assert result.returncode == 1
  assert 'gcloud not found on PATH' in result.stderr


def test_num_hosts():
  assert tpu_vm.num_hosts('v4-8') == 1
  assert tpu_vm.num_hosts('v4-32') == 4
  assert tpu_vm.num_hosts('v5p-8') == 1
  assert tpu_vm.num_hosts('v5litepod-8') == 1
  assert tpu_vm.num_hosts('v5litepod-16') == 4
  assert tpu_vm.num_hosts('v6e-64') == 16
  assert tpu_vm.num_hosts('v9x-8') is None


def test_read_jax_version(tmp_path):
  assert tpu_vm.read_jax_version(os.path.join(REPO, 'requirements.txt')) \
      == pinned_jax_version()
  requirements = tmp_path / 'requirements.txt'
  requirements.write_text('jaxlib==0.1\nflax\n')
  with pytest.raises(ValueError, match='pins no jax version'):
    tpu_vm.read_jax_version(str(requirements))
  requirements.write_text('jax==0.2  # comment\njaxlib==0.1\n')
  with pytest.raises(ValueError, match='needs them equal'):
    tpu_vm.read_jax_version(str(requirements))


def test_run_command_is_pure_and_quotes_extra_args():
  target = tpu_vm.make_target('a', 'us-central2-b')
  command = tpu_vm.run_command(target, 'configs/handbag.py', 'gs://b/w',
                               'gs://b/tfds', ["--config.loss.energy=it's"])
  assert command == tpu_vm.run_command(target, 'configs/handbag.py', 'gs://b/w',
                                       'gs://b/tfds', ["--config.loss.energy=it's"])
  remote = command[-1].removeprefix('--command=')
  # The remote shell must see the odd argument as one word, unchanged.
  assert shlex.split(remote)[-1] == "--config.loss.energy=it's"
