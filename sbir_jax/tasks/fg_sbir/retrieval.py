"""`--mode=retrieve` of the FG-SBIR task: a sketch file in, its top-K photos out.

Restores the model, embeds the gallery once (the test photos, a folder of
photos, or a saved file; `gallery_file.py` caches it under
<workdir>/retrieval/ and refuses one from another model), reads the query
file as the data is read (`query_images.py`), ranks the gallery by exact
sharded top-K with the energy the model was trained with (`scoring.py`,
`gallery_index.py`), and draws the results grid and the DSSA attention mask
as in the paper's Figures 4 and 5 (`sbir_jax/pictures.py`).
"""
import functools
import json
import os
import time
from typing import Any, Callable, Optional

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from sbir_jax import pictures
from sbir_jax.tasks.fg_sbir import gallery_file
from sbir_jax.tasks.fg_sbir import gallery_index
from sbir_jax.tasks.fg_sbir import query_images
from sbir_jax.tasks.fg_sbir import scoring


# --- Embedding a gallery --------------------------------------------------------
def embed_gallery(embed_fn: Callable[[np.ndarray], np.ndarray], num_items: int,
                  read_chunk: Callable[[int, int], np.ndarray], *,
                  chunk_size: int, what: str = 'gallery',
                  log_every_seconds: float = 10.0) -> np.ndarray:
  """Embeds items [0, num_items) chunk by chunk, logging progress and ETA.

  read_chunk(start, stop) -> the model inputs of those items; embed_fn maps a
  chunk to (n, D) embeddings (batched and sharded on `data` inside). Only one
  chunk of images is in memory at a time.
  """
  out, start_time, last_log = [], time.time(), 0.0
  for start in range(0, num_items, chunk_size):
    stop = min(start + chunk_size, num_items)
    out.append(np.asarray(embed_fn(read_chunk(start, stop)), np.float32))
    now = time.time()
    if now - last_log >= log_every_seconds or stop == num_items:
      rate = stop / max(now - start_time, 1e-9)
      logging.info('Embedded %d/%d %s images (%.1f/s, %.0f s left)', stop, num_items,
                   what, rate, (num_items - stop) / rate)
      last_log = now
  return np.concatenate(out)


def _gallery_picture(gallery: gallery_file.Gallery, row: int, test_photos,
                     size: int) -> np.ndarray:
  """What to show for gallery row `row`: the photo, or a grey tile if gone."""
  if gallery.source == 'test' and test_photos is not None:
    photo = test_photos[row]
    return photo[..., 0] if photo.shape[-1] == 1 else photo
  path = os.path.join(gallery.source, str(gallery.ids[row]))
  try:
    with Image.open(path) as image:
      return np.asarray(image.convert('RGB').resize((size, size)))
  except (OSError, ValueError):
    return np.full((size, size), 200, np.uint8)


# --- --mode=retrieve ------------------------------------------------------------
def _match_in_split(query_SxSx1: np.ndarray, sketches_NxSxSx1: np.ndarray) -> Optional[int]:
  """The split sketch the query is a copy of (so its photo is the true match)."""
  diff = np.abs(sketches_NxSxSx1.astype(np.int16) - query_SxSx1[None].astype(np.int16))
  mean_diff = diff.reshape(len(diff), -1).mean(axis=1)
  best = int(np.argmin(mean_diff))
  return best if mean_diff[best] < 1.0 else None


def _gallery_cache_path(workdir: str, gallery_arg: str) -> str:
  if gallery_arg == 'test':
    return os.path.join(workdir, 'retrieval', 'gallery_test.npz')
  folder = os.path.abspath(gallery_arg)
  name = os.path.basename(folder.rstrip(os.sep)) or 'root'
  return os.path.join(workdir, 'retrieval',
                      f'gallery_{name}_{gallery_file.short_hash(folder.encode())[:8]}.npz')


def retrieve_mode(restore: Callable[[], tuple[Any, Any]], workdir: str,
                  options: dict) -> dict:
  """--mode=retrieve (a mode of the FG task): options query, gallery, top_k;
  `restore()` gives the task and its restored state (core/task.py ModeFn)."""
  if not options.get('query'):
    raise ValueError('--mode=retrieve needs --query=<sketch image file>.')
  query_images.load_query(options['query'], 256)  # A bad query fails before anything slow.
  task, state = restore()
  result = retrieve(task, state, workdir, options['query'],
                    options.get('gallery') or 'test', options.get('top_k') or 10)
  found = (f"true match {result['true_match']} at rank {result['true_match_rank']}"
           if result['true_match'] else 'true match unknown')
  print(f"Top {len(result['top'])} of {result['gallery_size']} ({found}): "
        f"{result['grid_png']}")
  if result['attention_png']:
    print(f"Attention: {result['attention_png']}")
  return result


def retrieve(task: Any, state: Any, workdir: str, query: str,
             gallery: str = 'test', top_k: int = 10) -> dict:
  """Top-K photos of `gallery` for the sketch file `query`, with the FG task
  and its restored train state (`core/trainer.restore_for_mode`).

  gallery: 'test' (the task's test photos), a folder of photos, or a gallery
  .npz written before. The gallery is embedded once and cached in
  <workdir>/retrieval/ (re-embedded when the checkpoint changed). Writes
  <workdir>/retrieval/<query>_top<k>.png and <query>_attention.png.
  """
  from sbir_jax.models import dssa

  config, mesh = task.config, task.mesh
  if top_k < 1:
    raise ValueError(f'--top_k={top_k}; give a positive number.')
  data = config.data
  # A bad query fails before anything slow happens.
  query_image = query_images.load_query(query, data.load_size)

  step = int(state.step)
  variables = state.variables
  params = state.params
  fingerprint = gallery_file.model_fingerprint(config, task.model.output_dim, params)
  # The query goes through the sketch layers, the gallery through the photo
  # layers (the same branch for DSSA; their own for the RGB models).
  embed_sketches = functools.partial(task.embed_images, variables, domain='sketch')
  embed_photos = functools.partial(task.embed_images, variables, domain='photo')
  chunk = config.eval.batch_size * 8

  # --- Gallery: cached file, or embed once -------------------------------------
  test_photos = None
  if gallery == 'test':
    test_photos = task.splits['test'].photos
  if gallery.endswith('.npz') and not os.path.isdir(gallery):
    if not os.path.exists(gallery):
      raise FileNotFoundError(f'--gallery={gallery}: no such gallery file.')
    items = gallery_file.load_gallery(gallery, fingerprint)
    if items.source == 'test':
      test_photos = task.splits['test'].photos
  else:
    cache = _gallery_cache_path(workdir, gallery)
    items = None
    if os.path.exists(cache):
      try:
        items = gallery_file.load_gallery(cache, fingerprint)
        logging.info('Gallery embeddings read from %s', cache)
      except gallery_file.GalleryMismatchError as e:
        logging.info('Re-embedding the gallery: %s', e)
    if items is None:
      if gallery == 'test':
        ids = np.array([f'test/{i}' for i in range(len(test_photos))])
        read = lambda a, b: query_images.centre_crop(test_photos[a:b], data.crop_size)
        source = 'test'
      else:
        source = os.path.abspath(gallery)
        ids = np.array(query_images.list_images(source))
        # Photos as the model was trained on them: RGB, or edge maps.
        photo_input = data.get('photo_input', 'edge')
        stored_as_edges = data.source == 'qmul_v1'
        read = lambda a, b: query_images.centre_crop(np.stack(
            [query_images.load_photo(os.path.join(source, n), data.load_size,
                                     photo_input, stored_as_edges)
             for n in ids[a:b]]), data.crop_size)
      embeddings = embed_gallery(embed_photos, len(ids), read, chunk_size=chunk)
      items = gallery_file.Gallery(embeddings, ids, fingerprint, source)
      if jax.process_index() == 0:
        gallery_file.save_gallery(cache, items)
      logging.info('Gallery of %d embedded; saved to %s', len(ids), cache)

  # --- Search ------------------------------------------------------------------
  energy_params = params.get('energy')
  scorer = scoring.scorer_for_energy(config.loss.energy, energy_params)
  index = gallery_index.GalleryIndex(items.embeddings, scorer, mesh)
  k = min(top_k, index.size)
  crop = query_images.centre_crop(query_image[None], data.crop_size)
  q_1xD = embed_sketches(crop)
  top_scores, top_rows = index.search(q_1xD, k)
  top_scores, top_rows = top_scores[0], top_rows[0]

  true_row = None
  if items.source == 'test':
    true_row = _match_in_split(query_image, task.splits['test'].sketches)
  else:
    stem = os.path.splitext(os.path.basename(query))[0]
    stems = [os.path.splitext(os.path.basename(str(i)))[0] for i in items.ids]
    true_row = stems.index(stem) if stems.count(stem) == 1 else None
  true_rank = None if true_row is None else index.rank_of(q_1xD, true_row)

  # --- Pictures ----------------------------------------------------------------
  out_dir = os.path.join(workdir, 'retrieval')
  os.makedirs(out_dir, exist_ok=True)
  name = os.path.splitext(os.path.basename(query))[0]
  grid_path = os.path.join(out_dir, f'{name}_top{k}.png')
  attention_path = os.path.join(out_dir, f'{name}_attention.png')
  photos = [_gallery_picture(items, int(r), test_photos, data.load_size)
            for r in top_rows]
  captions = [f'#{i + 1} {items.ids[r]}\nscore {s:.3f}'
              for i, (r, s) in enumerate(zip(top_rows, top_scores))]
  hits = np.flatnonzero(top_rows == true_row) if true_row is not None else []
  note = (f'{os.path.basename(query)}: top {k} of {index.size} '
          f'({config.loss.energy} energy, step {step}); ' +
          ('true match unknown' if true_row is None else
           f'true match {items.ids[true_row]} at rank {true_rank + 1}'))
  if jax.process_index() == 0:
    pictures.results_grid(query_image[..., 0], photos, captions,
                          int(hits[0]) if len(hits) else None, note).save(grid_path)
  mask = None
  # DSSA and the RGB two-tower model's sketch tower attend; the shared-stem
  # model has no attention. The mask is at the trunk map's size.
  if isinstance(task.model, dssa.DSSA) and task.model.attention:
    mask = task.model.apply(variables, task.prepare_inputs(jnp.asarray(crop), 'sketch'),
                            method=dssa.DSSA.attention_mask)
    if jax.process_index() == 0:
      pictures.attention_overlay(crop[0, ..., 0],
                                 np.asarray(mask)[0, ..., 0]).save(attention_path)
  else:
    attention_path = None
    logging.info('This model has no attention module: no attention picture.')

  result = {'query': query, 'gallery': items.source or gallery, 'step': step,
            'gallery_size': index.size,
            'top': [{'id': str(items.ids[r]), 'score': float(s)}
                    for r, s in zip(top_rows, top_scores)],
            'true_match': None if true_row is None else str(items.ids[true_row]),
            'true_match_rank': None if true_rank is None else true_rank + 1,
            'grid_png': grid_path, 'attention_png': attention_path}
  logging.info('Retrieval: %s', json.dumps(result))
  return result
