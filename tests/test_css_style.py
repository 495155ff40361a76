"""CSS-style generator (determinism, text/scene consistency, hold-out) and its
TFDS builder (TIRG's CSS structure, bad files)."""
import pickle

import numpy as np
import pytest

from sbir_jax import safe_pickle
from sbir_jax.datasets import css_style
from sbir_jax.datasets import css_style_generator as gen

SMALL = dict(train=gen.SplitSizes(80, 20, 3), test=gen.SplitSizes(40, 8, 2))


@pytest.fixture(scope='module')
def data():
  return gen.generate(seed=3, **SMALL)


def test_same_seed_same_bytes_other_seed_differs(data):
  assert gen.to_npy_bytes(gen.generate(seed=3, **SMALL)) == gen.to_npy_bytes(data)
  assert gen.to_npy_bytes(gen.generate(seed=4, **SMALL)) != gen.to_npy_bytes(data)


def test_train_and_test_come_from_disjoint_streams(data):
  train = {gen.scene_key(s) for s in data['train']['objects_img']}
  test = [gen.scene_key(s) for s in data['test']['objects_img']]
  # Random 3-5 object scenes rarely coincide; identical streams would.
  assert sum(k in train for k in test) < len(test) // 10


def test_structure_is_tirg_css(data):
  for split in ('train', 'test'):
    s = data[split]
    assert set(s) == {'objects_img', 'labels', 'mods'}
    for objects in s['objects_img']:
      assert gen.MIN_OBJECTS <= len(objects) <= gen.MAX_OBJECTS
      for o in objects:
        assert set(o) == {'shape', 'color', 'size', 'pos'}
        assert o['shape'] in gen.SHAPES and o['color'] in gen.COLORS
        assert o['size'] in gen.SIZES and all(0 <= p <= 1 for p in o['pos'])
      assert len({gen.cell_of(o['pos']) for o in objects}) == len(objects)
    for mod in s['mods']:
      assert set(mod) == {'from', 'to', 'to_str'} and len(mod['from']) == len(mod['to'])


def test_applying_each_text_to_its_source_gives_its_target(data):
  checked = 0
  for split in ('train', 'test'):
    s = data[split]
    for mod in s['mods']:
      parsed = gen.parse_text(mod['to_str'])
      for f, t in zip(mod['from'], mod['to']):
        result = gen.apply_mod(parsed, s['objects_img'][f])
        assert result is not None, mod['to_str']
        assert gen.scene_key(result) == gen.scene_key(s['objects_img'][t])
        assert s['labels'][t] == s['labels'][
            [gen.scene_key(x) for x in s['objects_img']].index(gen.scene_key(result))]
        checked += 1
  assert checked == 20 * 3 + 8 * 2
  kinds = {m['to_str'].split()[0] for m in data['train']['mods']}
  assert kinds == {'add', 'remove', 'make'}


def test_texts_round_trip_and_examples():
  mod = gen.parse_text('make middle-left small gray object large')
  assert mod.kind == 'change' and mod.new_dict() == {'size': 'large'}
  assert mod.referent_dict() == {'cell': 3, 'size': 'small', 'color': 'gray'}
  scene = [gen.make_object('circle', 'gray', 'small', 3),
           gen.make_object('triangle', 'red', 'large', 0),
           gen.make_object('rectangle', 'blue', 'small', 8)]
  after = gen.apply_mod(mod, scene)
  assert [o['size'] for o in after] == ['large', 'large', 'small']
  assert gen.apply_mod(gen.parse_text('remove red triangle'), scene) is None  # 3 min.
  added = gen.apply_mod(gen.parse_text('add small cyan circle to top-right'), scene)
  assert len(added) == 4 and gen.cell_of(added[1]['pos']) == 2
  assert gen.apply_mod(gen.parse_text('add small cyan circle to top-left'), scene) is None
  for text in ('add large red triangle to bottom-center', 'remove top-left object',
               'make blue rectangle circle', 'remove small gray circle'):
    assert gen.mod_to_text(gen.parse_text(text)) == text


@pytest.mark.parametrize('bad', ['', '   ', 'paint it black', 'add red to top-left',
                                 'remove shiny circle', 'make circle'])
def test_unreadable_texts_are_refused(bad):
  with pytest.raises(gen.CssStyleTextError):
    gen.parse_text(bad)


def test_holdout_combinations_stay_out_of_train_and_focus_test():
  held = [('circle', 'red'), ('triangle', 'blue')]
  data = gen.generate(seed=1, holdout_combinations=held,
                      train=gen.SplitSizes(60, 10, 2), test=gen.SplitSizes(200, 5, 2))
  for objects in data['train']['objects_img']:
    assert not any((o['shape'], o['color']) in held for o in objects)
  test = data['test']
  for mod in test['mods']:
    parsed = gen.parse_text(mod['to_str'])
    for f in mod['from']:
      assert gen.focus_combination(parsed, test['objects_img'][f]) in held
  with pytest.raises(ValueError, match='Held-out combination'):
    gen.generate(holdout_combinations=[('cube', 'red')], **SMALL)


def test_render_large_is_twice_small():
  small = gen.render([gen.make_object('rectangle', 'red', 'small', 4)])
  large = gen.render([gen.make_object('rectangle', 'red', 'large', 4)])
  assert small.shape == (64, 64, 3) and small.dtype == np.uint8
  count = lambda im: int(np.sum(np.any(im != 255, axis=-1)))
  assert count(small) == 8 * 8 and count(large) == 16 * 16


def test_builder_reads_generated_file(data, tmp_path):
  manual = tmp_path / 'manual'
  gen.write(data, str(manual))
  loaded = css_style.load(str(manual), str(tmp_path / 'tfds'))
  for split in ('train', 'test'):
    assert len(loaded[split]['images']) == len(data[split]['objects_img'])
    np.testing.assert_array_equal(loaded[split]['labels'], data[split]['labels'])
    np.testing.assert_array_equal(loaded[split]['images'][5],
                                  gen.render(data[split]['objects_img'][5]))
    assert [m['to_str'] for m in loaded[split]['mods']] == [
        m['to_str'] for m in data[split]['mods']]
    assert [list(m['to']) for m in loaded[split]['mods']] == [
        m['to'] for m in data[split]['mods']]


def test_tirg_style_file_with_bytes_and_no_labels_loads(tmp_path):
  """A Python-2 era file: bytes strings, list positions, no labels."""
  objects = [[{b'shape': b'circle', b'color': b'red', b'size': b'large',
               b'pos': [0.2, 0.5]}] * 3] * 4
  split = {b'objects_img': objects,
           b'mods': [{b'from': [0, 1], b'to': [2, 3], b'to_str': b'remove red circle'}]}
  array = np.empty((), dtype=object)
  array[()] = {b'train': split, b'test': split}
  path = tmp_path / 'css_toy_dataset_novel2_small.dup.npy'
  np.save(path, array, allow_pickle=True)
  data = css_style.read_npy(css_style.find_npy(tmp_path))
  assert data['train']['mods'][0]['to_str'] == 'remove red circle'
  assert data['test']['objects_img'][0][0]['shape'] == 'circle'


def test_mods_referencing_missing_images_get_a_clear_error(tmp_path):
  split = {'objects_img': [[]] * 3, 'mods': [{'from': [0], 'to': [7], 'to_str': 'x'}]}
  gen.write({'train': split, 'test': split}, str(tmp_path))
  with pytest.raises(css_style.CssStyleDataError, match=r'references images \[7\]'):
    css_style.read_npy(tmp_path / 'css_style.npy')


def test_empty_text_in_file_gets_a_clear_error(tmp_path):
  split = {'objects_img': [[]] * 3, 'mods': [{'from': [0], 'to': [1], 'to_str': ' '}]}
  gen.write({'train': split, 'test': split}, str(tmp_path))
  with pytest.raises(css_style.CssStyleDataError, match='empty modification text'):
    css_style.read_npy(tmp_path / 'css_style.npy')


def test_malicious_pickle_is_refused(tmp_path):
  class Evil:
    def __reduce__(self):
      return (print, ('pwned',))
  header = np.lib.format.header_data_from_array_1_0(np.empty((), dtype=object))
  path = tmp_path / 'css_style.npy'
  with open(path, 'wb') as f:
    np.lib.format.write_array_header_1_0(f, header)
    pickle.dump(Evil(), f)
  with open(path, 'rb') as f:  # np.save's header, then our pickle.
    assert f.read(6) == b'\x93NUMPY'
  with pytest.raises(safe_pickle.UnsafePickleError):
    css_style.read_npy(path)


def test_missing_or_ambiguous_file_is_named(tmp_path):
  with pytest.raises(css_style.CssStyleDataError, match='css_style_generator'):
    css_style.find_npy(tmp_path)
  with pytest.raises(FileNotFoundError, match='manual_dir'):
    css_style.load(str(tmp_path / 'nope'), str(tmp_path / 'tfds'))


def test_default_sizes_reuse_each_source_for_several_texts():
  """As in CSS: a reference image's other modified versions are in the gallery."""
  split = gen.generate(seed=0)['test']
  uses = {}
  for mod in split['mods']:
    for f in mod['from']:
      uses[f] = uses.get(f, 0) + 1
  assert sum(uses.values()) / len(uses) >= 4


def test_object_box_bounds_the_drawn_object():
  for shape in gen.SHAPES:
    for size in gen.SIZES:
      obj = gen.make_object(shape, 'red', size, cell=5)
      x, y, w, h = (v * gen.IMAGE_SIZE for v in gen.object_box(obj))
      drawn = np.argwhere(np.any(gen.render([obj]) != 255, axis=-1))  # (row, col)
      # Within the pixel rounding of the drawing, and tight.
      np.testing.assert_allclose([drawn[:, 0].min(), drawn[:, 0].max() + 1], [y, y + h], atol=1)
      np.testing.assert_allclose([drawn[:, 1].min(), drawn[:, 1].max() + 1], [x, x + w], atol=1)
