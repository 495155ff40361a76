"""Vector sketches -> raster images: (x, y, pen_state) points drawn as strokes.

QMUL-Chair-V2 stores each sketch as a float array (points, 3) of absolute
(x, y, pen_state) in 256-pixel coordinates, where pen_state 1 marks the last
point of a stroke (the pen lifts after it). We draw dark strokes on white, the
look of the QMUL V1 sketches the Sketch-a-Net trunk was designed for.
"""
import numpy as np
from PIL import Image, ImageDraw

SOURCE_SIZE = 256  # The coordinate frame of the QMUL stroke files.


def split_strokes(points_Px3: np.ndarray) -> list[np.ndarray]:
  """(P, 3) points -> list of (p, 2) xy arrays, one per pen-down stroke."""
  points_Px3 = np.asarray(points_Px3)
  if points_Px3.ndim != 2 or points_Px3.shape[1] != 3:
    raise ValueError(f'Strokes must be an array (points, 3) of (x, y, '
                     f'pen_state); got shape {points_Px3.shape}.')
  if not np.isfinite(points_Px3).all():
    raise ValueError('Strokes hold NaN or infinite coordinates.')
  ends = np.flatnonzero(points_Px3[:, 2] == 1) + 1  # Split after pen-up points.
  pieces = np.split(points_Px3[:, :2], ends)
  return [p for p in pieces if len(p)]


def render_strokes(points_Px3: np.ndarray, size: int = SOURCE_SIZE,
                   stroke_width: float = 2.0) -> np.ndarray:
  """Draws a stroke sketch as a uint8 (size, size) grey image: 0 ink, 255 paper.

  Args:
    points_Px3: (x, y, pen_state) rows in 256-pixel coordinates; pen_state 1
      ends a stroke, so no line joins its point to the next one.
    size: output side; coordinates are scaled by size / 256.
    stroke_width: line width in output pixels (at least 1).

  Returns:
    The rendered sketch (PIL lines, no antialiasing: deterministic).
  """
  width = max(1, int(round(stroke_width)))
  canvas = Image.new('L', (size, size), 255)
  draw = ImageDraw.Draw(canvas)
  scale = size / SOURCE_SIZE
  for xy in split_strokes(points_Px3):
    xy = [tuple(p) for p in (xy * scale).tolist()]
    if len(xy) == 1:  # A dot: a lone pen-down point still leaves ink.
      (x, y), r = xy[0], width / 2
      draw.ellipse((x - r, y - r, x + r, y + r), fill=0)
    else:
      # 'curve' rounds the joints so thick strokes have no notches.
      draw.line(xy, fill=0, width=width, joint='curve')
  return np.asarray(canvas, np.uint8)
