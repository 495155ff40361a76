"""2 processes x 4 CPU devices (gloo) train and evaluate exactly like 1 x 8."""
import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np

from sbir_jax.core import checkpointing

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _launch(workdir, devices_per_process, num_processes, tfds_dir, qmul_v1_dir):
  env = dict(os.environ,
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices_per_process}')
  args = [sys.executable, '-m', 'sbir_jax.main', '--config=configs/shoes.py:tiny',
          f'--workdir={workdir}', f'--config.data.tfds_data_dir={tfds_dir}',
          f'--config.data.manual_dir={qmul_v1_dir}']
  if num_processes > 1:
    port = _free_port()
    args += ['--distributed', f'--coordinator_address=localhost:{port}',
             f'--num_processes={num_processes}']
  procs = [subprocess.Popen(args + ([f'--process_id={i}'] if num_processes > 1 else []),
                            cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
           for i in range(num_processes)]
  try:
    outputs = [p.communicate(timeout=600)[0] for p in procs]
  finally:
    for p in procs:
      p.kill()
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-4000:]


def test_two_processes_match_one_process(tmp_path, tfds_dir, qmul_v1_dir):
  single, multi = tmp_path / 'single', tmp_path / 'multi'
  _launch(single, 8, 1, tfds_dir, qmul_v1_dir)
  _launch(multi, 4, 2, tfds_dir, qmul_v1_dir)
  results = [json.loads((d / 'results.json').read_text())['train']
             for d in (single, multi)]
  assert results[0]['devices'] == results[1]['devices'] == 8
  for key in ('test_acc@1', 'test_acc@10', 'selected_step'):
    assert results[0][key] == results[1][key], key
  params = [checkpointing.load_on_one_device(str(d))['params'] for d in (single, multi)]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               *params)
