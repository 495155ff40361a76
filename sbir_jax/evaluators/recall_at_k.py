"""Recall@K for composed-query retrieval, with TIRG's protocol (test_retrieval.py).

Queries and gallery features are L2-normalised and ranked by dot product; the
only gallery image removed from a query's ranking is its own reference image;
a query is a hit at K if any of its top K images has the target's label (TIRG
compares captions: on CSS the caption is str(label), so duplicate scenes count
as the target). Recall@K is the percentage of hits, with its 95% bootstrap
interval over the queries. Ties never help (the rule of `ranking.py`): among
images with equal scores, those without the target's label rank first. A
query whose target label is nowhere in its gallery (its own image removed)
is refused, never scored as a miss.
"""
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from sbir_jax.evaluators import ranking

DEFAULT_KS = (1, 5, 10, 50)


def l2_normalize(x_NxD: np.ndarray) -> np.ndarray:
  x_NxD = np.asarray(x_NxD, np.float64)
  return x_NxD / np.maximum(np.linalg.norm(x_NxD, axis=1, keepdims=True), 1e-12)


def rank_gallery(queries_QxD: np.ndarray, gallery_GxD: np.ndarray,
                 source_ids_Q: np.ndarray, top: int,
                 target_labels_Q: np.ndarray, gallery_labels_G: np.ndarray
                 ) -> np.ndarray:
  """(Q, top) gallery indices, best first, each query's own image removed;
  equal scores rank the images without the target's label first."""
  sims_QxG = ranking.check_scores(
      l2_normalize(queries_QxD) @ l2_normalize(gallery_GxD).T)
  rows = np.arange(len(sims_QxG))
  source_ids_Q = np.asarray(source_ids_Q)
  sims_QxG[rows, source_ids_Q] = -np.inf
  target_QxG = (np.asarray(gallery_labels_G)[None, :]
                == np.asarray(target_labels_Q)[:, None])
  target_QxG[rows, source_ids_Q] = False
  ranking.check_every_query_has_a_hit(
      target_QxG, "image with the target's label (besides the query's own)")
  top = min(top, sims_QxG.shape[1] - 1)
  return ranking.order_ties_against(sims_QxG, target_QxG)[:, :top]


def recall_from_ranked_labels(ranked_labels_QxT: np.ndarray,
                              target_labels_Q: np.ndarray,
                              ks: Sequence[int] = DEFAULT_KS,
                              intervals: bool = True) -> dict[str, float]:
  """{'recall@K': %} (and its 95% interval) from each query's ranked labels."""
  hits_QxT = np.asarray(ranked_labels_QxT) == np.asarray(target_labels_Q)[:, None]
  return ranking.summarise({f'recall@{k}': hits_QxT[:, :k].any(axis=1) for k in ks},
                           scale=100.0, intervals=intervals)


def recall_at_k(queries_QxD: np.ndarray, gallery_GxD: np.ndarray,
                source_ids_Q: np.ndarray, target_labels_Q: np.ndarray,
                gallery_labels_G: np.ndarray, ks: Sequence[int] = DEFAULT_KS,
                intervals: bool = True) -> tuple[dict[str, float], np.ndarray]:
  """Recall@K (TIRG's protocol) and the (Q, max K) ranking it came from."""
  ranking_QxT = rank_gallery(queries_QxD, gallery_GxD, source_ids_Q, max(ks),
                             target_labels_Q, gallery_labels_G)
  labels = np.asarray(gallery_labels_G)[ranking_QxT]
  return (recall_from_ranked_labels(labels, target_labels_Q, ks, intervals),
          ranking_QxT)


def save_examples_picture(path: str, reference_images: np.ndarray,
                          texts: Sequence[str], ranked_images: np.ndarray,
                          hits: np.ndarray, scale: int = 2) -> None:
  """One row per query: reference image, text, top results; hits in green.

  reference_images (Q, H, W, 3) uint8; ranked_images (Q, T, H, W, 3) uint8;
  hits (Q, T) bool (the result has the target's label).
  """
  q, t, h, w, _ = ranked_images.shape
  text_width, pad = 150, 4
  cell = (w + 2 * pad, h + 2 * pad)
  sheet = Image.new('RGB', (cell[0] * (t + 1) + text_width, cell[1] * q + 16), 'white')
  draw = ImageDraw.Draw(sheet)
  draw.text((pad, 2), 'reference', fill='black')
  draw.text((cell[0] + pad, 2), 'modification text', fill='black')
  draw.text((cell[0] + text_width + pad, 2), f'top-{t} (green = target)',
            fill='black')
  for row in range(q):
    top = 16 + row * cell[1]
    sheet.paste(Image.fromarray(reference_images[row]), (pad, top + pad))
    words, lines = texts[row].split(), ['']
    for word in words:  # Wrap the text to the column.
      if len(lines[-1]) + len(word) + 1 > 24:
        lines.append('')
      lines[-1] = (lines[-1] + ' ' + word).strip()
    draw.multiline_text((cell[0] + pad, top + pad), '\n'.join(lines), fill='black')
    for col in range(t):
      left = cell[0] * (col + 1) + text_width
      color = (0, 180, 0) if hits[row, col] else (200, 200, 200)
      draw.rectangle((left, top, left + cell[0] - 1, top + cell[1] - 1), fill=color)
      sheet.paste(Image.fromarray(ranked_images[row, col]), (left + pad, top + pad))
  sheet = sheet.resize((sheet.width * scale, sheet.height * scale), Image.NEAREST)
  sheet.save(path)
