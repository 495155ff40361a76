"""A second rendering of CSS-style scenes that stands in for CSS's 3D renders.

CSS (Vo et al., CVPR 2019) shows each scene twice: a flat 2D drawing of its
objects and a CLEVR-like 3D rendering (shaded solids on a ground plane).
The LBF paper's CSS table has both 3D-to-3D and 2D-to-3D queries (a flat
reference image, rendered targets). CSS's renders are not obtainable
offline, so this module draws a *CSS-style 3D* image of a scene with PIL:

- a ground plane in perspective below a horizon, the 3x3 grid of cells
  projected onto it (far rows higher, smaller and closer together);
- shaded solids: a rectangle is a cube (lit top, front face in the object's
  colour, darker side), a circle a sphere (radial shading with a highlight),
  a triangle a pyramid (lit and shaded faces);
- soft shadows cast away from the light (a blurred layer), and occlusion:
  objects are painted back to front, so near ones hide parts of far ones.

It is drawn at `SUPERSAMPLE` times the size and reduced (antialiasing), and
is a function of the objects and `seed` alone: `seed` jitters each object a
little within its cell and the light a little, as CLEVR's renders vary;
the builder passes the image index. Everything here is ours and named
CSS-style; it is not a CLEVR or CSS rendering.
"""
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from sbir_jax.datasets import css_style_generator as gen

SUPERSAMPLE = 4
HORIZON = 0.16  # Fraction of the height above the ground plane.
SKY = (232, 234, 238)
GROUND_FAR, GROUND_NEAR = (196, 194, 188), (160, 157, 150)
JITTER = 0.03  # Largest shift of an object within its cell (ground units).
# A camera looking steeply down: solids rise HEIGHT half-widths above their
# base and show a top face TOP_DEPTH deep, so far objects stay visible.
HEIGHT = 1.1
TOP_DEPTH = 0.9


def depth_scale(y: float) -> float:
  """Apparent size of an object at ground row y in [0, 1] (0 = far)."""
  return 0.62 + 0.5 * y


def project(y: float, x: float) -> tuple[float, float]:
  """Ground point (y, x) in [0, 1]^2 -> screen (row, column) in [0, 1]^2:
  the point where an object at that grid position stands."""
  return 0.30 + 0.62 * y, 0.5 + (x - 0.5) * 0.92 * depth_scale(y)


def half_width(obj: dict, y: float) -> float:
  """Half the object's screen width (fraction of the image) at row y."""
  return gen._half_width(obj) * 1.05 * depth_scale(y)  # pylint: disable=protected-access


def expected_centre(obj: dict) -> tuple[float, float]:
  """Screen (row, column) in [0, 1] of the middle of the solid as drawn
  without jitter: where its colour should lie."""
  y, x = float(obj['pos'][0]), float(obj['pos'][1])
  base, column = project(y, x)
  return base - HEIGHT * half_width(obj, y), column


def _shade(rgb: Sequence[int], factor: float) -> tuple[int, int, int]:
  """Darker (factor < 1) or towards white (factor > 1)."""
  c = np.asarray(rgb, np.float64)
  c = c * factor if factor <= 1 else c + (255 - c) * (factor - 1)
  return tuple(int(v) for v in np.clip(np.round(c), 0, 255))


def _background(w: int) -> Image.Image:
  image = Image.new('RGB', (w, w), SKY)
  draw = ImageDraw.Draw(image)
  top = int(HORIZON * w)
  for row in range(top, w):
    t = (row - top) / max(w - top - 1, 1)
    colour = tuple(int(round(a + (b - a) * t)) for a, b in zip(GROUND_FAR, GROUND_NEAR))
    draw.line([(0, row), (w, row)], fill=colour)
  return image


def _draw_cube(draw, cx, base, h, colour, light_x):
  top_y, depth = base - HEIGHT * h, TOP_DEPTH * h
  side = 1 if light_x < 0 else -1  # The face away from the light shows.
  skew = 0.25 * depth * side
  x_side = cx + side * h
  top = [(cx - h, top_y), (cx + h, top_y), (cx + h + skew, top_y - depth),
         (cx - h + skew, top_y - depth)]
  side_face = [(x_side, top_y), (x_side, base), (x_side + skew, base - depth),
               (x_side + skew, top_y - depth)]
  draw.polygon(side_face, fill=_shade(colour, 0.62))
  draw.polygon(top, fill=_shade(colour, 1.35))
  draw.rectangle([(cx - h, top_y), (cx + h, base)], fill=colour)


def _draw_sphere(draw, cx, base, h, colour, light_x):
  cy, steps = base - h, 12
  for i in range(steps):  # Concentric discs towards the highlight, darker edge.
    r = h * (1 - i / steps)
    shift = (i / steps) * 0.45 * h
    ox, oy = cx - light_x * shift, cy - shift
    draw.ellipse([ox - r, oy - r, ox + r, oy + r],
                 fill=_shade(colour, 0.7 + 0.6 * i / (steps - 1)))


def _draw_pyramid(draw, cx, base, h, colour, light_x):
  apex = (cx - 0.1 * h * light_x, base - (HEIGHT + TOP_DEPTH) * h)
  near = (cx, base + 0.15 * h)
  left, right = [(cx - h, base - 0.3 * h), near, apex], [near, (cx + h, base - 0.3 * h), apex]
  lit, dark = (left, right) if light_x > 0 else (right, left)
  draw.polygon(dark, fill=_shade(colour, 0.62))
  draw.polygon(lit, fill=colour)


_SOLIDS = {'rectangle': _draw_cube, 'circle': _draw_sphere, 'triangle': _draw_pyramid}


def render(objects: Sequence[dict], size: int = gen.IMAGE_SIZE, seed: int = 0) -> np.ndarray:
  """(size, size, 3) uint8: the CSS-style 3D rendering of a scene."""
  for obj in objects:
    if obj['shape'] not in _SOLIDS:
      raise ValueError(f'Unknown shape {obj["shape"]!r}.')
  rng = np.random.default_rng([int(seed), len(objects)])
  light_x = float(rng.uniform(0.5, 1.0)) * (1 if rng.random() < 0.5 else -1)
  w = size * SUPERSAMPLE
  image = _background(w)
  placed = []
  for obj in objects:
    dy, dx = rng.uniform(-JITTER, JITTER, size=2)
    y = float(np.clip(float(obj['pos'][0]) + dy, 0, 1))
    x = float(np.clip(float(obj['pos'][1]) + dx, 0, 1))
    placed.append((y, x, obj))
  placed.sort(key=lambda p: p[0])  # Far first: near objects occlude far ones.
  # Soft shadows: one blurred layer, cast away from the light.
  shadow = Image.new('L', (w, w), 0)
  shadow_draw = ImageDraw.Draw(shadow)
  for y, x, obj in placed:
    base, column = project(y, x)
    h = half_width(obj, y) * w
    cx, by = column * w - light_x * 0.9 * h, base * w - 0.15 * h
    shadow_draw.ellipse([cx - 1.3 * h, by - 0.45 * h, cx + 1.3 * h, by + 0.35 * h], fill=110)
  shadow = shadow.filter(ImageFilter.GaussianBlur(radius=0.08 * w))
  image = Image.composite(Image.new('RGB', (w, w), (60, 58, 55)), image, shadow)
  draw = ImageDraw.Draw(image)
  for y, x, obj in placed:
    base, column = project(y, x)
    h = half_width(obj, y) * w
    _SOLIDS[obj['shape']](draw, column * w, base * w, h, gen.COLOR_RGB[obj['color']], light_x)
  return np.asarray(image.resize((size, size), Image.LANCZOS), np.uint8)


def comparison_sheet(scenes: Sequence[Sequence[dict]], scale: int = 3) -> np.ndarray:
  """Each scene's 2D drawing above its 3D rendering, one scene a column."""
  columns = [np.concatenate([gen.render(s), render(s, seed=i)], axis=0)
             for i, s in enumerate(scenes)]
  sheet = np.concatenate(columns, axis=1)
  return np.kron(sheet, np.ones((scale, scale, 1), np.uint8))


def main() -> None:  # pragma: no cover (a convenience CLI)
  import argparse
  parser = argparse.ArgumentParser(description='2D drawings beside their CSS-style '
                                   '3D renderings, for the first scenes of a seed.')
  parser.add_argument('--out', required=True, help='PNG to write.')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--scenes', type=int, default=4)
  args = parser.parse_args()
  rng = np.random.default_rng(args.seed)
  scenes = [gen.random_scene(rng) for _ in range(args.scenes)]
  Image.fromarray(comparison_sheet(scenes)).save(args.out)
  print(args.out)


if __name__ == '__main__':  # pragma: no cover
  main()
