"""The record of a results run: what produced a number, next to the number.

Every training run writes `<workdir>/record.json`: the git commit (and
whether the tree had uncommitted changes), the config and its variants, the
seed, a fingerprint of the data files read, the validation and test metrics
of the checkpoint selected on validation, the training time and the machine.
`sbir_jax/experiments.py` runs a config over seeds, copies these records into
the committed `results/` folder and builds the README's tables from them, so
a table and its evidence cannot drift apart.
"""
import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
from typing import Any, Optional

import jax
import ml_collections

RECORD_FILE = 'record.json'
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def git_state(repo: str = _REPO) -> dict[str, Any]:
  """{'commit': HEAD or None, 'dirty': uncommitted changes to tracked files}."""
  def git(*args: str) -> Optional[str]:
    try:
      return subprocess.run(['git', '-C', repo, *args], capture_output=True,
                            text=True, check=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
      return None
  commit = git('rev-parse', 'HEAD')
  status = git('status', '--porcelain', '--untracked-files=no')
  return {'commit': commit, 'dirty': bool(status) if status is not None else None}


def fingerprint_files(root: str) -> dict[str, Any]:
  """sha256 over every file under `root` (relative path and content), sorted."""
  digest, count, size = hashlib.sha256(), 0, 0
  for folder, dirs, files in os.walk(root):
    dirs.sort()
    for name in sorted(files):
      path = os.path.join(folder, name)
      digest.update(os.path.relpath(path, root).encode() + b'\0')
      with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
          digest.update(block)
          size += len(block)
      count += 1
  return {'root': os.path.abspath(root), 'files': count, 'bytes': size,
          'sha256': digest.hexdigest()}


def data_fingerprints(data_config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Fingerprints of the local data folders the config reads (`*_dir` keys).

  A folder left empty ('' = downloaded by the builder) is recorded as such.
  """
  out = {}
  for key, value in sorted(data_config.items()):
    if key.endswith('_dir') and key != 'tfds_data_dir' and isinstance(value, str):
      out[key] = fingerprint_files(value) if value and os.path.isdir(value) else {
          'root': value, 'files': 0, 'note': 'not a local folder (downloaded)'}
  return out


# Libraries whose versions can change a run's arithmetic or data (besides
# jax's, recorded on its own): a seed repeats a run only on the same setup.
PACKAGES = ('jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'numpy', 'tensorflow',
            'tensorflow-cpu', 'tensorflow-datasets')


def package_versions() -> dict[str, str]:
  """Installed version of each of PACKAGES (absent ones left out)."""
  versions = {}
  for name in PACKAGES:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      pass
  return versions


def cpu_description() -> dict[str, Any]:
  """The CPU's name, family/model and widest vector extension (Linux).

  Cloud VMs report one brand name ("AMD EPYC") for generations that differ
  threefold in speed and in float arithmetic; family/model and the vector
  extensions tell them apart.
  """
  fields = {}
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if not line.strip():
          break  # the first processor's block is enough
        key, _, value = line.partition(':')
        fields[key.strip()] = value.strip()
  except OSError:
    pass
  flags = set(fields.get('flags', '').split())
  vector = next((name for name in ('avx512f', 'avx2', 'avx', 'sse4_2') if name in flags), None)
  return {'cpu': fields.get('model name') or platform.processor() or platform.machine(),
          'cpu_id': (f"family {fields['cpu family']} model {fields['model']}"
                     if 'cpu family' in fields and 'model' in fields else None),
          'cpu_vector': vector}


def machine() -> dict[str, Any]:
  """The hardware and software the run used."""
  return {'platform': jax.default_backend(), 'device_kind': jax.devices()[0].device_kind,
          'devices': jax.device_count(), 'processes': jax.process_count(),
          **cpu_description(), 'cpu_count': os.cpu_count(), 'hostname': platform.node(),
          'jax': jax.__version__, 'python': platform.python_version(),
          'packages': package_versions()}


def split_metrics(metrics: dict[str, float], split: str) -> dict[str, float]:
  """{'acc@1': ..} from {'val_acc@1': .., 'test_acc@1': ..} for `split`."""
  prefix = split + '_'
  return {k[len(prefix):]: v for k, v in metrics.items() if k.startswith(prefix)}


def make_record(config: ml_collections.ConfigDict, config_arg: Optional[str],
                results: dict[str, Any], code: dict[str, Any]) -> dict[str, Any]:
  """The record of a finished run; `results` is the trainer's 'train' entry,
  `code` the git_state() taken when the run (or its last resumed part)
  started: HEAD may have moved on since."""
  metrics = {k: v for k, v in results.items() if isinstance(v, float)}
  return {
      'config_arg': config_arg,
      'task': config.task,
      'seed': int(config.seed),
      'config': json.loads(config.to_json_best_effort()),
      'git': code,
      'data': data_fingerprints(config.data),
      'selected_step': results.get('selected_step'),
      'trained_steps': results.get('trained_steps'),
      # The whole training over resumes; the last part alone where earlier
      # parts were not timed (train_seconds_resumed_only says so).
      'train_seconds': (results.get('train_seconds') if results.get('train_seconds') is not None
                        else results.get('train_seconds_this_run')),
      'train_seconds_resumed_only': results.get('train_seconds') is None,
      'val': split_metrics(metrics, 'val'),
      'test': split_metrics(metrics, 'test'),
      'machine': machine(),
      'finished': datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec='seconds'),
  }


def write_record(workdir: str, record: dict[str, Any]) -> str:
  """Writes <workdir>/record.json atomically; returns its path."""
  path = os.path.join(workdir, RECORD_FILE)
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(record, f, indent=2, sort_keys=True)
  os.replace(tmp, path)
  return path
