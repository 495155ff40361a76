"""benchmarks/device_check.py --small: the CI run of the device check on CPU.

Runs the command as CI does (its own process, one CPU device) and checks the
JSON section by section; on CPU the peak fraction must say 'unknown' (the
table has no CPU entry) while examples/s are measured.
"""
import json
import os
import subprocess
import sys
import threading

import pytest

from benchmarks import device_check

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def small_run(tmp_path_factory):
  out = str(tmp_path_factory.mktemp('device_check') / 'small.json')
  env = dict(os.environ)
  env.pop('XLA_FLAGS', None)  # One CPU device, as `python -m ...` gets in CI.
  # Generous timeouts: a loaded CI machine must not turn slowness into a failure
  # (the per-section timeout logic is checked below without running anything).
  proc = subprocess.run(
      [sys.executable, '-m', 'benchmarks.device_check', '--small', f'--out={out}',
       '--budget_s=600', '--section_timeout_s=300'],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(out) as f:
    return json.load(f)


def test_small_run_writes_every_section(small_run):
  assert small_run['sizes'] == 'small'
  assert small_run['backend'] == 'cpu'
  assert small_run['skipped'] == {}
  sections = small_run['sections']
  assert list(sections) == list(device_check.SECTIONS)
  assert all(s['status'] == 'ok' for s in sections.values()), sections
  assert sections['environment']['peak_flops'] is None
  assert 'fractions are unknown' in sections['environment']['peak_note']


@pytest.mark.parametrize('name', ['dssa_sketch_a_net', 'dssa_efficientnet', 'lbf_big'])
def test_train_step_sections_measure_speed_with_unknown_peak_fraction(small_run, name):
  section = small_run['sections'][name]
  assert section['examples_per_second'] > 0
  assert section['compile_seconds'] > 0
  assert section['flops_per_step'] > 0  # XLA's cost analysis works on CPU.
  assert section['peak_fraction'] == 'unknown'  # No CPU peak in the table.


def test_input_pipeline_and_topk_sections(small_run):
  pipeline = small_run['sections']['input_pipeline']
  assert pipeline['tf_data_triplets_per_second'] > 0
  assert pipeline['to_device_triplets_per_second'] > 0
  assert pipeline['fed_step_triplets_per_second'] > 0
  assert pipeline['pipeline_over_step'] == pytest.approx(
      pipeline['tf_data_triplets_per_second'] / pipeline['step_alone_triplets_per_second'],
      rel=1e-2)
  topk = small_run['sections']['topk']
  assert topk['gallery'] == device_check.SIZES['small']['gallery']
  for queries in device_check.SIZES['small']['queries']:
    assert topk[f'queries_{queries}']['queries_per_second'] > 0


def test_peak_table_matches_device_kinds_and_computes_fractions():
  assert device_check.peak_fraction(1e12, 1.0, 'cpu', 'float32') == 'unknown'
  # 494.7 TFLOP/s of bfloat16 work on an H100 SXM: half its dense peak.
  assert device_check.peak_fraction(494.7e12, 1.0, 'NVIDIA H100 80GB HBM3',
                                    'bfloat16') == pytest.approx(0.5)
  assert device_check.peak_fraction(1e12, 1.0, 'TPU v4', 'float32') == 'unknown'
  for kind in ('TPU v4', 'TPU v5 lite', 'TPU v5p', 'TPU v6 lite', 'NVIDIA H200',
               'NVIDIA A100-SXM4-80GB'):
    entry = device_check.peak_entry(kind)
    assert entry['bfloat16'] > 1e14 and entry['source']


def test_a_section_over_its_timeout_is_reported_and_later_ones_skipped(tmp_path):
  release = threading.Event()
  check = device_check.Check(str(tmp_path / 'c.json'), 'small', 'float32',
                             budget_s=60, section_timeout_s=0.5)
  check.run('slow', lambda: release.wait(30) and {})
  check.run('next', lambda: {'ran': True})
  release.set()
  with open(tmp_path / 'c.json') as f:
    written = json.load(f)
  assert written['sections']['slow']['status'] == 'timed_out'
  assert 'next' in written['skipped'] and 'slow' in written['skipped']['next']
