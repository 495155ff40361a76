"""Runs sbir_jax on a Cloud TPU VM or pod slice with gcloud.

  python launch/tpu_vm.py create --name=NAME --zone=ZONE --accelerator-type=v4-8
  python launch/tpu_vm.py setup  --name=NAME --zone=ZONE
  python launch/tpu_vm.py run    --name=NAME --zone=ZONE --bucket=gs://B [-- ARGS]
  python launch/tpu_vm.py delete --name=NAME --zone=ZONE
  python launch/tpu_vm.py all    ... (create, setup, run; delete even on failure)

`setup` ships the committed HEAD (`git archive`) to every worker and installs
requirements.txt plus jax[tpu] of the jax version pinned there, in a Python 3.11
venv. `run` starts the same `python -m sbir_jax.main ... --distributed` on all
workers and streams their logs; ARGS after `--` go to sbir_jax.main unchanged.
`--dry-run` prints the commands, one per line, instead of running them.

Commands are built by pure functions (`create_command`, `setup_commands`,
`run_command`, `delete_command`) and executed by `execute`. Standard library
only, so it runs wherever gcloud does. See launch/README.md.
"""
import argparse
import dataclasses
import os
import re
import shlex
import subprocess
import sys
import tempfile
from typing import IO, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Remote layout, relative to the worker's home directory (plain names, so they
# need no quoting and `~/` in front of them expands in the remote shell).
REMOTE_TARBALL = 'sbir_jax.tar.gz'
REMOTE_CODE_DIR = 'sbir_jax'
REMOTE_VENV = 'sbir_jax_venv'
# jax 0.10 and numpy 2.4 need Python >= 3.11; the TPU images ship Ubuntu
# 22.04's 3.10, so setup installs 3.11 from the deadsnakes PPA when missing.
REMOTE_PYTHON = 'python3.11'

# Runtime (--version) per TPU generation, from the Cloud TPU "TPU software
# versions" page (the JAX / PyTorch row).
DEFAULT_RUNTIMES = {
    'v2': 'tpu-ubuntu2204-base',
    'v3': 'tpu-ubuntu2204-base',
    'v4': 'tpu-ubuntu2204-base',
    'v5p': 'v2-alpha-tpuv5',
    'v5litepod': 'v2-alpha-tpuv5-lite',
    'v6e': 'v2-alpha-tpuv6e',
}
# The number in v2/v3/v4/v5p names counts TensorCores (8 per host); in
# v5litepod/v6e names it counts chips (up to 8 on one host, else 4 per host).
_CORE_COUNTED = ('v2', 'v3', 'v4', 'v5p')
_CHIP_COUNTED = ('v5litepod', 'v6e')

_NAME_RE = re.compile(r'^[a-z]([-a-z0-9]*[a-z0-9])?$')
_ZONE_RE = re.compile(r'^[a-z]+-[a-z]+[0-9]+-[a-z]$')
_ACCELERATOR_RE = re.compile(r'^(v[0-9]+[a-z]*)-([0-9]+)$')
_VERSION_RE = re.compile(r'^[0-9][0-9A-Za-z.+!-]*$')


class CommandError(RuntimeError):
  """A launched command failed or could not start."""

  def __init__(self, message: str, command: Sequence[str]):
    super().__init__(message)
    self.command = list(command)


@dataclasses.dataclass(frozen=True)
class Target:
  """Which TPU VM the gcloud commands address."""
  name: str
  zone: str
  project: str | None = None

  def flags(self) -> list[str]:
    flags = [f'--zone={self.zone}']
    if self.project:
      flags.append(f'--project={self.project}')
    return flags


# ---------------------------------------------------------------------------
# Validation (raises ValueError with the fix in the message).
# ---------------------------------------------------------------------------
def make_target(name: str | None, zone: str | None,
                project: str | None = None) -> Target:
  """Checks the TPU name and zone and returns the Target they address."""
  if not name:
    raise ValueError('--name is required: the TPU VM name, e.g. --name=sbir-v4.')
  if not _NAME_RE.match(name):
    raise ValueError(f'--name={name!r} is not a valid TPU name: use lowercase '
                     'letters, digits and hyphens, starting with a letter.')
  if not zone:
    raise ValueError('--zone is required, e.g. --zone=us-central2-b (v4) or '
                     '--zone=us-west4-a (v5e).')
  if not _ZONE_RE.match(zone):
    raise ValueError(f'--zone={zone!r} is not a zone (a region plus a letter, '
                     'e.g. us-central2-b).')
  return Target(name, zone, project or None)


def parse_accelerator(accelerator_type: str) -> tuple[str, int]:
  """'v5litepod-16' -> ('v5litepod', 16)."""
  match = _ACCELERATOR_RE.match(accelerator_type or '')
  if not match:
    raise ValueError(f'--accelerator-type={accelerator_type!r} is not a TPU type; '
                     'use e.g. v4-8, v4-32, v5litepod-16, v5p-8 or v6e-8.')
  return match.group(1), int(match.group(2))


def num_hosts(accelerator_type: str) -> int | None:
  """Worker VMs of a slice (None if the generation is unknown here)."""
  generation, count = parse_accelerator(accelerator_type)
  if generation in _CORE_COUNTED:
    return max(1, count // 8)
  if generation in _CHIP_COUNTED:
    return 1 if count <= 8 else count // 4
  return None


def default_runtime(accelerator_type: str) -> str:
  generation, _ = parse_accelerator(accelerator_type)
  if generation not in DEFAULT_RUNTIMES:
    raise ValueError(f'No default runtime known for {accelerator_type!r}; pass '
                     '--version (see `gcloud compute tpus tpu-vm versions list`).')
  return DEFAULT_RUNTIMES[generation]


def read_jax_version(requirements_path: str) -> str:
  """The `jax==X` pin of requirements.txt (jax[tpu] must match it exactly)."""
  try:
    with open(requirements_path) as f:
      lines = [line.split('#', 1)[0].strip() for line in f]
  except OSError as e:
    raise ValueError(f'Cannot read {requirements_path} ({e}); run from a '
                     'checkout of the repository.') from e
  pins = dict(line.split('==', 1) for line in lines if '==' in line)
  pins = {name.strip().lower(): version.strip() for name, version in pins.items()}
  if 'jax' not in pins:
    raise ValueError(f'{requirements_path} pins no jax version; add a line '
                     '`jax==X.Y.Z` so TPU workers install the matching jax[tpu].')
  if pins.get('jaxlib', pins['jax']) != pins['jax']:
    raise ValueError(f'{requirements_path} pins jax=={pins["jax"]} but '
                     f'jaxlib=={pins["jaxlib"]}; jax[tpu] needs them equal.')
  if not _VERSION_RE.match(pins['jax']):
    raise ValueError(f'{requirements_path}: jax=={pins["jax"]} is not a plain '
                     'version; pin an exact release, e.g. jax==0.10.2.')
  return pins['jax']


def _is_gcs(path: str | None) -> bool:
  return bool(path) and path.startswith('gs://') and len(path.rstrip('/')) > 5


def run_name(config: str) -> str:
  """configs/handbag.py:cpu,tiny -> handbag_cpu_tiny (as sbir_jax.main names it)."""
  path, _, variants = config.partition(':')
  name = os.path.splitext(os.path.basename(path))[0]
  return name + ('_' + variants.replace(',', '_') if variants else '')


def resolve_run_dirs(*, config: str, workdir: str | None,
                     tfds_data_dir: str | None, bucket: str | None,
                     hosts: int | None, vm_is_deleted: bool) -> tuple[str, str]:
  """The (workdir, tfds_data_dir) to pass, defaulted from --bucket and checked.

  Args:
    config: the --config value for sbir_jax.main.
    workdir: explicit --workdir, or None to derive it from `bucket`.
    tfds_data_dir: explicit TFDS data dir, or None for `<bucket>/tfds`.
    bucket: gs://bucket[/prefix], or None.
    hosts: worker VMs of the slice (None: unknown, treated as several).
    vm_is_deleted: True for `all`, whose VM (and its disk) is deleted after.

  Returns:
    (workdir, tfds_data_dir).
  """
  if bucket is not None:
    if not _is_gcs(bucket):
      raise ValueError(f'--bucket={bucket!r} must be a gs:// path, e.g. '
                       '--bucket=gs://my-bucket.')
    bucket = bucket.rstrip('/')
    workdir = workdir or f'{bucket}/workdir/{run_name(config)}'
    tfds_data_dir = tfds_data_dir or f'{bucket}/tfds'
  if not workdir:
    raise ValueError('--workdir (or --bucket) is required, e.g. '
                     '--bucket=gs://my-bucket or --workdir=gs://my-bucket/run1.')
  if not tfds_data_dir:
    raise ValueError('--tfds-data-dir (or --bucket) is required: the gs:// folder '
                     'holding the prepared qmul_v1/ TFDS data (see launch/README.md).')
  if hosts != 1 or vm_is_deleted:
    if vm_is_deleted:
      why = '`all` deletes the TPU VM and its disk after the run'
    elif hosts is None:
      why = ('the slice may have several workers, which must share the files '
             '(pass --accelerator-type of a single-host slice to allow a local '
             'path)')
    else:
      why = f'the {hosts} workers of this slice must share the files'
    for flag, value in (('--workdir', workdir), ('--tfds-data-dir', tfds_data_dir)):
      if not _is_gcs(value):
        raise ValueError(f'{flag}={value!r} is not a gs:// path, but {why}. Use a '
                         f'bucket: {flag}=gs://my-bucket/... or --bucket.')
  return workdir, tfds_data_dir


def check_extra_args(extra_args: Sequence[str]) -> None:
  """Refuses pass-through flags that this script already sets."""
  for arg in extra_args:
    flag = arg.split('=', 1)[0]
    if flag == '--dry-run':  # Passed on, it would let the real commands run.
      raise ValueError('--dry-run after `--` would go to sbir_jax.main; put it '
                       'before `--`.')
    if flag in ('--workdir', '--config', '--distributed'):
      raise ValueError(f'{arg!r} after `--` conflicts with the flag this script '
                       f'sets; pass {flag} to tpu_vm.py itself (before `--`).')


# ---------------------------------------------------------------------------
# Command builders (pure: same inputs, same argv lists).
# ---------------------------------------------------------------------------
def _tpu_vm(verb: str) -> list[str]:
  return ['gcloud', 'compute', 'tpus', 'tpu-vm', verb]


def create_command(target: Target, accelerator_type: str, version: str,
                   provisioning: str | None = None) -> list[str]:
  """`gcloud ... create`; provisioning is None, 'spot' or 'preemptible'."""
  command = _tpu_vm('create') + [target.name, *target.flags(),
                                 f'--accelerator-type={accelerator_type}',
                                 f'--version={version}']
  if provisioning:
    command.append(f'--{provisioning}')
  return command


def ssh_command(target: Target, remote_command: str) -> list[str]:
  """Runs `remote_command` on every worker at once, output streamed back."""
  return _tpu_vm('ssh') + [target.name, *target.flags(), '--worker=all',
                           f'--command={remote_command}']


def install_script(jax_version: str) -> str:
  """Shell for one worker: unpack the code, make the venv, pip install."""
  venv_bin = f'~/{REMOTE_VENV}/bin'
  apt = 'sudo apt-get -o DPkg::Lock::Timeout=600 -q'  # Boot-time apt may hold the lock.
  get_python = (f'{{ command -v {REMOTE_PYTHON} >/dev/null || {{ '
                'sudo add-apt-repository -y ppa:deadsnakes/ppa && '
                f'{apt} update && {apt} install -y {REMOTE_PYTHON} '
                f'{REMOTE_PYTHON}-venv; }}; }}')
  steps = [
      f'rm -rf ~/{REMOTE_CODE_DIR}',
      f'mkdir -p ~/{REMOTE_CODE_DIR}',
      f'tar -xzf ~/{REMOTE_TARBALL} -C ~/{REMOTE_CODE_DIR}',
      get_python,
      f'{REMOTE_PYTHON} -m venv ~/{REMOTE_VENV}',
      f'{venv_bin}/pip install -q --upgrade pip',
      # One resolve, so requirements and jax[tpu] agree on every pin.
      f'{venv_bin}/pip install -q -r ~/{REMOTE_CODE_DIR}/requirements.txt '
      f'"jax[tpu]=={jax_version}"',
  ]
  return ' && '.join(steps)


def setup_commands(target: Target, repo: str, jax_version: str,
                   tarball: str) -> list[list[str]]:
  """Pack HEAD locally, copy it to every worker, install there."""
  return [
      ['git', '-C', repo, 'archive', '--format=tar.gz', f'--output={tarball}',
       'HEAD'],
      _tpu_vm('scp') + [tarball, f'{target.name}:{REMOTE_TARBALL}',
                        *target.flags(), '--worker=all'],
      ssh_command(target, install_script(jax_version)),
  ]


def run_command(target: Target, config: str, workdir: str, tfds_data_dir: str,
                extra_args: Sequence[str] = ()) -> list[str]:
  """The same sbir_jax.main on all workers; each joins jax.distributed."""
  main_args = [
      '-m', 'sbir_jax.main', f'--config={config}', f'--workdir={workdir}',
      f'--config.data.tfds_data_dir={tfds_data_dir}',
      # The config's default manual dir is a local path absent on the VM; the
      # prepared TFDS data in the bucket is all the workers need. Later args win.
      '--config.data.manual_dir=',
      '--distributed', *extra_args,
  ]
  remote = (f'cd ~/{REMOTE_CODE_DIR} && PYTHONUNBUFFERED=1 '
            f'~/{REMOTE_VENV}/bin/python ' + shlex.join(main_args))
  return ssh_command(target, remote)


def delete_command(target: Target) -> list[str]:
  # --quiet: no confirmation prompt, so `all` can clean up unattended.
  return _tpu_vm('delete') + [target.name, *target.flags(), '--quiet']


def local_tarball(name: str) -> str:
  return os.path.join(tempfile.gettempdir(), f'sbir_jax_{name}.tar.gz')


# ---------------------------------------------------------------------------
# Runner.
# ---------------------------------------------------------------------------
def _run_one(command: Sequence[str], dry_run: bool, out: IO[str]) -> None:
  line = shlex.join(command)
  if dry_run:
    print(line, file=out, flush=True)
    return
  print(f'+ {line}', file=sys.stderr, flush=True)
  try:
    returncode = subprocess.run(list(command), check=False).returncode
  except FileNotFoundError as e:
    hint = ('install the Google Cloud CLI and run `gcloud auth login`'
            if command[0] == 'gcloud' else f'install {command[0]}')
    raise CommandError(f'{command[0]} not found on PATH ({hint}); could not '
                       f'run: {line}', command) from e
  if returncode != 0:
    raise CommandError(f'Command failed with exit status {returncode}: {line}',
                       command)


def execute(commands: Sequence[Sequence[str]], *, dry_run: bool,
            cleanup: Sequence[Sequence[str]] = (),
            out: IO[str] | None = None) -> None:
  """Runs `commands` in order, stopping at the first failure; then `cleanup`.

  `cleanup` runs whatever happens to `commands` (failure, Ctrl-C), so a broken
  run does not leave a paid TPU VM behind.
  """
  out = out or sys.stdout
  try:
    for command in commands:
      _run_one(command, dry_run, out)
  finally:
    for command in cleanup:
      _run_one(command, dry_run, out)


# ---------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
  common = argparse.ArgumentParser(add_help=False)
  common.add_argument('--name', help='TPU VM name (required).')
  common.add_argument('--zone', help='Zone, e.g. us-central2-b (required).')
  common.add_argument('--project', help='GCP project (default: gcloud config).')
  common.add_argument('--dry-run', action='store_true',
                      help='Print the commands instead of running them.')

  create = argparse.ArgumentParser(add_help=False)
  create.add_argument('--accelerator-type',
                      help='e.g. v4-8 (one host), v5litepod-16 (4 hosts).')
  create.add_argument('--version', help='TPU runtime (default: by generation).')
  kind = create.add_mutually_exclusive_group()
  kind.add_argument('--spot', dest='provisioning', action='store_const',
                    const='spot', help='Spot VM (cheaper, may be preempted).')
  kind.add_argument('--preemptible', dest='provisioning', action='store_const',
                    const='preemptible', help='Preemptible VM.')

  run = argparse.ArgumentParser(add_help=False)
  run.add_argument('--config', default='configs/handbag.py',
                   help='sbir_jax.main --config value (default: %(default)s).')
  run.add_argument('--bucket', help='gs://bucket: workdir defaults to '
                   '<bucket>/workdir/<config>, TFDS data dir to <bucket>/tfds.')
  run.add_argument('--workdir', help='Checkpoints and results (gs:// for pods).')
  run.add_argument('--tfds-data-dir', help='Prepared TFDS data (gs:// for pods).')

  parser = argparse.ArgumentParser(
      description=__doc__.split('\n\n')[0],
      epilog='Arguments after `--` are passed to sbir_jax.main (run, all).')
  commands = parser.add_subparsers(dest='subcommand', required=True)
  commands.add_parser('create', parents=[common, create],
                      help='Create a TPU VM or pod slice.')
  commands.add_parser('setup', parents=[common],
                      help='Copy HEAD to every worker and install.')
  passthrough = 'Arguments after `--` are passed to sbir_jax.main.'
  run_parser = commands.add_parser('run', parents=[common, run], epilog=passthrough,
                                   help='Train on all workers, streaming logs.')
  # For run alone the slice size is optional; it only relaxes the gs:// check.
  run_parser.add_argument('--accelerator-type',
                          help='Slice type; a single-host type allows a local '
                          '--workdir on the VM.')
  commands.add_parser('delete', parents=[common], help='Delete the TPU VM.')
  commands.add_parser('all', parents=[common, create, run], epilog=passthrough,
                      help='create, setup, run, then delete (even on failure).')
  return parser


def plan(args: argparse.Namespace, extra_args: Sequence[str],
         repo: str = REPO) -> tuple[list[list[str]], list[list[str]], list[list[str]]]:
  """(first, body, cleanup) commands for parsed args; raises ValueError.

  `first` must succeed before `body` runs; `cleanup` runs after `body` whatever
  its outcome (only `all` has one: deleting a VM this run created).
  """
  sub = args.subcommand
  target = make_target(args.name, args.zone, args.project)
  check_extra_args(extra_args)
  if extra_args and sub not in ('run', 'all'):
    raise ValueError(f'Arguments after `--` are for run and all, not {sub}: '
                     f'{shlex.join(extra_args)}')
  accelerator = getattr(args, 'accelerator_type', None)
  create, setup, run = [], [], []
  if sub in ('create', 'all'):
    if not accelerator:
      raise ValueError('--accelerator-type is required, e.g. v4-8 or v5litepod-16.')
    version = args.version or default_runtime(accelerator)
    create = [create_command(target, accelerator, version, args.provisioning)]
  if sub in ('run', 'all'):
    config_path = args.config.partition(':')[0]
    if not os.path.isfile(os.path.join(repo, config_path)):
      raise ValueError(f'--config={args.config!r}: {config_path} is not a file of '
                       f'the repository ({repo}); use e.g. configs/handbag.py.')
    workdir, tfds_data_dir = resolve_run_dirs(
        config=args.config, workdir=args.workdir,
        tfds_data_dir=args.tfds_data_dir, bucket=args.bucket,
        hosts=num_hosts(accelerator) if accelerator else None,
        vm_is_deleted=sub == 'all')
    run = [run_command(target, args.config, workdir, tfds_data_dir, extra_args)]
  if sub in ('setup', 'all'):
    jax_version = read_jax_version(os.path.join(repo, 'requirements.txt'))
    setup = setup_commands(target, repo, jax_version, local_tarball(target.name))

  if sub == 'create':
    return create, [], []
  if sub == 'setup':
    return [], setup, []
  if sub == 'run':
    return [], run, []
  if sub == 'delete':
    return [], [delete_command(target)], []
  # `all` packs the code before creating the VM: a local failure costs nothing.
  return setup[:1] + create, setup[1:] + run, [delete_command(target)]


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  extra_args = []
  if '--' in argv:  # Split by hand: argparse would try to parse main's flags.
    cut = argv.index('--')
    argv, extra_args = argv[:cut], argv[cut + 1:]
  parser = _parser()
  args = parser.parse_args(argv)
  try:
    first, body, cleanup = plan(args, extra_args)
  except ValueError as e:
    parser.error(str(e))  # Exits with status 2 and the usage line.
  try:
    execute(first, dry_run=args.dry_run)
  except CommandError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  try:
    execute(body, dry_run=args.dry_run, cleanup=cleanup)
  except CommandError as e:
    if isinstance(e.__context__, CommandError):  # The cause, before cleanup failed.
      print(f'error: {e.__context__}', file=sys.stderr)
    print(f'error: {e}', file=sys.stderr)
    if e.command in cleanup:
      print(f'The TPU VM {args.name} may still exist: check `gcloud compute tpus '
            f'tpu-vm list --zone={args.zone}` and delete it.', file=sys.stderr)
    elif cleanup:
      print(f'The TPU VM {args.name} was deleted.', file=sys.stderr)
    return 1
  except KeyboardInterrupt:
    print('Interrupted.', file=sys.stderr)
    return 130
  return 0


if __name__ == '__main__':
  sys.exit(main())
