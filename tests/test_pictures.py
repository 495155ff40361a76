"""The pictures of `sbir_jax/pictures.py` draw, with the marks they promise."""
import numpy as np

from sbir_jax import pictures


def test_examples_picture(tmp_path):
  refs = np.full((2, 64, 64, 3), 255, np.uint8)
  ranked = np.zeros((2, 5, 64, 64, 3), np.uint8)
  hits = np.zeros((2, 5), bool)
  hits[0, 2] = True
  path = tmp_path / 'x.png'
  pictures.save_examples_picture(str(path), refs, ['add red circle', 'remove x'],
                                 ranked, hits)
  assert path.stat().st_size > 0


def test_results_grid_outlines_the_true_match_green():
  photos = [np.full((40, 40, 3), 255, np.uint8) for _ in range(7)]
  grid = pictures.results_grid(np.zeros((40, 40), np.uint8), photos,
                               [f'#{i + 1}' for i in range(7)], true_position=2,
                               cell=50, per_row=4)
  # Query + 7 photos on rows of 4: two rows; tile 3 (photo 2) is the match.
  assert grid.size == (4 * 58 + 8, 2 * 88 + 28)
  x, y = 8 + 3 * 58, 28
  assert grid.getpixel((x - 3, y + 25)) == (0, 128, 0)  # PIL's 'green'.


def test_attention_overlay_shows_sketch_and_mask():
  sketch = np.full((64, 64), 255, np.uint8)
  mask = np.arange(9, dtype=np.float32).reshape(3, 3) / 36.0
  picture = pictures.attention_overlay(sketch, mask, size=100)
  assert picture.size == (2 * 100 + 12, 100 + 32)
  # Left: the sketch as it is; right: the heat map over it (not white).
  assert picture.getpixel((50, 80)) == (255, 255, 255)
  assert picture.getpixel((112 + 50, 80)) != (255, 255, 255)
