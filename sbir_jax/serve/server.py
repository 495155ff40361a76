"""`--mode=serve`: the search page and its JSON API (FastAPI + uvicorn).

One process restores the checkpoint once and embeds the gallery once
(`inference.load`, which reuses `--mode=retrieve`'s cached gallery file and
refuses one from another model); requests from many clients are batched into
one embedding call and one exact top-K search (`batcher.py`). The event loop
only parses requests and sends answers: the uploads are decoded, and resized
in one call, by the batch worker.

  GET  /                        the page (static/, plain HTML + CSS + JS)
  GET  /api/info                the model, gallery size, limits, mode
  POST /api/search?k=10         multipart field `sketch`: a PNG/JPEG sketch
  POST /api/composed            JSON {"image_id": "test/3", "text": "...", "k": 10}
  GET  /api/gallery?offset&limit  gallery ids, in gallery order
  GET  /api/gallery/<id>        a gallery image as PNG (ids of the gallery only)

Bad input gets a 4xx answer whose `detail` says what was wrong; the server
keeps serving.
"""
import functools
import io
import os
import time
from typing import Any, Optional, Sequence

import numpy as np
from absl import logging
from PIL import Image

import fastapi
from fastapi import responses
from fastapi import staticfiles

from sbir_jax import inference
from sbir_jax.models import text as text_lib
from sbir_jax.serve import batcher as batcher_lib
from sbir_jax.tasks.fg_sbir import query_images

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'static')
MAX_UPLOAD_BYTES = 2 * 1024 * 1024  # A 256x256 sketch PNG is a few kB.
MAX_K = 100
MAX_BATCH = 64
# Under load, how long the batch worker lets the first query of a batch wait
# for the rest of its wave (batcher.py): small next to the ~18 ms the `cpu`
# DSSA spends on each sketch on 2 cores; a lone client never waits.
MAX_WAIT_S = 0.01


def _composed(retriever) -> bool:
  return isinstance(retriever, inference.ComposedRetriever)


def _results(retriever, scores, rows, k: int) -> list:
  return [{'rank': i + 1, 'id': retriever.ids[int(r)], 'score': float(s),
           'url': f'/api/gallery/{retriever.ids[int(r)]}'}
          for i, (s, r) in enumerate(zip(scores[:k], rows[:k]))]


def sketch_batch(retriever: inference.SketchRetriever, items: Sequence[dict]) -> list:
  """Uploaded sketches -> results: one decode-and-resize call, one embedding
  call (with the attention masks), one search. An upload that cannot be read
  gets its `ImageFileError` as its result; the others are answered."""
  start = time.perf_counter()
  images = retriever.read_sketches_bytes([(item['data'], item['name']) for item in items])
  out: list = list(images)  # The refusals stay in place.
  good = [i for i, image in enumerate(images) if not isinstance(image, Exception)]
  if not good:
    return out
  sketches = np.stack([images[i] for i in good])
  q_BxD, masks = retriever.embed_sketches_with_attention(sketches)
  scores, rows = retriever.search(q_BxD, max(items[i]['k'] for i in good))
  for j, i in enumerate(good):
    true_row = retriever.true_row(sketches[j], items[i]['name'])
    true = None
    if true_row is not None:
      true = {'id': retriever.ids[true_row],
              'rank': retriever.rank_of(q_BxD[j:j + 1], true_row) + 1}
    out[i] = {'results': _results(retriever, scores[j], rows[j], items[i]['k']),
              'true_match': true,
              'attention': None if masks is None else masks[j].tolist(),
              'batch_size': len(good),
              'search_ms': 1000 * (time.perf_counter() - start)}
  return out


def composed_batch(retriever: inference.ComposedRetriever, items: Sequence[dict]) -> list:
  """Composed queries -> results, each query's reference image left out."""
  start = time.perf_counter()
  rows_in = [item['row'] for item in items]
  q_BxD = retriever.embed_composed(rows_in, [item['text'] for item in items])
  scores, rows = retriever.search(q_BxD, max(item['k'] for item in items), rows_in)
  return [{'results': _results(retriever, s, r, item['k']), 'true_match': None,
           'attention': None, 'batch_size': len(items),
           'search_ms': 1000 * (time.perf_counter() - start)}
          for item, s, r in zip(items, scores, rows)]


def create_app(retriever, *, top_k: int = 10, max_upload_bytes: int = MAX_UPLOAD_BYTES,
               max_batch: int = MAX_BATCH, max_wait_s: float = MAX_WAIT_S
               ) -> fastapi.FastAPI:
  """The FastAPI app over a retriever of `sbir_jax.inference`."""
  composed = _composed(retriever)
  run = functools.partial(composed_batch if composed else sketch_batch, retriever)
  batcher = batcher_lib.Batcher(run, max_batch=max_batch, max_wait_s=max_wait_s)
  app = fastapi.FastAPI(title='sbir_jax search', docs_url='/api/docs', redoc_url=None)
  app.state.batcher, app.state.retriever = batcher, retriever

  def bad(status: int, message: str) -> fastapi.HTTPException:
    return fastapi.HTTPException(status_code=status, detail=message)

  @app.middleware('http')
  async def refuse_large_bodies(request: fastapi.Request, call_next):
    # Refused before the body is read: a huge upload costs the server nothing.
    length = request.headers.get('content-length')
    if request.method == 'POST' and length and length.isdigit() and (
        int(length) > max_upload_bytes + 64 * 1024):  # + multipart headers.
      return responses.JSONResponse(
          {'detail': f'Upload of {int(length)} bytes is larger than the limit of '
                     f'{max_upload_bytes} bytes; send a smaller sketch (PNG or JPEG).'},
          status_code=413)
    return await call_next(request)

  @app.get('/', include_in_schema=False)
  def page():
    return responses.FileResponse(os.path.join(STATIC, 'index.html'))

  app.mount('/static', staticfiles.StaticFiles(directory=STATIC), name='static')

  @app.get('/api/info')
  def info():
    return {'mode': 'composed' if composed else 'sketch',
            'trained': retriever.trained, 'model': retriever.description,
            'step': retriever.step, 'score': retriever.score_name,
            'gallery_size': retriever.size, 'top_k': min(top_k, retriever.size),
            'max_k': MAX_K, 'max_upload_bytes': max_upload_bytes,
            'attention': retriever.has_attention,
            'crop_fraction': (0.0 if composed else
                              retriever.crop_size / retriever.load_size),
            'examples': ([{'image_id': retriever.ids[r], 'text': t}
                          for r, t in retriever.examples] if composed else []),
            'batching': batcher.stats()}

  @app.get('/api/gallery')
  def gallery_ids(offset: int = fastapi.Query(0, ge=0),
                  limit: int = fastapi.Query(60, ge=1, le=1000)):
    return {'total': retriever.size, 'offset': offset,
            'ids': retriever.ids[offset:offset + limit]}

  @functools.lru_cache(maxsize=4096)
  def png_of(row: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(retriever.gallery_image(row)).save(buffer, format='PNG')
    return buffer.getvalue()

  @app.get('/api/gallery/{image_id:path}')
  def gallery_image(image_id: str):
    # Only ids of the gallery are looked up: nothing the client sends ever
    # becomes a file path.
    row = retriever.row_of.get(image_id)
    if row is None:
      raise bad(404, f'No gallery image {image_id!r}; GET /api/gallery lists the ids.')
    return responses.Response(png_of(row), media_type='image/png',
                              headers={'Cache-Control': 'max-age=3600'})

  @app.post('/api/search')
  async def search(sketch: fastapi.UploadFile = fastapi.File(...),
                   k: Optional[int] = fastapi.Query(None, ge=1, le=MAX_K)):
    if composed:
      raise bad(400, 'This server holds a composed-query model: POST /api/composed '
                'with an image_id and a text.')
    data = await sketch.read(max_upload_bytes + 1)
    if len(data) > max_upload_bytes:
      raise bad(413, f'Upload larger than the limit of {max_upload_bytes} bytes; '
                'send a smaller sketch (PNG or JPEG).')
    name = os.path.basename(sketch.filename or 'upload')
    try:
      # Decoded by the batch worker with the rest of its batch: the event
      # loop never decodes or resizes an image.
      answer = await batcher({'data': data, 'name': name, 'k': k or top_k})
    except query_images.ImageFileError as e:
      raise bad(400, str(e)) from None
    # Plain JSON types already: no `jsonable_encoder` pass on the event loop.
    return responses.JSONResponse(answer)

  @app.post('/api/composed')
  async def composed_search(body: dict = fastapi.Body(...)):
    if not composed:
      raise bad(400, 'This server holds a sketch model: POST /api/search with a sketch.')
    image_id, text = body.get('image_id'), body.get('text')
    k = body.get('k')
    k = top_k if k is None else k
    if not isinstance(image_id, str) or not isinstance(text, str):
      raise bad(400, 'Send JSON {"image_id": "<gallery id>", "text": "<modification>"}.')
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
      raise bad(400, f'k={k!r}: give a whole number from 1 to {MAX_K}.')
    row = retriever.row_of.get(image_id)
    if row is None:
      raise bad(404, f'No gallery image {image_id!r}; GET /api/gallery lists the ids.')
    if not text_lib.tokenize(text):
      # The composed task's own refusal (models/text.py EmptyTextError).
      try:
        retriever.task.vocab.encode([text], retriever.config.data.max_text_length)
      except text_lib.EmptyTextError as e:
        raise bad(400, str(e)) from None
    return responses.JSONResponse(await batcher({'row': row, 'text': text, 'k': k}))

  return app


def _warm_up_png() -> bytes:
  square = np.full((64, 64), 255, np.uint8)
  square[:32, :32] = 0
  buffer = io.BytesIO()
  Image.fromarray(square).save(buffer, format='PNG')
  return buffer.getvalue()


def warm_up(retriever, max_batch: int = 1) -> None:
  """Compiles the embedding and search of batch sizes 1, 2, 4, ... max_batch."""
  size = 1
  while size <= max_batch:
    if _composed(retriever):
      composed_batch(retriever, [{'row': 0, 'text': 'a', 'k': 10}] * size)
    else:
      sketch_batch(retriever, [{'data': _warm_up_png(), 'name': '', 'k': 10}] * size)
    size *= 2


def serve(config: Any, workdir: str, *, checkpoint: str = 'best', gallery: str = 'test',
          host: str = '127.0.0.1', port: int = 8000, top_k: int = 10,
          warm_batch: int = 1) -> None:
  """Restores once, embeds the gallery once, and serves until interrupted."""
  import uvicorn

  retriever = inference.load(config, workdir, checkpoint, gallery or 'test',
                             allow_untrained=True)
  warm_up(retriever, warm_batch)
  app = create_app(retriever, top_k=top_k)
  print(f'Serving {retriever.description} over {retriever.size} gallery images at '
        f'http://{host}:{port}/ (JSON API: /api/info)', flush=True)
  logging.info('Serving on %s:%d', host, port)
  uvicorn.run(app, host=host, port=port, log_level='warning')
