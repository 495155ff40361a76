"""Exact top-K retrieval speed on generated galleries. Prints one JSON object.

  pip install -r benchmarks/requirements.txt   # faiss-cpu, for the comparison
  python -m benchmarks.topk [--sizes=10000,100000,1000000] [--repeats=5]

For each gallery size N (embeddings of dim 512, float32, unit norm; the
queries are noisy copies of gallery rows) it times a batch of 100 queries,
top-10, through
  (a) the product's path: `sbir_jax.tasks.fg_sbir.gallery_index.GalleryIndex.search`
      (gallery resident and sharded on the mesh, one jitted shard_map per batch,
      scored chunk by chunk), with inner-product and with HOLEF scores;
  (m) the bare score matmul alone, a jitted `jnp.dot(q, g.T)` at the same
      shape, result blocked on and left on the device: the floor a search
      that must read every score sits on. Its calls alternate with (a)'s, so
      both see the same machine;
  (b) a bare jitted `lax.top_k(q @ g.T)` on the whole gallery;
  (c) FAISS `IndexFlatIP` (exact), if faiss-cpu is installed;
checks that (a) returns the ids FAISS returns, and reports the process's peak
memory (ru_maxrss, cumulative over the run), the fraction of the machine's
measured fp32 matmul peak (a timed large jnp.dot, just before each size) that
(a) and (m) reach, and
the share of CPU time the hypervisor stole during the run (/proc/stat).
Latency is the median over --repeats calls, host arrays in and out for (a),
(b), (c) (what a caller of `search` waits for), after one warm-up call that
compiles.
"""
import json
import os
import platform
import resource
import statistics
import sys
import time

from absl import app
from absl import flags
import numpy as np

flags.DEFINE_list('sizes', ['10000', '100000', '1000000'], 'Gallery sizes.')
flags.DEFINE_integer('repeats', 5, 'Timed calls per measurement (median).')
flags.DEFINE_integer('queries', 100, 'Queries per batch.')
flags.DEFINE_integer('k', 10, 'Top-K.')
flags.DEFINE_integer('dim', 512, 'Embedding dimension.')
flags.DEFINE_integer('devices', 0, 'CPU devices for the mesh (sets '
                     '--xla_force_host_platform_device_count); 0 = JAX default.')
flags.DEFINE_integer('matmul_size', 2048, 'Side of the square jnp.dot timed for the peak.')
FLAGS = flags.FLAGS

FAISS_MISSING = ('faiss is not installed, so FAISS was not measured: '
                 'pip install -r benchmarks/requirements.txt')


def _maxrss_mb() -> float:
  return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)


def _median_seconds(fn, repeats: int):
  """(median seconds of `repeats` calls after a warm-up call, last output)."""
  out = fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    out = fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times), out


def _interleaved_medians(fn_a, fn_b, repeats: int):
  """(median seconds of fn_a, of fn_b, last output of fn_a), calls alternating."""
  out, _ = fn_a(), fn_b()
  times_a, times_b = [], []
  for _ in range(repeats):
    start = time.perf_counter()
    out = fn_a()
    times_a.append(time.perf_counter() - start)
    start = time.perf_counter()
    fn_b()
    times_b.append(time.perf_counter() - start)
  return statistics.median(times_a), statistics.median(times_b), out


def _cpu_jiffies() -> tuple[int, int]:
  """(steal, total) CPU time since boot from /proc/stat; (0, 0) elsewhere."""
  try:
    with open('/proc/stat') as f:
      fields = [int(x) for x in f.readline().split()[1:]]
  except OSError:
    return 0, 0
  return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


def _timing(seconds: float, queries: int, flops: float) -> dict:
  return {'latency_ms': round(1e3 * seconds, 2),
          'queries_per_second': round(queries / seconds, 1),
          'gflops': round(flops / seconds / 1e9, 1)}


def _agreement(ids_a: np.ndarray, ids_b: np.ndarray) -> dict:
  same_set = np.mean([len(set(a) & set(b)) / len(a) for a, b in zip(ids_a, ids_b)])
  return {'identical_ids_fraction': float(np.mean(ids_a == ids_b)),
          'same_id_set_fraction': float(same_set)}


def _gallery(n: int, d: int, queries: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  g = rng.standard_normal((n, d), dtype=np.float32)
  g /= np.linalg.norm(g, axis=1, keepdims=True)
  q = g[rng.integers(0, n, queries)] + 0.05 * rng.standard_normal(
      (queries, d), dtype=np.float32)
  return g, q


def matmul_peak_gflops(jax, jnp, n: int, repeats: int) -> float:
  """Best fp32 GFLOP/s of a jitted (n, n) x (n, n) product."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  dot = jax.jit(jnp.dot)
  jax.block_until_ready(dot(a, b))
  best = float('inf')
  for _ in range(max(repeats, 3)):
    start = time.perf_counter()
    jax.block_until_ready(dot(a, b))
    best = min(best, time.perf_counter() - start)
  return 2.0 * n ** 3 / best / 1e9


def measure_size(n: int, jax, jnp, gallery_index, scoring, sharding, faiss) -> dict:
  d, b, k, repeats = FLAGS.dim, FLAGS.queries, FLAGS.k, FLAGS.repeats
  g, q = _gallery(n, d, b)
  flops = 2.0 * b * n * d
  out = {'gallery_size': n, 'gallery_mb': round(g.nbytes / 2**20, 1)}
  mesh = sharding.make_mesh()

  # (a) The product's path, inner product, its calls alternating with (m)
  # the bare score matmul; then HOLEF.
  start = time.perf_counter()
  index = gallery_index.GalleryIndex(g, scoring.Scorer('inner_product'), mesh)
  jax.block_until_ready(index._bias)
  build = time.perf_counter() - start
  g_dev, q_dev = jax.device_put(g), jax.device_put(q)
  matmul = jax.jit(lambda q_, g_: jnp.dot(q_, g_.T))
  seconds, matmul_seconds, (_, product_ids) = _interleaved_medians(
      lambda: index.search(q, k),
      lambda: jax.block_until_ready(matmul(q_dev, g_dev)), repeats)
  out['product_sharded_topk'] = dict(_timing(seconds, b, flops),
                                     build_seconds=round(build, 3),
                                     chunk_rows=index.chunk_rows,
                                     block_rows=index.block_rows)
  out['bare_matmul_only'] = _timing(matmul_seconds, b, flops)
  out['product_over_matmul_time'] = round(seconds / matmul_seconds, 3)
  del index
  rng = np.random.default_rng(1)
  W = np.eye(d, dtype=np.float32) + 0.01 * rng.standard_normal((d, d), dtype=np.float32)
  holef = gallery_index.GalleryIndex(g, scoring.Scorer('holef', W), mesh)
  holef_seconds, _ = _median_seconds(lambda: holef.search(q, k), repeats)
  out['product_sharded_topk_holef'] = _timing(holef_seconds, b, flops)
  out['holef_over_inner_product_time'] = round(holef_seconds / seconds, 3)
  del holef
  out['maxrss_mb_after_product'] = _maxrss_mb()

  # (b) Bare jitted matmul + top_k, gallery on the default device.
  bare_fn = jax.jit(lambda q_, g_: jax.lax.top_k(q_ @ g_.T, k))
  bare_seconds, (_, bare_ids) = _median_seconds(
      lambda: jax.device_get(bare_fn(q, g_dev)), repeats)
  out['bare_jit_matmul_topk'] = _timing(bare_seconds, b, flops)
  out['product_vs_bare'] = _agreement(product_ids, np.asarray(bare_ids))
  del g_dev
  out['maxrss_mb_after_bare'] = _maxrss_mb()

  # (c) FAISS exact inner-product index.
  if faiss is None:
    out['faiss_flat_ip'] = {'error': FAISS_MISSING}
  else:
    start = time.perf_counter()
    flat = faiss.IndexFlatIP(d)
    flat.add(g)
    build = time.perf_counter() - start
    faiss_seconds, (_, faiss_ids) = _median_seconds(lambda: flat.search(q, k), repeats)
    out['faiss_flat_ip'] = dict(_timing(faiss_seconds, b, flops),
                                build_seconds=round(build, 3))
    out['product_vs_faiss'] = _agreement(product_ids, faiss_ids)
    out['product_speedup_over_faiss'] = round(faiss_seconds / seconds, 2)
    out['bare_speedup_over_faiss'] = round(faiss_seconds / bare_seconds, 2)
    del flat
    out['maxrss_mb_after_faiss'] = _maxrss_mb()
  return out


def main(argv):
  del argv
  if FLAGS.devices:
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                               f' --xla_force_host_platform_device_count={FLAGS.devices}')
  import jax  # After XLA_FLAGS, which JAX reads when it starts.
  import jax.numpy as jnp
  from sbir_jax.tasks.fg_sbir import gallery_index
  from sbir_jax.tasks.fg_sbir import scoring
  from sbir_jax.core import sharding
  try:
    import faiss
  except ImportError:
    faiss = None
    print(f'WARNING: {FAISS_MISSING}', file=sys.stderr)

  load_before = os.getloadavg()[0]
  steal_before, total_before = _cpu_jiffies()
  results = []
  for size in FLAGS.sizes:
    # The peak again for every size: on a shared VM the machine's speed drifts.
    peak = matmul_peak_gflops(jax, jnp, FLAGS.matmul_size, FLAGS.repeats)
    result = dict(matmul_peak_gflops=round(peak, 1), **measure_size(
        int(size), jax, jnp, gallery_index, scoring, sharding, faiss))
    result['product_fraction_of_matmul_peak'] = round(
        result['product_sharded_topk']['gflops'] / peak, 3)
    result['bare_matmul_fraction_of_matmul_peak'] = round(
        result['bare_matmul_only']['gflops'] / peak, 3)
    results.append(result)
    print(f'done: N={size}', file=sys.stderr)
  steal_after, total_after = _cpu_jiffies()
  print(json.dumps({
      'benchmark': 'exact_topk', 'queries': FLAGS.queries, 'k': FLAGS.k,
      'dim': FLAGS.dim, 'dtype': 'float32', 'repeats': FLAGS.repeats,
      'backend': jax.default_backend(), 'devices': jax.device_count(),
      'cpu_count': os.cpu_count(), 'machine': platform.machine(),
      'processor': platform.processor(), 'jax': jax.__version__,
      'faiss': getattr(faiss, '__version__', None) if faiss else FAISS_MISSING,
      'faiss_threads': faiss.omp_get_max_threads() if faiss else None,
      'faiss_compile_options': faiss.get_compile_options() if faiss else None,
      # Other processes on the machine slow every number down alike-ish.
      'load_average_1min_before_after': [round(load_before, 2),
                                         round(os.getloadavg()[0], 2)],
      # Time the hypervisor gave this VM's CPUs to others: it slows every
      # number, more or less alike.
      'cpu_steal_fraction': round((steal_after - steal_before) /
                                  max(total_after - total_before, 1), 3),
      'matmul_peak_shape': [FLAGS.matmul_size] * 2,
      'results': results}, indent=2))


if __name__ == '__main__':
  app.run(main)
