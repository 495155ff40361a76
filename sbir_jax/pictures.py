"""The pictures sbir_jax draws for people to look at, shared by the tasks.

FG-SBIR's `--mode=retrieve` draws the results grid (`results_grid`: the
query, its top K photos best first, the true match outlined) and the DSSA
attention mask over the sketch (`attention_overlay`, as the paper's Figures 4
and 5); the composed task's `write_outputs` draws `save_examples_picture` (a
few test queries: reference image, modification text, top results, hits in
green); the zero-shot task draws `category_results_sheet` (one unseen-class
query sketch per row with its top photos, wrong-class results outlined red,
as the ZS-SBIR paper's Fig. 3). Images the models read (rendered strokes, generated CSS scenes) are
data, made in `strokes.py` and `datasets/`, not here.
"""
from typing import Optional, Sequence

import numpy as np
from PIL import Image
from PIL import ImageDraw


def _jet(m_HxW: np.ndarray) -> np.ndarray:
  """[0, 1] -> RGB uint8 with the usual blue-cyan-yellow-red heat map."""
  channels = [np.clip(1.5 - np.abs(4.0 * m_HxW - c), 0.0, 1.0) for c in (3.0, 2.0, 1.0)]
  return (np.stack(channels, axis=-1) * 255).astype(np.uint8)


def attention_overlay(sketch_HxW: np.ndarray, mask_hxw: np.ndarray,
                      size: int = 256) -> Image.Image:
  """The sketch beside the sketch with its attention map (upsampled) over it.

  Colours span the mask's own min..max (as CAM pictures do); the caption
  gives that range and the uniform value 1/(h w), so a flat mask is seen as
  flat.
  """
  mask = np.asarray(mask_hxw, np.float32)
  low, high = float(mask.min()), float(mask.max())
  scaled = (mask - low) / max(high - low, 1e-12)
  heat = Image.fromarray(scaled).resize((size, size), Image.Resampling.BILINEAR)
  heat_rgb = _jet(np.clip(np.asarray(heat), 0.0, 1.0))
  sketch = np.asarray(Image.fromarray(sketch_HxW).convert('RGB').resize(
      (size, size), Image.Resampling.LANCZOS))
  blend = (0.55 * sketch + 0.45 * heat_rgb).astype(np.uint8)
  # Strokes stay readable: dark pixels of the sketch are kept dark.
  blend = np.where(sketch < 128, (0.5 * sketch).astype(np.uint8), blend)
  caption = 32
  canvas = Image.new('RGB', (2 * size + 12, size + caption), 'white')
  canvas.paste(Image.fromarray(sketch), (0, caption))
  canvas.paste(Image.fromarray(blend), (size + 12, caption))
  draw = ImageDraw.Draw(canvas)
  draw.text((4, 6), 'query (model input crop)', fill='black')
  h, w = mask.shape
  draw.text((size + 16, 4), f'attention {h}x{w}: {low:.3f} (blue) to '
            f'{high:.3f} (red)', fill='black')
  draw.text((size + 16, 17), f'(uniform would be {1 / (h * w):.3f})', fill='black')
  return canvas


def results_grid(query_HxW: np.ndarray, photos: Sequence[np.ndarray],
                 captions: Sequence[str], true_position: Optional[int] = None,
                 note: str = '', cell: int = 160, per_row: int = 6) -> Image.Image:
  """Query then the top-K photos (best first); the true match outlined green."""
  tiles = [query_HxW] + list(photos)
  labels = ['query'] + list(captions)
  pad, caption = 8, 30
  rows = -(-len(tiles) // per_row)
  width = per_row * (cell + pad) + pad
  height = rows * (cell + caption + pad) + pad + 20
  canvas = Image.new('RGB', (width, height), 'white')
  draw = ImageDraw.Draw(canvas)
  draw.text((pad, 4), note, fill='black')
  for i, (tile, label) in enumerate(zip(tiles, labels)):
    x = pad + (i % per_row) * (cell + pad)
    y = 20 + pad + (i // per_row) * (cell + caption + pad)
    image = Image.fromarray(np.asarray(tile)).convert('RGB').resize(
        (cell, cell), Image.Resampling.LANCZOS)
    canvas.paste(image, (x, y))
    is_true = true_position is not None and i == true_position + 1
    colour, border = (('green', 5) if is_true else
                      ('royalblue', 3) if i == 0 else ('grey', 1))
    draw.rectangle((x - border, y - border, x + cell + border - 1,
                    y + cell + border - 1), outline=colour, width=border)
    for line, text in enumerate(label.split('\n')[:2]):
      draw.text((x, y + cell + 3 + 12 * line), text, fill=colour if is_true else 'black')
  return canvas


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


def category_results_sheet(queries: Sequence[np.ndarray], row_labels: Sequence[str],
                           ranked: Sequence[Sequence[np.ndarray]],
                           correct: np.ndarray, title: str = '',
                           cell: int = 112) -> Image.Image:
  """One row per query: its label, the query, then its top photos best first;
  a photo of another class is outlined red, one of the query's class green.

  queries: Q images; ranked: Q lists of T images; correct (Q, T) bool.
  """
  q, t = np.asarray(correct).shape
  pad, label_width, head = 6, 90, 22
  width = label_width + (t + 1) * (cell + 2 * pad) + pad
  height = head + q * (cell + 2 * pad)
  sheet = Image.new('RGB', (width, height), 'white')
  draw = ImageDraw.Draw(sheet)
  draw.text((pad, 5), title or f'query, then top-{t} (red: wrong class)', fill='black')

  def paste(image: np.ndarray, col: int, row: int, outline: str, border: int) -> None:
    x = label_width + col * (cell + 2 * pad) + pad
    y = head + row * (cell + 2 * pad) + pad
    tile = Image.fromarray(np.asarray(image)).convert('RGB').resize(
        (cell, cell), Image.Resampling.LANCZOS)
    sheet.paste(tile, (x, y))
    draw.rectangle((x - border, y - border, x + cell + border - 1, y + cell + border - 1),
                   outline=outline, width=border)

  for row in range(q):
    draw.text((pad, head + row * (cell + 2 * pad) + cell // 2), row_labels[row],
              fill='black')
    paste(queries[row], 0, row, 'royalblue', 3)
    for col in range(t):
      ok = bool(correct[row, col])
      paste(ranked[row][col], col + 1, row, 'green' if ok else 'red', 2 if ok else 5)
  return sheet
