"""The CSS-style 3D rendering and the cross-domain settings (issue 14)."""
import os

import numpy as np
import pytest
from PIL import Image

from configs import css
from sbir_jax.datasets import css_style
from sbir_jax.datasets import css_style_3d
from sbir_jax.datasets import css_style_generator as gen
from sbir_jax.tasks.composed import task as composed_task

COLOUR_TOLERANCE = 30.0  # RGB distance to an object's own colour.


def _scenes_with_distinct_colours(count: int, seed: int = 0) -> list:
  rng = np.random.default_rng(seed)
  scenes = []
  while len(scenes) < count:
    objects = gen.random_scene(rng)
    if len({o['color'] for o in objects}) == len(objects):
      scenes.append(objects)
  return scenes


def _nearest_cell(obj: dict, centre_yx: np.ndarray) -> int:
  """The grid cell whose projected centre (for this object's size) is nearest."""
  expected = [css_style_3d.expected_centre(dict(obj, pos=gen.pos_of(c))) for c in range(9)]
  return int(np.argmin([np.hypot(*(centre_yx - np.asarray(e))) for e in expected]))


def test_rendering_is_deterministic_for_a_seed():
  objects = _scenes_with_distinct_colours(1)[0]
  a = css_style_3d.render(objects, seed=3)
  assert a.shape == (64, 64, 3) and a.dtype == np.uint8
  np.testing.assert_array_equal(a, css_style_3d.render(objects, seed=3))
  assert not np.array_equal(a, css_style_3d.render(objects, seed=4))  # Jitter, light.
  assert not np.array_equal(a, gen.render(objects))


def test_each_object_is_drawn_in_its_grid_cell():
  """In the rendered pixels, the centroid of each object's colour lies in the
  projected cell of its 2D grid position; few objects are hidden."""
  seen = hidden = 0
  for i, objects in enumerate(_scenes_with_distinct_colours(40)):
    image = css_style_3d.render(objects, seed=i).astype(np.float64)
    for obj in objects:
      distance = np.linalg.norm(image - np.asarray(gen.COLOR_RGB[obj['color']]), axis=-1)
      rows, cols = np.nonzero(distance < COLOUR_TOLERANCE)
      if len(rows) < 3:
        hidden += 1
        continue
      centre = np.array([rows.mean(), cols.mean()]) / 64.0
      assert _nearest_cell(obj, centre) == gen.cell_of(obj['pos']), (i, obj, centre)
      seen += 1
  assert hidden <= 0.1 * (seen + hidden), (seen, hidden)


def test_cell_centres_are_where_the_2d_drawing_puts_them_left_to_right_far_to_near():
  """Projection keeps the grid's order: columns left to right, far rows higher."""
  obj = gen.make_object('rectangle', 'red', 'large', 0)
  centres = np.array([css_style_3d.expected_centre(dict(obj, pos=gen.pos_of(c)))
                      for c in range(9)]).reshape(3, 3, 2)
  assert np.all(np.diff(centres[..., 1], axis=1) > 0)  # Columns.
  assert np.all(np.diff(centres[..., 0], axis=0) > 0)  # Rows: far ones higher.
  widths = centres[:, 2, 1] - centres[:, 0, 1]
  assert np.all(np.diff(widths) > 0)  # Perspective: far rows narrower.


def _write_tiny_css(directory: str) -> dict:
  sizes = gen.SplitSizes(num_base_scenes=20, num_mods=6, pairs_per_mod=2)
  data = gen.generate(seed=0, train=sizes, test=sizes)
  gen.write(data, directory)
  return data


def _config(manual_dir: str, tfds_dir: str, setting: str):
  config = css.get_config('lbf_small,tiny')
  config.data.update(manual_dir=manual_dir, tfds_data_dir=tfds_dir, setting=setting)
  return config


def test_two_d_to_three_d_queries_flat_references_against_renders(tmp_path):
  _write_tiny_css(str(tmp_path / 'css'))
  splits = {}
  for setting in ('auto', '2d_to_3d', '3d_to_3d'):
    splits[setting] = composed_task.load_splits(
        _config(str(tmp_path / 'css'), str(tmp_path / 'tfds'), setting))[0]['test']
  flat, cross, rendered = splits['auto'], splits['2d_to_3d'], splits['3d_to_3d']
  assert flat.reference_images is None and rendered.reference_images is None
  ids = flat.source_ids[:5]
  np.testing.assert_array_equal(cross.reference_inputs(ids), flat.inputs(ids))
  np.testing.assert_array_equal(cross.inputs(ids), rendered.inputs(ids))
  # Flat drawings on white; renders on the sky-and-ground background.
  assert np.all(flat.inputs(ids)[:, 0, 0] == 255)
  np.testing.assert_array_equal(rendered.inputs(ids)[:, 0, 0],
                                np.tile(css_style_3d.SKY, (len(ids), 1)))


def test_missing_release_renders_are_named(tmp_path):
  """A manual dir with an images/ folder is read as the release: each image
  needs its render there for a 3D setting; 2D-to-2D does not."""
  manual = str(tmp_path / 'css')
  _write_tiny_css(manual)
  os.makedirs(os.path.join(manual, 'images'))
  Image.new('RGB', (80, 80), (1, 2, 3)).save(os.path.join(manual, 'images',
                                                          'css_train_000000.png'))
  with pytest.raises(css_style.CssStyleDataError,
                     match=r'are missing from .*css_train_000001.png'):
    composed_task.load_splits(_config(manual, str(tmp_path / 'tfds'), '2d_to_3d'))
  splits = composed_task.load_splits(_config(manual, str(tmp_path / 'tfds'), '2d_to_2d'))[0]
  assert splits['train'].reference_images is None
