"""Load benchmark of `--mode=serve`: p50 / p99 latency and queries/s at 1, 8
and 64 concurrent clients, over loopback only. Prints one JSON object (and a
Markdown table on stderr).

  python -m benchmarks.serve [--workdir=<a trained FG-SBIR run>]
      [--config=configs/shoes.py:cpu] [--concurrency=1,8,64] [--seconds=15]
      [--max_requests=2000] [--synthetic=1000000]

Two galleries, each served by its own server process (started here, bound to
127.0.0.1, stopped at the end): the real Shoe V1 test photos (115), and a
generated gallery of --synthetic unit-norm embeddings of the model's
dimension (the search then scans 10^6 rows per batch). Every query is a
real Shoe V1 test sketch PNG, sent as the page sends it (multipart POST
/api/search, k=10), cycling through the 115 test sketches. With no
--workdir, the `cpu` config is trained for 2 steps into a temporary folder:
the real model's size and cost, untrained weights (this measures speed,
not accuracy). Each concurrency level runs for --seconds or --max_requests
requests, whichever comes first, after 2 x clients warm-up requests; a
request that fails or is not answered with 200 within 60 s counts as failed.

The load generator runs on the same machine, so it is kept cheap: one asyncio
process (on uvloop when installed), one keep-alive connection per client,
each request's bytes built before the clock starts (--client=httpx sends the
same requests with httpx instead). Each level also reports where the CPU
went, in ms per query, from /proc: the server's event loop, its batch
worker thread, XLA's compute threads, its other threads, the load generator,
and the rest of the machine.
"""
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

from sbir_jax.serve import process as serve_process

flags.DEFINE_string('workdir', None, 'A trained FG-SBIR run (default: train `cpu` '
                    'for 2 steps into a temporary folder).')
flags.DEFINE_string('config', 'configs/shoes.py:cpu', 'Config of that run.')
flags.DEFINE_list('concurrency', ['1', '8', '64'], 'Concurrent clients per level.')
flags.DEFINE_float('seconds', 15.0, 'Time per level (upper bound).')
flags.DEFINE_integer('max_requests', 2000, 'Requests per level (upper bound).')
flags.DEFINE_integer('synthetic', 1_000_000, 'Rows of the generated gallery (0: skip).')
flags.DEFINE_list('galleries', ['shoes', 'synthetic'], 'Which galleries to serve.')
flags.DEFINE_enum('client', 'raw', ['raw', 'httpx'], 'Load generator: prebuilt '
                  'HTTP/1.1 requests on asyncio streams, or httpx (heavier).')
# The server side (this file started as a subprocess).
flags.DEFINE_enum('role', 'bench', ['bench', 'server'], 'Internal.')
flags.DEFINE_string('gallery_kind', 'shoes', 'Internal: shoes or synthetic.')
flags.DEFINE_integer('port', 0, 'Internal: the server port.')
FLAGS = flags.FLAGS

SKETCHES = 'qmul_v1_rgb/shoes/test/sketches'


def _data_root() -> str:
  return os.environ.get('SBIR_JAX_DATA', os.path.join('..', 'shared', 'data'))


def _config():
  """The config of --config=<file>[:variants], as the command line reads it."""
  from configs import variants
  return variants.load_config(FLAGS.config)


# --- server role ---------------------------------------------------------------------
def run_server() -> None:
  import numpy as np
  import uvicorn

  from sbir_jax import inference
  from sbir_jax.serve import server
  from sbir_jax.tasks.fg_sbir import gallery_file

  config = _config()
  retriever = inference.load(config, FLAGS.workdir)
  if FLAGS.gallery_kind == 'synthetic':
    rng = np.random.default_rng(0)
    n, d = FLAGS.synthetic, retriever.items.embeddings.shape[1]
    rows = np.empty((n, d), np.float32)
    for start in range(0, n, 100_000):  # Chunked: no float64 copy of it all.
      chunk = rng.standard_normal((min(100_000, n - start), d), dtype=np.float32)
      rows[start:start + len(chunk)] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    items = gallery_file.Gallery(rows, np.array([f'synthetic/{i}' for i in range(n)]),
                                 retriever.items.fingerprint, 'synthetic')
    retriever = inference.SketchRetriever(retriever.task, _state(config), FLAGS.workdir,
                                          embeddings=items)
  server.warm_up(retriever, server.MAX_BATCH)
  serving = server.create_app(retriever)
  print(f'READY {retriever.size} {retriever.items.embeddings.shape[1]} '
        f'{serving.state.batcher.native_id}', flush=True)
  uvicorn.run(serving, host='127.0.0.1', port=FLAGS.port, log_level='error')


def _state(config):
  from sbir_jax.core import trainer
  return trainer.restore_for_mode(config, FLAGS.workdir, 'best')[1]


# --- client role ---------------------------------------------------------------------
# The load generator shares the machine with the server, so it must cost little:
# one asyncio process, one keep-alive HTTP/1.1 connection per client, and every
# request's bytes (headers + multipart body) built once before the clock starts.
BOUNDARY = 'sbir-jax-benchmark-boundary'


def _search_request(port: int, name: str, data: bytes, k: int = 10) -> bytes:
  """The bytes of the page's multipart POST /api/search of one sketch file."""
  body = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="sketch"; '
          f'filename="{name}"\r\nContent-Type: image/png\r\n\r\n').encode()
  body += data + f'\r\n--{BOUNDARY}--\r\n'.encode()
  head = (f'POST /api/search?k={k} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n'
          f'Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n'
          f'Content-Length: {len(body)}\r\n\r\n').encode()
  return head + body


class _Connection:
  """One client: a keep-alive connection, reopened after a failure."""

  def __init__(self, port: int):
    self.port, self.reader, self.writer = port, None, None

  async def send(self, request: bytes) -> tuple[int, bytes]:
    """(status, body) of one request; raises on a transport error or timeout."""
    try:
      async with asyncio.timeout(60.0):
        if self.writer is None:
          self.reader, self.writer = await asyncio.open_connection('127.0.0.1', self.port)
        self.writer.write(request)
        head = await self.reader.readuntil(b'\r\n\r\n')
        lines = head.decode('latin-1').split('\r\n')
        status = int(lines[0].split(' ', 2)[1])
        headers = dict(line.lower().split(': ', 1) for line in lines[1:] if ': ' in line)
        # uvicorn gives every JSON answer a Content-Length (no chunking).
        body = await self.reader.readexactly(int(headers['content-length']))
        if headers.get('connection') == 'close':
          self.close()
        return status, body
    except BaseException:
      self.close()
      raise

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()
    self.reader = self.writer = None


def _ok(status: int, body: bytes) -> bool:
  return status == 200 and len(json.loads(body)['results']) == 10


async def _raw_clients(port: int, requests: list, clients: int):
  """one(client, i) -> (ok, seconds), info() -> /api/info, close()."""
  connections = [_Connection(port) for _ in range(clients)]
  info_request = f'GET /api/info HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n'.encode()

  async def one(client: int, i: int):
    start = time.perf_counter()
    try:
      ok = _ok(*await connections[client].send(requests[i % len(requests)]))
    except Exception:  # noqa: BLE001  (counted, not raised)
      ok = False
    return ok, time.perf_counter() - start

  async def info():
    return json.loads((await connections[0].send(info_request))[1])

  async def close():
    for c in connections:
      c.close()
  return one, info, close


async def _httpx_clients(port: int, uploads: list, clients: int):
  """The same with httpx (a real-world client, several times heavier)."""
  import httpx
  limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
  client = httpx.AsyncClient(base_url=f'http://127.0.0.1:{port}', limits=limits,
                             timeout=60.0)

  async def one(_, i):
    name, data = uploads[i % len(uploads)]
    start = time.perf_counter()
    try:
      answer = await client.post('/api/search?k=10',
                                 files={'sketch': (name, data, 'image/png')})
      ok = _ok(answer.status_code, answer.content)
    except Exception:  # noqa: BLE001  (counted, not raised)
      ok = False
    return ok, time.perf_counter() - start

  async def info():
    return (await client.get('/api/info')).json()
  return one, info, client.aclose


# --- where the CPU time goes ------------------------------------------------------------
def _ticks_per_thread(pid: int) -> dict:
  """tid -> (name, user + system CPU ticks) of every thread of process pid."""
  out = {}
  for tid in os.listdir(f'/proc/{pid}/task'):
    try:
      with open(f'/proc/{pid}/task/{tid}/stat') as f:
        stat = f.read()
      with open(f'/proc/{pid}/task/{tid}/comm') as f:
        name = f.read().strip()
    except OSError:  # The thread just ended.
      continue
    fields = stat[stat.rindex(')') + 2:].split()  # Fields 3.. of proc(5).
    out[int(tid)] = (name, int(fields[11]) + int(fields[12]))
  return out


def _machine_ticks() -> tuple[int, int]:
  """(busy, all) CPU ticks of the whole machine since boot."""
  with open('/proc/stat') as f:
    values = [int(v) for v in f.readline().split()[1:]]
  idle = values[3] + values[4]  # idle + iowait
  return sum(values) - idle, sum(values)


class _CpuProfile:
  """CPU seconds between start() and stop(): the server's event loop (its main
  thread), its batch worker, XLA's compute threads, its other threads (the
  TensorFlow pools, Python's), this load generator, and the rest of the
  machine (everything else that ran)."""

  def __init__(self, server_pid: int, worker_tid: int):
    self.pid, self.worker = server_pid, worker_tid

  def _sample(self):
    return (_ticks_per_thread(self.pid), time.process_time(), _machine_ticks())

  def start(self):
    self.before = self._sample()

  def stop(self, queries: int, wall: float) -> dict:
    threads, client, (busy, total) = self._sample()
    threads0, client0, (busy0, total0) = self.before
    tick = 1.0 / os.sysconf('SC_CLK_TCK')
    groups = dict.fromkeys(['event_loop', 'batch_worker', 'xla_threads',
                            'other_server_threads'], 0.0)
    others: dict = {}  # The other threads by name (TensorFlow's are tf_*).
    for tid, (name, ticks) in threads.items():
      used = (ticks - threads0.get(tid, (name, 0))[1]) * tick
      if tid == self.pid:
        groups['event_loop'] += used
      elif tid == self.worker:
        groups['batch_worker'] += used
      elif 'XLAEigen' in name:
        groups['xla_threads'] += used
      else:
        groups['other_server_threads'] += used
        others[name] = others.get(name, 0.0) + used
    groups['load_generator'] = client - client0
    # /proc/stat counts ticks of all cores: machine busy seconds = busy ticks x
    # cores / all ticks x wall.
    cores = os.cpu_count()
    machine = (busy - busy0) / max(total - total0, 1) * cores * wall
    groups['rest_of_machine'] = max(0.0, machine - sum(groups.values()))
    per_query = {k: round(1000 * v / max(queries, 1), 2) for k, v in groups.items()}
    by_name = {k: round(1000 * v / max(queries, 1), 2) for k, v in sorted(others.items())
               if v > 0}
    return {'cpu_ms_per_query': per_query, 'other_server_threads_ms_per_query': by_name,
            'busy_cores': round(machine / wall, 2)}


async def _level(port: int, uploads: list, requests: list, clients: int,
                 profile: _CpuProfile) -> dict:
  make = _raw_clients(port, requests, clients) if FLAGS.client == 'raw' else (
      _httpx_clients(port, uploads, clients))
  one, info, close = await make
  latencies, failures, sent = [], 0, 0
  try:
    # Warm-up: two requests from each client, one after the other (a client
    # is one connection: it never has two requests in flight).
    async def warm_up(client: int):
      for j in range(2):
        await one(client, 2 * client + j)
    await asyncio.gather(*[warm_up(c) for c in range(clients)])
    deadline = time.perf_counter() + FLAGS.seconds
    counter = iter(range(FLAGS.max_requests))

    async def worker(client: int):
      nonlocal failures, sent
      for i in counter:
        if time.perf_counter() > deadline:
          break
        sent += 1
        ok, seconds = await one(client, i)
        latencies.append(seconds)
        failures += not ok

    before = (await info())['batching']
    profile.start()
    start = time.perf_counter()
    await asyncio.gather(*[worker(c) for c in range(clients)])
    wall = time.perf_counter() - start
    cpu = profile.stop(len(latencies), wall)
    after = (await info())['batching']
  finally:
    await close()
  latencies.sort()
  pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]
  return {'clients': clients, 'requests': sent, 'failed': failures,
          'seconds': round(wall, 2), 'queries_per_s': round(len(latencies) / wall, 1),
          'p50_ms': round(1000 * statistics.median(latencies), 1),
          'p99_ms': round(1000 * pick(0.99), 1),
          # Queries per device call during this level.
          'mean_batch': round((after['queries'] - before['queries'])
                              / max(after['batches'] - before['batches'], 1), 2),
          **cpu}


def _run(coroutine):
  try:
    import uvloop  # What uvicorn runs the server on, when installed: cheaper.
    return uvloop.run(coroutine)
  except ImportError:
    return asyncio.run(coroutine)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _serve_and_measure(kind: str, workdir: str, uploads: list) -> dict:
  port = _free_port()
  cmd = [sys.executable, '-m', 'benchmarks.serve', '--role=server',
         f'--gallery_kind={kind}', f'--port={port}', f'--workdir={workdir}',
         f'--config={FLAGS.config}', f'--synthetic={FLAGS.synthetic}']
  started = time.perf_counter()
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
  try:
    line = ''
    while not line.startswith('READY'):
      line = proc.stdout.readline()
      if not line and proc.poll() is not None:
        raise RuntimeError(f'The {kind} server exited ({proc.returncode}) before it was ready.')
    _, size, dim, worker_tid = line.split()
    for _ in range(100):  # uvicorn binds just after READY.
      try:
        socket.create_connection(('127.0.0.1', port), timeout=1).close()
        break
      except OSError:
        time.sleep(0.1)
    ready_s = time.perf_counter() - started
    requests = [_search_request(port, name, data) for name, data in uploads]
    profile = _CpuProfile(proc.pid, int(worker_tid))
    levels = [_run(_level(port, uploads, requests, int(c), profile))
              for c in FLAGS.concurrency]
  finally:
    serve_process.stop(proc)
  return {'gallery': kind, 'gallery_size': int(size), 'dim': int(dim),
          'start_s': round(ready_s, 1), 'levels': levels}


def run_bench() -> None:
  import logging
  logging.getLogger('httpx').setLevel(logging.WARNING)  # No line per request.
  logging.getLogger('httpcore').setLevel(logging.WARNING)
  folder = os.path.join(_data_root(), SKETCHES)
  names = sorted(n for n in os.listdir(folder) if n.endswith('.png'))
  uploads = []
  for name in names:
    with open(os.path.join(folder, name), 'rb') as f:
      uploads.append((name, f.read()))
  workdir = FLAGS.workdir
  if workdir is None:
    workdir = os.path.join(tempfile.mkdtemp(prefix='bench_serve_'), 'run')
    train = [sys.executable, '-m', 'sbir_jax.main', f'--config={FLAGS.config}',
             f'--workdir={workdir}', '--config.num_train_steps=2',
             '--config.checkpoint_every_steps=2', '--config.eval.num_views=1']
    subprocess.run(train, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    trained = f'{FLAGS.config}, 2 training steps (speed only)'
  else:
    trained = FLAGS.config
  FLAGS.workdir = workdir
  galleries = [g for g in FLAGS.galleries if g != 'synthetic' or FLAGS.synthetic]
  results = [_serve_and_measure(kind, workdir, uploads) for kind in galleries]
  out = {'benchmark': 'serve', 'model': trained, 'queries': f'{len(uploads)} real Shoe V1 '
         'test sketch PNGs, cycled, multipart POST /api/search k=10',
         'load_generator': FLAGS.client, 'command': ' '.join(['python -m benchmarks.serve', *sys.argv[1:]]),
         'bounds': {'seconds_per_level': FLAGS.seconds, 'max_requests': FLAGS.max_requests},
         'machine': f'{platform.machine()} {os.cpu_count()} CPUs', 'results': results}
  print(json.dumps(out, indent=1))
  table = ['| gallery | clients | queries/s | p50 | p99 | requests | failed | mean batch |',
           '|---|---|---|---|---|---|---|---|']
  for r in results:
    for level in r['levels']:
      table.append(f"| {r['gallery']} ({r['gallery_size']:,} x {r['dim']}) | "
                   f"{level['clients']} | {level['queries_per_s']} | {level['p50_ms']} ms | "
                   f"{level['p99_ms']} ms | {level['requests']} | {level['failed']} | "
                   f"{level['mean_batch']} |")
  table += ['', '| gallery | clients | CPU ms per query: event loop | batch worker | XLA '
            'threads | other server threads | load generator | rest of machine | busy cores |',
            '|---|---|---|---|---|---|---|---|---|']
  for r in results:
    for level in r['levels']:
      cpu = level['cpu_ms_per_query']
      table.append(f"| {r['gallery']} | {level['clients']} | " + ' | '.join(
          str(cpu[k]) for k in ('event_loop', 'batch_worker', 'xla_threads',
                                'other_server_threads', 'load_generator',
                                'rest_of_machine')) + f" | {level['busy_cores']} |")
  print('\n'.join(table), file=sys.stderr)


def main(argv):
  del argv
  if FLAGS.role == 'server':
    run_server()
  else:
    run_bench()


if __name__ == '__main__':
  app.run(main)
