"""Search by drawing (`--mode=serve`): the JSON API over a tiny trained DSSA
checkpoint and the real Shoe V1 test photos, every bad input, batching under
concurrent load, the untrained-trunk fallback, and the page in a real headless
Chromium (drawing with pointer events; an uploaded test sketch ranks exactly
as `--mode=retrieve` ranks the same file)."""
import asyncio
import io
import os
import shutil
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from sbir_jax import inference
from sbir_jax.core import trainer
from sbir_jax.serve import batcher as batcher_lib
from sbir_jax.serve import process as serve_process
from sbir_jax.serve import server
from sbir_jax.tasks.fg_sbir import gallery_file
from sbir_jax.tasks.fg_sbir import query_images
from sbir_jax.tasks.fg_sbir import retrieval
from tests import helpers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')
# 144 -> 129 crops: a 3x3 attention map (the tiny 97 crops give 1x1).
INPUT_OVERRIDES = {'load_size': 144, 'crop_size': 129}


def _sketch_path(name: str = '305') -> str:
  # 305.png is test sketch 0 of Shoe V1: its true match is test photo 0.
  return os.path.join(helpers.require_data('qmul_v1_rgb/shoes/test/sketches'),
                      f'{name}.png')


def _png(array: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format='PNG')
  return buffer.getvalue()


@pytest.fixture(scope='module')
def tiny_run(tfds_dir, qmul_v1_dir, tmp_path_factory):
  """A 2-step DSSA checkpoint (trained once for the module) and its config."""
  config = helpers.tiny_config('shoes', tfds_dir, qmul_v1_dir)
  config.data.load_size = INPUT_OVERRIDES['load_size']
  config.data.crop_size = INPUT_OVERRIDES['crop_size']
  config.num_train_steps, config.eval.num_views = 2, 1
  workdir = str(tmp_path_factory.mktemp('serve') / 'run')
  trainer.train_and_evaluate(config, workdir)
  return config, workdir


@pytest.fixture(scope='module')
def retriever(tiny_run):
  config, workdir = tiny_run
  return inference.load(config, workdir)


@pytest.fixture(scope='module')
def app(retriever):
  app = server.create_app(retriever, top_k=5, max_upload_bytes=40_000)
  yield app
  app.state.batcher.close()


def _client(app) -> httpx.AsyncClient:
  return httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                           base_url='http://serve.test')


def _run(coro):
  return asyncio.run(coro)


async def _search(client, data: bytes, name: str = 'q.png', k=None):
  url = '/api/search' + (f'?k={k}' if k else '')
  return await client.post(url, files={'sketch': (name, data, 'image/png')})


def test_upload_ranks_as_retrieve_does(tiny_run, retriever, app):
  config, workdir = tiny_run
  path = _sketch_path()
  with open(path, 'rb') as f:
    data = f.read()

  async def go():
    async with _client(app) as client:
      info = (await client.get('/api/info')).json()
      answer = await _search(client, data, '305.png', k=10)
      return info, answer
  info, answer = _run(go())
  assert info['mode'] == 'sketch' and info['trained'] and info['gallery_size'] == 115
  assert info['attention'] and info['step'] == 2
  assert answer.status_code == 200, answer.text
  body = answer.json()
  # The command line's ranking of the same file (same API underneath).
  expected = retrieval.retrieve(retriever.task, _state_of(tiny_run), workdir, path,
                                'test', 10)
  assert [r['id'] for r in body['results']] == [r['id'] for r in expected['top']]
  np.testing.assert_allclose([r['score'] for r in body['results']],
                             [r['score'] for r in expected['top']], rtol=1e-5, atol=1e-6)
  assert body['true_match'] == {'id': 'test/0', 'rank': expected['true_match_rank']}
  mask = np.array(body['attention'])
  assert mask.shape == (3, 3) and abs(mask.sum() - 1.0) < 1e-3
  # A drawn sketch (not a test sketch) has no known true match.
  drawn = np.full((256, 256), 255, np.uint8)
  drawn[60:200, 120:126] = 0
  drawn[190:196, 40:220] = 0
  answer = _run(_search_once(app, _png(drawn)))
  assert answer.status_code == 200 and answer.json()['true_match'] is None
  assert len(answer.json()['results']) == 5  # The server's --top_k.


async def _search_once(app, data):
  async with _client(app) as client:
    return await _search(client, data)


def _state_of(tiny_run):
  config, workdir = tiny_run
  _, state = trainer.restore_for_mode(config, workdir, 'best')
  return state


def test_concurrent_queries_are_batched_and_none_is_lost(retriever, app):
  folder = os.path.dirname(_sketch_path())
  names = sorted(os.listdir(folder))[:24]
  uploads = [open(os.path.join(folder, n), 'rb').read() for n in names]
  # Each sketch alone, straight through the inference API.
  singles = [retriever.search(retriever.embed_sketches(
      retriever.read_sketch(os.path.join(folder, n))[None]), 5)[1][0] for n in names]
  # Unreadable uploads among them fail alone (decoded in the same batches).
  bad = [(b'not a sketch', 'notes.txt'), (_png(np.full((64, 64), 255, np.uint8)), 'blank.png')]
  before = app.state.batcher.stats()

  async def go():
    async with _client(app) as client:
      requests = [_search(client, u, n) for u, n in zip(uploads, names)]
      requests[5:5] = [_search(client, u, n) for u, n in bad]
      return await asyncio.gather(*requests)
  answers = _run(go())
  refused, answers = answers[5:7], answers[:5] + answers[7:]
  assert [a.status_code for a in refused] == [400, 400]
  assert 'notes.txt is not an image' in refused[0].json()['detail']
  assert 'blank.png is blank' in refused[1].json()['detail']
  assert [a.status_code for a in answers] == [200] * len(names)
  for answer, single in zip(answers, singles):
    assert [r['id'] for r in answer.json()['results']] == [retriever.ids[r] for r in single]
  after = app.state.batcher.stats()
  assert after['queries'] - before['queries'] == len(names) + len(bad)
  # Fewer device calls than queries: concurrent requests shared batches.
  assert after['batches'] - before['batches'] < len(names)
  assert max(a.json()['batch_size'] for a in answers) > 1


def test_uploads_decoded_together_are_decoded_as_alone(retriever):
  folder = os.path.dirname(_sketch_path())
  names = sorted(os.listdir(folder))[:9]
  uploads = [(open(os.path.join(folder, n), 'rb').read(), n) for n in names]
  uploads.insert(3, (b'', 'empty.png'))
  uploads.insert(6, (_png(np.full((40, 90), 255, np.uint8)), 'blank.png'))
  together = retriever.read_sketches_bytes(uploads)
  assert len(together) == len(uploads)
  for (data, name), got in zip(uploads, together):
    try:
      alone = retriever.read_sketch_bytes(data, name)
    except query_images.ImageFileError as e:
      assert isinstance(got, query_images.ImageFileError) and str(got) == str(e)
    else:
      np.testing.assert_array_equal(got, alone)  # Bit for bit: same ranks.
  assert sum(isinstance(g, Exception) for g in together) == 2


def test_query_chunks_pad_little_and_reuse_the_compiled_sizes():
  assert inference.query_chunks(33, 1, 64) == [32, 1]  # Not 64 with 31 padding rows.
  assert inference.query_chunks(63, 1, 64) == [64]
  assert inference.query_chunks(130, 2, 64) == [64, 64, 2]
  for devices in (1, 2):
    compiled = {inference.query_buckets(n, devices) for n in range(1, 65)}
    for n in range(1, 200):
      sizes = inference.query_chunks(n, devices, 64)
      assert set(sizes) <= compiled, (n, sizes)
      assert 0 <= sum(sizes) - n <= n // 4 + devices - 1, (n, sizes)


def test_batcher_gathers_a_wave_under_load_and_a_lone_query_waits_for_nobody():
  calls = []

  def run(items):
    calls.append(list(items))
    time.sleep(0.05)
    return [ValueError(f'bad {i}') if i < 0 else 10 * i for i in items]

  batcher = batcher_lib.Batcher(run, max_batch=8, max_wait_s=0.3)
  try:
    start = time.perf_counter()
    assert batcher.submit(1).result(timeout=5) == 10
    assert time.perf_counter() - start < 0.25  # Alone: no wait for others.
    # Two queued while one runs: a batch of two, so the worker is under load.
    first = batcher.submit(2)
    time.sleep(0.01)
    pair = [batcher.submit(3), batcher.submit(-4)]
    assert first.result(timeout=5) == 20 and pair[0].result(timeout=5) == 30
    with pytest.raises(ValueError, match='bad -4'):  # Fails alone.
      pair[1].result(timeout=5)
    # Under load a wave arriving over 0.1 s is one batch.
    wave = [batcher.submit(5)]
    time.sleep(0.1)
    wave += [batcher.submit(6), batcher.submit(7)]
    assert [f.result(timeout=5) for f in wave] == [50, 60, 70]
    assert calls == [[1], [2], [3, -4], [5, 6, 7]]
  finally:
    batcher.close()


def test_bad_uploads_get_4xx_with_a_message_and_the_server_keeps_serving(app):
  white = np.full((256, 256), 255, np.uint8)
  noise = np.random.default_rng(0).integers(0, 256, (160, 160, 3), np.uint8)
  big_png = _png(noise)  # ~77 kB: over the 40 kB limit, under the header check.
  assert 40_000 < len(big_png) < 40_000 + 64 * 1024
  with open(_sketch_path(), 'rb') as f:
    good = f.read()

  async def go():
    async with _client(app) as client:
      out = {
          'text': await _search(client, b'this is not a sketch', 'notes.txt'),
          'empty': await _search(client, b'', 'empty.png'),
          'blank': await _search(client, _png(white), 'blank.png'),
          'tiny': await _search(client, _png(np.zeros((8, 8), np.uint8)), 'dot.png'),
          'truncated': await _search(client, good[:200], 'cut.png'),
          'large': await _search(client, big_png, 'big.png'),
          'huge': await _search(client, b'\0' * 300_000, 'huge.png'),
          'no_file': await client.post('/api/search'),
          'bad_k': await _search(client, good, '305.png', k=1000),
          'composed_here': await client.post('/api/composed',
                                             json={'image_id': 'test/0', 'text': 'x'}),
      }
      out['after'] = await _search(client, good, '305.png')
      return out
  out = _run(go())
  expect = {'text': (400, 'notes.txt is not an image'), 'empty': (400, 'empty.png is empty'),
            'blank': (400, 'blank.png is blank'), 'tiny': (400, 'too small'),
            'truncated': (400, 'cut.png is not an image'),
            'large': (413, 'larger than the limit of 40000 bytes'),
            'huge': (413, 'larger than the limit of 40000 bytes'),
            'no_file': (422, 'sketch'), 'bad_k': (422, 'k'),
            'composed_here': (400, 'sketch model')}
  for name, (status, message) in expect.items():
    assert out[name].status_code == status, (name, out[name].text)
    assert message in str(out[name].json()['detail']), (name, out[name].text)
  assert '_io.BytesIO' not in out['text'].text
  assert out['after'].status_code == 200 and len(out['after'].json()['results']) == 5


def test_gallery_images_by_id_only(app, retriever):
  async def go():
    async with _client(app) as client:
      ok = await client.get('/api/gallery/test/0')
      listing = (await client.get('/api/gallery?offset=110&limit=10')).json()
      bad = [await client.get(f'/api/gallery/{i}') for i in (
          'test/115', 'test/-1', 'nothing', '..%2F..%2Fetc%2Fpasswd', '%2Fetc%2Fpasswd',
          'test/..%2F..%2Fsbir_jax%2Fmain.py', 'test%2F0%2F..%2F0')]
      return ok, listing, bad
  ok, listing, bad = _run(go())
  assert ok.status_code == 200 and ok.headers['content-type'] == 'image/png'
  with Image.open(io.BytesIO(ok.content)) as image:
    np.testing.assert_array_equal(np.asarray(image), retriever.gallery_image(0))
  assert listing == {'total': 115, 'offset': 110,
                     'ids': [f'test/{i}' for i in range(110, 115)]}
  for answer in bad:
    assert answer.status_code == 404, answer.url
    assert 'No gallery image' in answer.json()['detail']


def test_folder_gallery_serves_only_its_files_and_untrained_fallback(
    tfds_dir, qmul_v1_dir, tmp_path):
  """No checkpoint in the workdir: the untrained ImageNet trunk (pooled
  Lite0 features, cosine, no attention) over a folder of real test photos."""
  photos = helpers.require_data('qmul_v1_rgb/shoes/test/images')
  folder = tmp_path / 'photos'
  folder.mkdir()
  for name in ('305.jpg', '306.jpg', '307.jpg', '308.jpg'):
    shutil.copy(os.path.join(photos, name), folder / name)
  (tmp_path / 'secret.txt').write_text('not to be served')
  config = helpers.tiny_config('shoes', tfds_dir, qmul_v1_dir)
  workdir = str(tmp_path / 'empty_run')
  with pytest.raises(Exception, match='No checkpoint'):
    inference.load(config, workdir, gallery=str(folder))
  r = inference.load(config, workdir, gallery=str(folder), allow_untrained=True)
  assert not r.trained and r.ids == ['305.jpg', '306.jpg', '307.jpg', '308.jpg']
  assert r.items.embeddings.shape == (4, 1280)
  np.testing.assert_allclose(np.linalg.norm(r.items.embeddings, axis=1), 1.0, rtol=1e-5)
  app = server.create_app(r, top_k=3)
  with open(_sketch_path(), 'rb') as f:
    sketch = f.read()

  async def go():
    async with _client(app) as client:
      info = (await client.get('/api/info')).json()
      answer = await _search(client, sketch, '305.png')
      files = [await client.get(f'/api/gallery/{i}') for i in
               ('306.jpg', '..%2Fsecret.txt', '../secret.txt', str(folder / '305.jpg'))]
      page = await client.get('/')
      return info, answer, files, page
  info, answer, files, page = _run(go())
  app.state.batcher.close()
  assert not info['trained'] and 'untrained ImageNet EfficientNet-Lite0' in info['model']
  assert info['score'] == 'cosine' and not info['attention']
  body = answer.json()
  assert answer.status_code == 200 and len(body['results']) == 3
  assert body['attention'] is None
  assert body['true_match']['id'] == '305.jpg'  # Same file name as the query.
  scores = [x['score'] for x in body['results']]
  assert scores == sorted(scores, reverse=True) and -1.0 <= scores[-1] <= scores[0] <= 1.0
  assert [f.status_code for f in files] == [200, 404, 404, 404]
  assert page.status_code == 200 and 'id="canvas"' in page.text
  # Cached under its own name: a trained model's gallery file is never the
  # untrained trunk's.
  cache = inference.gallery_cache_path(workdir, str(folder), 'untrained_lite0')
  assert os.path.exists(cache)


def test_gallery_file_of_another_model_is_refused_at_start(tiny_run, retriever, tmp_path):
  config, workdir = tiny_run
  other = gallery_file.Gallery(
      np.zeros((3, retriever.items.embeddings.shape[1]), np.float32),
      np.array(['a.jpg', 'b.jpg', 'c.jpg']),
      dict(retriever.items.fingerprint, params_hash='0123456789abcdef'), '/elsewhere')
  path = str(tmp_path / 'other_model.npz')
  gallery_file.save_gallery(path, other)
  with pytest.raises(gallery_file.GalleryMismatchError, match='different model.*params_hash'):
    inference.load(config, workdir, gallery=path)
  # The model's own cached file is accepted as a gallery.
  own = inference.load(config, workdir,
                       gallery=os.path.join(workdir, 'retrieval', 'gallery_test.npz'))
  assert own.size == 115


# --- The page in a real browser ------------------------------------------------------
def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _cli(tiny_run, *args):
  config, workdir = tiny_run
  return [sys.executable, '-m', 'sbir_jax.main', '--config=configs/shoes.py:tiny',
          f'--workdir={workdir}', f'--config.data.tfds_data_dir={config.data.tfds_data_dir}',
          f'--config.data.manual_dir={config.data.manual_dir}',
          *[f'--config.data.{k}={v}' for k, v in INPUT_OVERRIDES.items()], *args]


def test_page_in_headless_chromium(tiny_run, tmp_path):
  if CHROMIUM is None:
    helpers.skip_or_fail('No chromium on PATH: `apt-get install chromium` (.ci/run does).')
  from playwright.sync_api import sync_playwright

  query = _sketch_path()
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2')
  port = _free_port()
  log = open(tmp_path / 'serve.log', 'w')  # A file: a full pipe would stall the server.
  serve = subprocess.Popen(_cli(tiny_run, '--mode=serve', f'--port={port}', '--top_k=10'),
                           cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
  try:
    # The command line's ranking of the same file, meanwhile.
    retrieve = subprocess.run(_cli(tiny_run, '--mode=retrieve', f'--query={query}',
                                   '--top_k=10'),
                              cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=300)
    assert retrieve.returncode == 0, retrieve.stderr[-3000:]
    lines = [l.split() for l in retrieve.stdout.splitlines() if l.strip()[:1].isdigit()]
    expected_ids = [parts[1] for parts in lines]
    assert len(expected_ids) == 10
    expected_rank = retrieve.stdout.split('true match test/0 at rank ')[1].split(')')[0]

    url = f'http://127.0.0.1:{port}'
    deadline = time.time() + 240
    while True:
      assert serve.poll() is None, (tmp_path / 'serve.log').read_text()[-3000:]
      try:
        if httpx.get(url + '/api/info', timeout=2).status_code == 200:
          break
      except httpx.TransportError:
        pass
      assert time.time() < deadline, 'the server did not start in 240 s'
      time.sleep(0.5)

    with sync_playwright() as p:
      browser = p.chromium.launch(executable_path=CHROMIUM,
                                  args=['--no-sandbox', '--disable-gpu'])
      page = browser.new_page(viewport={'width': 1280, 'height': 820})
      page.goto(url)
      page.wait_for_selector('body[data-ready="1"]')
      searches = lambda: int(page.evaluate('document.body.dataset.searches'))
      box = page.locator('#canvas').bounding_box()
      x0, y0, w, h = box['x'], box['y'], box['width'], box['height']
      # A shoe-ish outline in three strokes; each lift of the pen searches.
      strokes = [[(0.15, 0.55), (0.35, 0.45), (0.55, 0.5), (0.85, 0.65), (0.85, 0.75)],
                 [(0.85, 0.75), (0.15, 0.75), (0.15, 0.55)],
                 [(0.3, 0.5), (0.3, 0.3), (0.45, 0.3), (0.5, 0.48)]]
      for stroke in strokes:
        page.mouse.move(x0 + stroke[0][0] * w, y0 + stroke[0][1] * h)
        page.mouse.down()
        for fx, fy in stroke[1:]:
          page.mouse.move(x0 + fx * w, y0 + fy * h, steps=6)
        page.mouse.up()
      idle = 'document.body.dataset.pending === "0"'
      page.wait_for_function(f'Number(document.body.dataset.searches) >= 1 && {idle}')
      page.wait_for_function(
          'document.querySelectorAll("#results img.result-img").length === 10 && '
          '[...document.querySelectorAll("#results img.result-img")]'
          '.every(i => i.complete && i.naturalWidth > 0)')
      assert 'Top 10 of 115' in page.text_content('#status')
      assert page.evaluate('document.body.dataset.errors') is None
      # The strokes reached the server as a sketch: the attention note is drawn.
      assert '3x3 mask' in page.text_content('#attention-note')
      drawn_ids = page.eval_on_selector_all('#results figure', 'f => f.map(x => x.dataset.id)')

      # Undo: the page searches again with one stroke fewer; clear empties it.
      count = searches()
      page.click('#undo')
      page.wait_for_function(f'Number(document.body.dataset.searches) > {count} && {idle}')
      page.click('#clear')
      assert page.locator('#results figure').count() == 0

      # Upload a real test sketch: exactly --mode=retrieve's ranking.
      count = searches()
      page.set_input_files('#upload', query)
      page.wait_for_function(f'Number(document.body.dataset.searches) > {count} && {idle}')
      page.wait_for_function(
          '[...document.querySelectorAll("#results img.result-img")]'
          '.every(i => i.complete && i.naturalWidth > 0)')
      ids = page.eval_on_selector_all('#results figure', 'f => f.map(x => x.dataset.id)')
      assert ids == expected_ids
      assert ids != drawn_ids
      status = page.text_content('#status')
      assert f'true match test/0 at rank {expected_rank}' in status
      outlined = page.eval_on_selector_all('#results figure.true-match',
                                           'f => f.map(x => x.dataset.id)')
      assert outlined == (['test/0'] if 'test/0' in ids else [])
      page.wait_for_timeout(300)  # The attention canvas after the image loads.
      shot = tmp_path / 'search_by_drawing.png'
      page.screenshot(path=str(shot), full_page=True)
      browser.close()
    assert shot.stat().st_size > 10_000
    if os.environ.get('SBIR_JAX_SCREENSHOT'):
      shutil.copy(shot, os.environ['SBIR_JAX_SCREENSHOT'])
  finally:
    serve_process.stop(serve, timeout_s=20)
    log.close()
