"""`--mode=retrieve` of the FG-SBIR task: a sketch file in, its top-K photos out.

Restores the model, embeds the gallery once (the test photos, a folder of
photos, or a saved file; `gallery_file.py` caches it under
<workdir>/retrieval/ and refuses one from another model), reads the query
file as the data is read (`query_images.py`), ranks the gallery by exact
sharded top-K with the energy the model was trained with (`scoring.py`,
`gallery_index.py`), and draws the results grid and the DSSA attention mask
as in the paper's Figures 4 and 5 (`sbir_jax/pictures.py`).
"""
import json
import os
from typing import Any, Callable

from absl import logging
import jax
import numpy as np

from sbir_jax import inference
from sbir_jax import pictures
from sbir_jax.tasks.fg_sbir import query_images


def embed_gallery(*args, **kwargs):
  """`inference.embed_gallery`, kept here for callers of the earlier layout."""
  return inference.embed_gallery(*args, **kwargs)


# --- --mode=retrieve ------------------------------------------------------------
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
  for rank, item in enumerate(result['top'], 1):
    print(f"  {rank:3d}. {item['id']}  score {item['score']:.6g}")
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
  <workdir>/retrieval/<query>_top<k>.png and <query>_attention.png. The
  embedding and search are `inference.SketchRetriever`'s, as the server's.
  """
  config = task.config
  if top_k < 1:
    raise ValueError(f'--top_k={top_k}; give a positive number.')
  # A bad query fails before anything slow happens.
  query_image = query_images.load_query(query, config.data.load_size)
  retriever = inference.SketchRetriever(task, state, workdir, gallery)
  k = min(top_k, retriever.size)
  q_1xD, masks = retriever.embed_sketches_with_attention(query_image[None])
  top_scores, top_rows = retriever.search(q_1xD, k)
  top_scores, top_rows = top_scores[0], top_rows[0]
  true_row = retriever.true_row(query_image, query)
  true_rank = None if true_row is None else retriever.rank_of(q_1xD, true_row)
  ids = retriever.ids

  # --- Pictures ----------------------------------------------------------------
  out_dir = os.path.join(workdir, 'retrieval')
  os.makedirs(out_dir, exist_ok=True)
  name = os.path.splitext(os.path.basename(query))[0]
  grid_path = os.path.join(out_dir, f'{name}_top{k}.png')
  attention_path = os.path.join(out_dir, f'{name}_attention.png')
  photos = [retriever.gallery_image(int(r)) for r in top_rows]
  captions = [f'#{i + 1} {ids[r]}\nscore {s:.3f}'
              for i, (r, s) in enumerate(zip(top_rows, top_scores))]
  hits = np.flatnonzero(top_rows == true_row) if true_row is not None else []
  note = (f'{os.path.basename(query)}: top {k} of {retriever.size} '
          f'({config.loss.energy} energy, step {retriever.step}); ' +
          ('true match unknown' if true_row is None else
           f'true match {ids[true_row]} at rank {true_rank + 1}'))
  if jax.process_index() == 0:
    pictures.results_grid(query_image[..., 0], photos, captions,
                          int(hits[0]) if len(hits) else None, note).save(grid_path)
  # DSSA and the RGB two-tower model's sketch tower attend; the shared-stem
  # model has no attention. The mask is at the trunk map's size.
  if masks is not None:
    if jax.process_index() == 0:
      crop = query_images.centre_crop(query_image[None], config.data.crop_size)
      pictures.attention_overlay(crop[0, ..., 0], masks[0]).save(attention_path)
  else:
    attention_path = None
    logging.info('This model has no attention module: no attention picture.')

  result = {'query': query, 'gallery': retriever.items.source or gallery,
            'step': retriever.step, 'gallery_size': retriever.size,
            'top': [{'id': ids[r], 'score': float(s)}
                    for r, s in zip(top_rows, top_scores)],
            'true_match': None if true_row is None else ids[true_row],
            'true_match_rank': None if true_rank is None else true_rank + 1,
            'grid_png': grid_path, 'attention_png': attention_path}
  logging.info('Retrieval: %s', json.dumps(result))
  return result
