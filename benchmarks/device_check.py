"""The device check: how close sbir_jax runs to an accelerator's limit.

  python -m benchmarks.device_check [--out=PATH] [--compute_dtype=auto]
      [--sections=dssa_sketch_a_net,...] [--budget_s=240]
  python -m benchmarks.device_check --small     # tiny sizes; what CI runs on CPU

Sections, in order (each with its own timeout; the whole run stays within
--budget_s after start-up):
  environment        backend, device kind and count, the peak FLOP/s entry used
  dssa_sketch_a_net  DSSA train step on Sketch-a-Net, 225 px, batch 128 (the paper's)
  dssa_efficientnet  DSSA train step on the EfficientNet-Lite0 trunk, 224 px, batch 128
  lbf_big            LBF big (K = 36 entities) train step, batch 128
  input_pipeline     the FG-SBIR tf.data triplet pipeline alone (triplets/s), the
                     same with the batches put on the devices (prefetch_to_mesh),
                     and the DSSA step fed by it, against the step's own rate
  topk               exact top-10 through GalleryIndex for 100 and 10,000 queries
                     over a 10^7 x 512 gallery
A train step section reports compile time, steady-state examples/s, FLOPs per
step from XLA's cost analysis of the compiled step, and the fraction of the
chip's peak reached (FLOPs / time / peak for the device kind and compute
dtype, from `PEAK_FLOPS`; 'unknown' where the table has no entry, e.g. CPU).
Every section also reports the device's peak memory so far
(`memory_stats()['peak_bytes_in_use']`; null where the backend has none).

Sizes follow the backend: the paper's on TPU/GPU; smaller ones on CPU (the
full sizes would take hours there); --small shrinks everything to seconds.
The gallery shrinks (and says so) where 10^7 x 512 float32 does not fit in
device memory. Inputs are generated (benchmarks/synthetic.py): speed does not
depend on pixel values or weights. The JSON is rewritten after every section,
so a run cut short keeps what it measured.
"""
import json
import os
import platform
import threading
import time
from typing import Any, Callable, Optional

from absl import app
from absl import flags
import jax
import numpy as np

from benchmarks import synthetic
from configs import fg_sbir_common
from configs.composed import common as composed_common
from sbir_jax.core import precision
from sbir_jax.core import sharding
from sbir_jax.datasets import image_pipeline
from sbir_jax.models import efficientnet_lite
# Imported here, at start-up, not inside a timed section: loading TensorFlow's
# libraries holds the GIL, which would stall the section timeouts.
from sbir_jax.tasks.composed import task as _composed_task  # pylint: disable=unused-import
from sbir_jax.tasks.fg_sbir import gallery_index
from sbir_jax.tasks.fg_sbir import input_pipeline as fg_input
from sbir_jax.tasks.fg_sbir import scoring
from sbir_jax.tasks.fg_sbir import task as _fg_task  # pylint: disable=unused-import

flags.DEFINE_bool('small', False, 'Tiny sizes (seconds on a CPU): the CI setting.')
flags.DEFINE_string('out', None, 'JSON output path (default: '
                    'benchmarks/results/device_check_<backend>[_small].json).')
flags.DEFINE_string('compute_dtype', 'auto', "'auto' (bfloat16 on TPU/GPU, float32 "
                    'on CPU), or a compute dtype the backend allows.')
flags.DEFINE_list('sections', [], 'Run only these sections (default: all).')
flags.DEFINE_float('budget_s', 240.0, 'Seconds for the whole run after start-up.')
flags.DEFINE_float('section_timeout_s', None, 'Override the per-section timeout of '
                   'the sizes (seconds).')
FLAGS = flags.FLAGS

# Dense peak FLOP/s per chip by `jax.devices()[0].device_kind`, per compute
# dtype. float32 on NVIDIA Ampere/Hopper is the TF32 tensor-core peak: XLA's
# default matmul precision lets float32 dots and convolutions run in TF32
# there. TPUs publish no float32 peak (XLA runs float32 matmuls as bfloat16
# passes at default precision), so their float32 fraction is 'unknown'.
_TB = 1e12
PEAK_FLOPS: dict[str, dict[str, Any]] = {
    'TPU v4': {'bfloat16': 275 * _TB, 'float32': None,
               'source': 'cloud.google.com/tpu/docs/v4: 275 TFLOPs bf16 per chip'},
    'TPU v5 lite': {'bfloat16': 197 * _TB, 'float32': None,
                    'source': 'cloud.google.com/tpu/docs/v5e: 197 TFLOPs bf16 per chip'},
    'TPU v5': {'bfloat16': 459 * _TB, 'float32': None,
               'source': 'cloud.google.com/tpu/docs/v5p: 459 TFLOPs bf16 per chip'},
    'TPU v6 lite': {'bfloat16': 918 * _TB, 'float32': None,
                    'source': 'cloud.google.com/tpu/docs/v6e: 918 TFLOPs bf16 per chip'},
    'NVIDIA H100 80GB HBM3': {
        'bfloat16': 989.4 * _TB, 'float32': 494.7 * _TB,
        'source': 'NVIDIA H100 datasheet (SXM): 1,979 TFLOPs bf16 with sparsity '
                  '= 989.4 dense; TF32 494.7 dense'},
    'NVIDIA H100 PCIe': {
        'bfloat16': 756 * _TB, 'float32': 378 * _TB,
        'source': 'NVIDIA H100 datasheet (PCIe): 1,513 TFLOPs bf16 with sparsity '
                  '= 756 dense; TF32 378 dense'},
    'NVIDIA H200': {
        'bfloat16': 989.4 * _TB, 'float32': 494.7 * _TB,
        'source': 'NVIDIA H200 datasheet (SXM): 1,979 TFLOPs bf16 with sparsity '
                  '= 989.4 dense; TF32 494.7 dense (the H100 SXM compute)'},
}
# Other spellings jax reports for the same chips.
PEAK_FLOPS['TPU v5e'] = PEAK_FLOPS['TPU v5 lite']
PEAK_FLOPS['TPU v5p'] = PEAK_FLOPS['TPU v5']
PEAK_FLOPS['TPU v6e'] = PEAK_FLOPS['TPU v6 lite']
PEAK_FLOPS['NVIDIA H200 141GB HBM3e'] = PEAK_FLOPS['NVIDIA H200']
_A100 = {'bfloat16': 312 * _TB, 'float32': 156 * _TB,
         'source': 'NVIDIA A100 datasheet: 312 TFLOPs bf16 dense, 156 TF32 dense'}
for _kind in ('NVIDIA A100-SXM4-40GB', 'NVIDIA A100-SXM4-80GB', 'NVIDIA A100-PCIE-40GB',
              'NVIDIA A100 80GB PCIe'):
  PEAK_FLOPS[_kind] = _A100

# Per-section sizes: 'full' on accelerators, 'cpu' on a CPU backend, 'small'
# with --small. Train steps: (batch, timed steps); pipeline: timed batches.
SIZES = {
    'full': dict(batch=128, steps=20, lbf_image=64, gallery=10_000_000,
                 queries=(100, 10_000), pipeline_batches=20, timeout_s=75),
    'cpu': dict(batch=16, steps=3, lbf_image=64, gallery=100_000,
                queries=(100, 1_000), pipeline_batches=5, timeout_s=120),
    'small': dict(batch=8, steps=2, lbf_image=64, gallery=10_000,
                  queries=(10, 100), pipeline_batches=3, timeout_s=60),
}
GALLERY_DIM = 512
TOP_K = 10


def peak_entry(device_kind: str) -> Optional[dict]:
  return PEAK_FLOPS.get(device_kind)


def peak_fraction(flops_per_step: Optional[float], seconds_per_step: float,
                  device_kind: str, dtype: str) -> Any:
  """FLOPs / time / peak of the device kind and dtype, or 'unknown'."""
  peak = (peak_entry(device_kind) or {}).get(dtype)
  if not peak or not flops_per_step:
    return 'unknown'
  return round(flops_per_step / seconds_per_step / peak, 4)


def peak_memory_bytes() -> Optional[int]:
  """The largest peak_bytes_in_use over local devices so far (None: no stats)."""
  peaks = [(d.memory_stats() or {}).get('peak_bytes_in_use') for d in jax.local_devices()]
  peaks = [p for p in peaks if p is not None]
  return max(peaks) if peaks else None


def _device_memory_limit() -> Optional[int]:
  stats = jax.local_devices()[0].memory_stats() or {}
  return stats.get('bytes_limit')


class Check:
  """Runs sections in order, each in a thread with its own timeout, and
  rewrites the JSON after each."""

  def __init__(self, out: str, size_name: str, dtype: str, budget_s: float,
               section_timeout_s: Optional[float] = None):
    self.out, self.size_name, self.dtype = out, size_name, dtype
    self.sizes = dict(SIZES[size_name])
    if section_timeout_s:
      self.sizes['timeout_s'] = section_timeout_s
    self.deadline = time.monotonic() + budget_s
    self.device_kind = jax.devices()[0].device_kind
    self.shared: dict[str, Any] = {}  # What a later section reuses.
    self.result = {
        'benchmark': 'device_check', 'sizes': size_name, 'compute_dtype': dtype,
        'backend': jax.default_backend(), 'device_kind': self.device_kind,
        'devices': jax.device_count(), 'jax': jax.__version__,
        'machine': platform.machine(), 'started_utc': time.strftime(
            '%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
        'sections': {}, 'skipped': {}}
    self.stuck = None  # A section that overran its timeout (still running).

  def write(self) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(self.out)), exist_ok=True)
    tmp = self.out + '.tmp'
    with open(tmp, 'w') as f:
      json.dump(self.result, f, indent=2)
    os.replace(tmp, self.out)

  def run(self, name: str, fn: Callable[[], dict]) -> None:
    if self.stuck:
      self.result['skipped'][name] = (f'section {self.stuck} overran its timeout and '
                                      'may still hold the device; rerun with '
                                      f'--sections={name}')
      self.write()
      return
    remaining = self.deadline - time.monotonic()
    if remaining < 5:
      self.result['skipped'][name] = 'the run budget (--budget_s) is spent'
      self.write()
      return
    timeout = min(self.sizes['timeout_s'], remaining)
    box: dict[str, Any] = {}

    def target():
      try:
        box['result'] = fn()
      except Exception as e:  # pylint: disable=broad-except  (reported, next section)
        box['error'] = f'{type(e).__name__}: {str(e)[:500]}'

    start = time.monotonic()
    thread = threading.Thread(target=target, daemon=True, name=name)
    thread.start()
    thread.join(timeout)
    section = {'seconds': round(time.monotonic() - start, 2), 'timeout_s': round(timeout, 1)}
    if thread.is_alive():
      self.stuck = name
      section['status'] = 'timed_out'
    elif 'error' in box:
      section.update(status='error', error=box['error'])
    else:
      section.update(status='ok', **box['result'])
    section['peak_memory_bytes'] = peak_memory_bytes()
    self.result['sections'][name] = section
    self.write()
    print(json.dumps({name: section}), flush=True)

  # --- sections -------------------------------------------------------------
  def environment(self) -> dict:
    entry = peak_entry(self.device_kind)
    return {'peak_flops': entry, 'peak_note': None if entry else
            f'no peak entry for {self.device_kind!r}: fractions are unknown',
            'device_memory_bytes_limit': _device_memory_limit(),
            'allowed_compute_dtypes': list(precision.allowed())}

  def _train_step(self, config, examples_name: str) -> dict:
    config.compute_dtype = self.dtype
    state, step_fn, batch, mesh = synthetic.train_setup(config)
    timing, state = synthetic.time_train_step(state, step_fn, batch, self.sizes['steps'])
    seconds = timing['seconds_per_step']
    result = {'batch_size': config.batch_size, **timing,
              f'{examples_name}_per_second': round(config.batch_size / seconds, 2),
              'examples_per_second': round(config.batch_size / seconds, 2),
              'peak_fraction': peak_fraction(timing['flops_per_step'], seconds,
                                             self.device_kind, self.dtype),
              'flops_note': "XLA's cost analysis of one device's compiled step"}
    return result, (state, step_fn, mesh)

  def _dssa_config(self, variants: str):
    small = self.size_name == 'small'
    config = fg_sbir_common.get_config('shoes', ('tiny,' if small else '') + variants)
    config.batch_size = self.sizes['batch']
    return config

  def dssa_sketch_a_net(self) -> dict:
    config = self._dssa_config('')  # The paper's model at its input size.
    result, (state, step_fn, mesh) = self._train_step(config, 'triplets')
    self.shared['dssa'] = (config, state, step_fn, mesh, result['examples_per_second'])
    return {'input_size': config.data.crop_size, **result}

  def dssa_efficientnet(self) -> dict:
    config = self._dssa_config('imagenet')
    if self.size_name == 'small':
      # Seconds, not minutes, on a CPU: a smaller side (fully convolutional:
      # the same layers) and no backward pass below the head conv (the
      # depthwise gradients dominate the CPU compile time).
      config.data.crop_size = 64
      config.model.frozen_trunk_layers = len(efficientnet_lite.layer_names('lite0')) - 1
    result, _ = self._train_step(config, 'triplets')
    return {'trunk': config.model.trunk, 'input_size': config.data.crop_size, **result}

  def lbf_big(self) -> dict:
    small = self.size_name == 'small'
    config = composed_common.get_config('tiny,lbf_big' if small else 'lbf_big')
    config.batch_size = self.sizes['batch']
    config.data.image_size = self.sizes['lbf_image']
    result, _ = self._train_step(config, 'queries')
    return {'entities': config.model.size, 'image_size': config.data.image_size,
            'vocab_size': synthetic.VOCAB_SIZE, **result}

  def input_pipeline(self) -> dict:
    if 'dssa' in self.shared:
      config, state, step_fn, mesh, step_rate = self.shared['dssa']
    else:
      config, state, step_fn, mesh, step_rate = self._dssa_config(''), None, None, None, None
    # Shoe V1's training split shape: 304 photos, one sketch each, at load size.
    n, side = 304, config.data.load_size
    rng = np.random.default_rng(0)
    split = fg_input.PairSplit(
        sketches=rng.integers(0, 256, (n, side, side, 1), dtype=np.uint8),
        photos=rng.integers(0, 256, (n, side, side, 1), dtype=np.uint8),
        pairs=np.zeros((n, 1, 2), np.int32), num_pairs=np.zeros(n, np.int32),
        photo_index=np.arange(n, dtype=np.int32))
    data = config.data.copy_and_resolve_references()
    data.triplet_sampling = 'true_match'
    make = lambda: image_pipeline.iterate(fg_input.triplet_dataset(
        split, data, global_batch_size=config.batch_size, seed=0))
    batches = self.sizes['pipeline_batches']

    def rate(iterator, per_batch=lambda b: b):
      per_batch(next(iterator))  # Warm-up (tf.data starts its threads).
      start = time.perf_counter()
      for _ in range(batches):
        per_batch(next(iterator))
      return round(batches * config.batch_size / (time.perf_counter() - start), 2)

    out = {'batch_size': config.batch_size, 'input_size': config.data.crop_size,
           'host_cpus': os.cpu_count(),
           'tf_data_triplets_per_second': rate(make())}
    mesh = mesh or sharding.make_mesh()
    out['to_device_triplets_per_second'] = rate(
        sharding.prefetch_to_mesh(make(), mesh), jax.block_until_ready)
    if step_fn is not None:
      fed = sharding.prefetch_to_mesh(make(), mesh)
      state, metrics = step_fn(state, next(fed))  # Compiled already: warm-up.
      jax.block_until_ready(metrics)
      start = time.perf_counter()
      for _ in range(batches):
        state, metrics = step_fn(state, next(fed))
      jax.block_until_ready(metrics)
      fed_rate = batches * config.batch_size / (time.perf_counter() - start)
      self.shared['dssa'] = (config, state, step_fn, mesh, step_rate)
      out.update(
          step_alone_triplets_per_second=step_rate,
          fed_step_triplets_per_second=round(fed_rate, 2),
          pipeline_over_step=round(out['tf_data_triplets_per_second'] / step_rate, 3),
          keeps_device_fed=bool(out['tf_data_triplets_per_second'] >= step_rate))
    out['note'] = ('generated images of Shoe V1 training shapes (speed does not '
                   'depend on pixel values); true-match sampling')
    return out

  def topk(self) -> dict:
    wanted = self.sizes['gallery']
    limit = _device_memory_limit()
    size, note = wanted, None
    if limit:  # The gallery must fit beside the scores: use at most half.
      fit = int(limit * 0.5 // (GALLERY_DIM * 4 * max(1, jax.device_count())) *
                max(1, jax.device_count()))
      if fit < wanted:
        size = fit - fit % 1000
        note = f'{wanted} rows do not fit in half the device memory; used {size}'
    # A random block tiled to the gallery size: a 20 GB random draw would take
    # minutes, and search time does not depend on the values.
    rng = np.random.default_rng(0)
    block = rng.normal(size=(min(size, 65_536), GALLERY_DIM)).astype(np.float32)
    block /= np.linalg.norm(block, axis=1, keepdims=True)
    gallery = np.empty((size, GALLERY_DIM), np.float32)
    for start in range(0, size, len(block)):
      gallery[start:start + len(block)] = block[:size - start]
    mesh = sharding.make_mesh()
    start = time.perf_counter()
    index = gallery_index.GalleryIndex(gallery, scoring.Scorer('inner_product'), mesh)
    del gallery
    out = {'gallery': size, 'dim': GALLERY_DIM, 'k': TOP_K,
           'build_seconds': round(time.perf_counter() - start, 2), 'note': note}
    for queries in self.sizes['queries']:
      q = block[rng.integers(0, len(block), queries)]
      start = time.perf_counter()
      jax.block_until_ready(index.search_device(q, TOP_K))  # Compiles.
      first = time.perf_counter() - start
      start = time.perf_counter()
      jax.block_until_ready(index.search_device(q, TOP_K))
      seconds = time.perf_counter() - start
      out[f'queries_{queries}'] = {
          'first_call_seconds': round(first, 3), 'seconds': round(seconds, 4),
          'queries_per_second': round(queries / seconds, 1),
          # 2 FLOPs per multiply-add of the (queries x size x dim) scores.
          'score_tflops_per_second': round(2 * queries * size * GALLERY_DIM / seconds
                                           / 1e12, 3)}
    return out


SECTIONS = ('environment', 'dssa_sketch_a_net', 'dssa_efficientnet', 'lbf_big',
            'input_pipeline', 'topk')


# --small only: compile with XLA's cheap optimisation level, which halves the
# CPU compile time of these models (measured: 37 s -> 17 s of CPU for the tiny
# DSSA setup and step); its step times are then not the optimised program's.
SMALL_XLA_FLAGS = '--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true'


def main(argv):
  del argv
  if FLAGS.small:  # Before JAX starts its backend (nothing above touches it).
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' + SMALL_XLA_FLAGS).strip()
  backend = jax.default_backend()
  size_name = 'small' if FLAGS.small else ('cpu' if backend == 'cpu' else 'full')
  dtype = FLAGS.compute_dtype
  if dtype == 'auto':
    dtype = 'float32' if backend == 'cpu' else 'bfloat16'
  precision.check(dtype)
  unknown = set(FLAGS.sections) - set(SECTIONS)
  if unknown:
    raise app.UsageError(f'Unknown --sections {sorted(unknown)}; known: {SECTIONS}.')
  out = FLAGS.out or os.path.join(
      'benchmarks', 'results',
      f'device_check_{backend}{"_small" if FLAGS.small else ""}.json')
  check = Check(out, size_name, dtype, FLAGS.budget_s, FLAGS.section_timeout_s)
  check.result['xla_flags'] = os.environ.get('XLA_FLAGS', '')
  for name in SECTIONS:
    if not FLAGS.sections or name in FLAGS.sections:
      check.run(name, getattr(check, name))
  check.result['finished_utc'] = time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())
  check.write()
  print(f'Wrote {out}', flush=True)
  if check.stuck:  # A section thread still runs: do not wait for it.
    os._exit(0)  # pylint: disable=protected-access


if __name__ == '__main__':
  app.run(main)
