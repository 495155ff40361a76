"""A generator of CSS-style scenes and modifications (not the CSS dataset).

CSS (Vo et al., CVPR 2019) is a synthetic benchmark: scenes of 3-5 objects
(3 shapes x 8 colours x 2 sizes) on a 3x3 grid, with modification texts that
add, remove or change one object. Its files are not obtainable offline, so
this module writes scenes of the same kind, in the same file structure as
TIRG's `.npy` (a pickled dict with one entry per split):

  {'train': {'objects_img': [[{'shape', 'color', 'size', 'pos': (y, x)}, ...],
                              ...],                      # one list per image
             'labels': [int, ...],  # shared by identical scenes
             'mods': [{'from': [ids], 'to': [ids], 'to_str': text}, ...]},
   'test': {...}}

so a user's real CSS file and a generated CSS-style file load the same way
(`sbir_jax/datasets/css_style.py`). Everything here is called CSS-style: the
scenes, texts and renderings are ours, not the CSS release.

Texts (our grammar, in TIRG's spirit):
  add <size> <color> <shape> to <position>
  remove <referent>
  make <referent> <new color | new size | new shape>
where <referent> is the shortest of "<color> <shape>", "<size> <color>
<shape>", "<position> object" that singles out one object of every source
scene of that modification. `parse_text` reads a text back into a `Mod` and
`apply_mod` applies it to a scene: the tests check that applying each
modification's text to its source scene gives its target scene.

Train and test are generated from disjoint seeds (a SeedSequence spawned per
split). `holdout_combinations` (shape, colour) pairs never appear in train
scenes; in test every modification's focus object (the one added, removed, or
the result of a change) is one of them, as in CSS's "novel" split.
"""
import dataclasses
import hashlib
import io
import json
import os
from typing import Iterable, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ('rectangle', 'circle', 'triangle')
COLORS = ('gray', 'red', 'blue', 'green', 'brown', 'purple', 'cyan', 'yellow')
SIZES = ('large', 'small')
ROWS = ('top', 'middle', 'bottom')
COLUMNS = ('left', 'center', 'right')
POSITIONS = tuple(f'{r}-{c}' for r in ROWS for c in COLUMNS)  # Row-major 3x3.
# Cell centres in [0, 1] (y, x), as CSS's `pos`.
_CENTRES = (1 / 6, 1 / 2, 5 / 6)
IMAGE_SIZE = 64
MIN_OBJECTS, MAX_OBJECTS = 3, 5
# RGB of each colour name (our choice of values).
COLOR_RGB = {
    'gray': (87, 87, 87), 'red': (240, 40, 40), 'blue': (40, 75, 215),
    'green': (30, 200, 25), 'brown': (130, 75, 25), 'purple': (130, 40, 190),
    'cyan': (40, 205, 205), 'yellow': (250, 235, 50),
}
MOD_TYPES = ('add', 'remove', 'change')
REFERENT_KINDS = ('color_shape', 'size_color_shape', 'position')


class CssStyleTextError(ValueError):
  """A modification text that the CSS-style grammar cannot read or apply."""


# ----------------------------------------------------------------------------
# Scenes.
# ----------------------------------------------------------------------------

def cell_of(pos: Sequence[float]) -> int:
  """(y, x) in [0, 1] -> row-major index of the nearest 3x3 grid cell."""
  row = min(max(int(float(pos[0]) * 3), 0), 2)
  col = min(max(int(float(pos[1]) * 3), 0), 2)
  return 3 * row + col


def pos_of(cell: int) -> tuple[float, float]:
  return (_CENTRES[cell // 3], _CENTRES[cell % 3])


def make_object(shape: str, color: str, size: str, cell: int) -> dict:
  return {'shape': shape, 'color': color, 'size': size, 'pos': pos_of(cell)}


def scene_key(objects: Iterable[dict]) -> tuple:
  """Order-free identity of a scene: sorted (cell, shape, colour, size)."""
  return tuple(sorted((cell_of(o['pos']), o['shape'], o['color'], o['size'])
                      for o in objects))


def _combination_allowed(shape: str, color: str, excluded: frozenset) -> bool:
  return (shape, color) not in excluded


def random_scene(rng: np.random.Generator, excluded: frozenset = frozenset()
                 ) -> list[dict]:
  """3-5 objects in distinct cells, avoiding `excluded` (shape, colour) pairs."""
  count = int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
  cells = rng.choice(9, size=count, replace=False)
  objects = []
  for cell in sorted(int(c) for c in cells):
    while True:
      shape, color = SHAPES[rng.integers(3)], COLORS[rng.integers(8)]
      if _combination_allowed(shape, color, excluded):
        break
    objects.append(make_object(shape, color, SIZES[rng.integers(2)], cell))
  return objects


# ----------------------------------------------------------------------------
# Modifications: structure, text, parsing, application.
# ----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Mod:
  """One modification. `referent` constrains attributes of the object meant
  (keys among shape, color, size, cell); `new` is the added object (add) or
  the single changed attribute (change: {attribute: value})."""
  kind: str
  referent: tuple = ()  # Sorted (key, value) pairs.
  new: tuple = ()  # Sorted (key, value) pairs.

  def referent_dict(self) -> dict:
    return dict(self.referent)

  def new_dict(self) -> dict:
    return dict(self.new)


def _referent_text(referent: dict) -> str:
  if 'cell' in referent:
    return f'{POSITIONS[referent["cell"]]} object'
  words = [referent[k] for k in ('size', 'color', 'shape') if k in referent]
  return ' '.join(words)


def mod_to_text(mod: Mod) -> str:
  if mod.kind == 'add':
    n = mod.new_dict()
    return f'add {n["size"]} {n["color"]} {n["shape"]} to {POSITIONS[n["cell"]]}'
  if mod.kind == 'remove':
    return f'remove {_referent_text(mod.referent_dict())}'
  if mod.kind == 'change':
    (_, value), = mod.new
    return f'make {_referent_text(mod.referent_dict())} {value}'
  raise ValueError(f'Unknown modification kind {mod.kind!r}.')


_WORD_ATTRIBUTE = {**{w: 'shape' for w in SHAPES}, **{w: 'color' for w in COLORS},
                   **{w: 'size' for w in SIZES}}


def _parse_referent(words: list[str], text: str) -> dict:
  referent = {}
  for word in words:
    if word in POSITIONS:
      referent['cell'] = POSITIONS.index(word)
    elif word in _WORD_ATTRIBUTE:
      referent[_WORD_ATTRIBUTE[word]] = word
    elif word != 'object':
      raise CssStyleTextError(f'Unknown word {word!r} in {text!r}.')
  if not referent:
    raise CssStyleTextError(f'{text!r} does not say which object it means.')
  return referent


def parse_text(text: str) -> Mod:
  """A CSS-style modification text -> Mod (the inverse of `mod_to_text`)."""
  words = text.strip().lower().split()
  if not words:
    raise CssStyleTextError('Empty modification text.')
  verb = words[0]
  if verb == 'add':
    if len(words) != 6 or words[4] != 'to' or words[5] not in POSITIONS:
      raise CssStyleTextError(
          f'{text!r}: expected "add <size> <color> <shape> to <position>".')
    new = {'cell': POSITIONS.index(words[5])}
    for word in words[1:4]:
      if word not in _WORD_ATTRIBUTE:
        raise CssStyleTextError(f'Unknown word {word!r} in {text!r}.')
      new[_WORD_ATTRIBUTE[word]] = word
    if set(new) != {'cell', 'shape', 'color', 'size'}:
      raise CssStyleTextError(f'{text!r} must name one size, colour and shape.')
    return Mod('add', new=tuple(sorted(new.items())))
  if verb == 'remove':
    return Mod('remove', referent=tuple(sorted(_parse_referent(words[1:], text).items())))
  if verb == 'make':
    if len(words) < 3 or words[-1] not in _WORD_ATTRIBUTE:
      raise CssStyleTextError(f'{text!r}: expected "make <object> <new value>".')
    referent = _parse_referent(words[1:-1], text)
    return Mod('change', referent=tuple(sorted(referent.items())),
               new=((_WORD_ATTRIBUTE[words[-1]], words[-1]),))
  raise CssStyleTextError(f'{text!r}: a modification starts with add, remove or make.')


def _matches(obj: dict, referent: dict) -> bool:
  return all((cell_of(obj['pos']) if k == 'cell' else obj[k]) == v
             for k, v in referent.items())


def apply_mod(mod: Mod, objects: Sequence[dict]) -> Optional[list[dict]]:
  """The scene after `mod`, or None where it does not apply (no single
  object matches, the target cell is taken, the change changes nothing, or
  the object count would leave 3-5)."""
  if mod.kind == 'add':
    new = mod.new_dict()
    if len(objects) >= MAX_OBJECTS:
      return None
    if any(cell_of(o['pos']) == new['cell'] for o in objects):
      return None
    added = make_object(new['shape'], new['color'], new['size'], new['cell'])
    return sorted([dict(o) for o in objects] + [added],
                  key=lambda o: cell_of(o['pos']))
  referent = mod.referent_dict()
  matching = [i for i, o in enumerate(objects) if _matches(o, referent)]
  if len(matching) != 1:
    return None
  i = matching[0]
  objects = [dict(o) for o in objects]
  if mod.kind == 'remove':
    if len(objects) <= MIN_OBJECTS:
      return None
    return objects[:i] + objects[i + 1:]
  if mod.kind == 'change':
    (attribute, value), = mod.new
    if objects[i][attribute] == value:
      return None
    objects[i][attribute] = value
    return objects
  raise ValueError(f'Unknown modification kind {mod.kind!r}.')


def focus_combination(mod: Mod, source: Sequence[dict]) -> tuple[str, str]:
  """(shape, colour) of the object the mod adds, removes or produces."""
  if mod.kind == 'add':
    n = mod.new_dict()
    return n['shape'], n['color']
  obj = next(o for o in source if _matches(o, mod.referent_dict()))
  obj = dict(obj, **mod.new_dict()) if mod.kind == 'change' else obj
  return obj['shape'], obj['color']


def _random_mod(rng: np.random.Generator) -> Mod:
  kind = MOD_TYPES[rng.integers(3)]
  shape, color = SHAPES[rng.integers(3)], COLORS[rng.integers(8)]
  size, cell = SIZES[rng.integers(2)], int(rng.integers(9))
  if kind == 'add':
    return Mod('add', new=tuple(sorted(dict(shape=shape, color=color, size=size,
                                            cell=cell).items())))
  referent_kind = REFERENT_KINDS[rng.integers(3)]
  referent = {'color_shape': dict(color=color, shape=shape),
              'size_color_shape': dict(size=size, color=color, shape=shape),
              'position': dict(cell=cell)}[referent_kind]
  if kind == 'remove':
    return Mod('remove', referent=tuple(sorted(referent.items())))
  attribute = ('color', 'size', 'shape')[rng.integers(3)]
  values = {'color': COLORS, 'size': SIZES, 'shape': SHAPES}[attribute]
  value = values[rng.integers(len(values))]
  if referent.get(attribute) == value:  # "make red circle red" changes nothing.
    value = values[(values.index(value) + 1) % len(values)]
  return Mod('change', referent=tuple(sorted(referent.items())),
             new=((attribute, value),))


# ----------------------------------------------------------------------------
# Splits.
# ----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class SplitSizes:
  num_base_scenes: int  # Scenes generated up front; sources are drawn from them.
  num_mods: int  # Distinct modification texts.
  pairs_per_mod: int  # (source, target) pairs per text.


def generate_split(rng: np.random.Generator, sizes: SplitSizes,
                   excluded: frozenset = frozenset(),
                   focus_in: Optional[frozenset] = None) -> dict:
  """One split in TIRG's CSS structure. `excluded` (shape, colour) pairs never
  appear; if `focus_in` is given, every mod's focus object is one of them."""
  images = [random_scene(rng, excluded) for _ in range(sizes.num_base_scenes)]
  mods = []
  seen_texts = set()
  attempts = 0
  while len(mods) < sizes.num_mods:
    attempts += 1
    if attempts > 200 * sizes.num_mods:
      raise RuntimeError(
          f'Could only make {len(mods)} of {sizes.num_mods} CSS-style mods; use '
          'more base scenes or fewer pairs per mod.')
    mod = _random_mod(rng)
    text = mod_to_text(mod)
    if text in seen_texts:
      continue
    pairs = []
    for source_id in rng.permutation(sizes.num_base_scenes):
      source = images[source_id]
      target = apply_mod(mod, source)
      if target is None:
        continue
      if any((o['shape'], o['color']) in excluded for o in target):
        continue
      if focus_in is not None and focus_combination(mod, source) not in focus_in:
        continue
      pairs.append((int(source_id), target))
      if len(pairs) == sizes.pairs_per_mod:
        break
    if len(pairs) < sizes.pairs_per_mod:
      continue  # Too rare a precondition among the base scenes: draw another.
    seen_texts.add(text)
    entry = {'from': [], 'to': [], 'to_str': text}
    for source_id, target in pairs:
      entry['from'].append(source_id)
      entry['to'].append(len(images))
      images.append(target)
    mods.append(entry)
  # Identical scenes share a label (TIRG compares str(label) captions).
  key_to_label: dict = {}
  labels = [key_to_label.setdefault(scene_key(s), len(key_to_label)) for s in images]
  return {'objects_img': images, 'labels': labels, 'mods': mods}


# Each base scene is the source of ~num_mods * pairs_per_mod / num_base_scenes
# texts (here ~10 and ~6). Keep that well above 1: a source used once has its
# target as its only near-duplicate, and the image alone then finds it.
DEFAULT_TRAIN = SplitSizes(num_base_scenes=500, num_mods=600, pairs_per_mod=8)
DEFAULT_TEST = SplitSizes(num_base_scenes=150, num_mods=150, pairs_per_mod=6)


def generate(seed: int = 0, train: SplitSizes = DEFAULT_TRAIN,
             test: SplitSizes = DEFAULT_TEST,
             holdout_combinations: Sequence[tuple[str, str]] = ()) -> dict:
  """{'train': split, 'test': split}; the splits use disjoint random streams."""
  for shape, color in holdout_combinations:
    if shape not in SHAPES or color not in COLORS:
      raise ValueError(f'Held-out combination ({shape!r}, {color!r}): shape must '
                       f'be one of {SHAPES}, colour one of {COLORS}.')
  held_out = frozenset(tuple(c) for c in holdout_combinations)
  train_seq, test_seq = np.random.SeedSequence(seed).spawn(2)
  return {
      'train': generate_split(np.random.default_rng(train_seq), train, held_out),
      'test': generate_split(np.random.default_rng(test_seq), test, frozenset(),
                             held_out or None),
  }


# ----------------------------------------------------------------------------
# Rendering and files.
# ----------------------------------------------------------------------------

def _half_width(obj: dict) -> float:
  """Half the side of an object's square, as a fraction of the image."""
  return 1 / 8 if obj['size'] == 'large' else 1 / 16


def object_box(obj: dict) -> tuple[float, float, float, float]:
  """The drawn object's normalised box [x, y, w, h] (top-left corner, size)."""
  half = _half_width(obj)
  y, x = float(obj['pos'][0]), float(obj['pos'][1])
  return (x - half, y - half, 2 * half, 2 * half)


def render(objects: Sequence[dict], size: int = IMAGE_SIZE) -> np.ndarray:
  """(size, size, 3) uint8: white background, a large object twice the width
  of a small one (8 vs 4 px half-width at 64x64), drawn at its `pos`."""
  image = Image.new('RGB', (size, size), (255, 255, 255))
  draw = ImageDraw.Draw(image)
  for obj in objects:
    half = size * _half_width(obj)
    y, x = float(obj['pos'][0]) * size, float(obj['pos'][1]) * size
    color = COLOR_RGB[obj['color']]
    box = (x - half, y - half, x + half - 1, y + half - 1)
    if obj['shape'] == 'rectangle':
      draw.rectangle(box, fill=color)
    elif obj['shape'] == 'circle':
      draw.ellipse(box, fill=color)
    elif obj['shape'] == 'triangle':
      draw.polygon([(x, y - half), (x - half, y + half - 1), (x + half - 1, y + half - 1)],
                   fill=color)
    else:
      raise ValueError(f'Unknown shape {obj["shape"]!r}.')
  return np.asarray(image, np.uint8)


def to_npy_bytes(data: dict) -> bytes:
  """The dict as a 0-d object `.npy`, as TIRG's CSS file (np.load(...).item())."""
  buffer = io.BytesIO()
  array = np.empty((), dtype=object)
  array[()] = data
  np.save(buffer, array, allow_pickle=True)
  return buffer.getvalue()


def fingerprint(data: dict) -> str:
  return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def write(data: dict, directory: str, name: str = 'css_style.npy') -> str:
  """Writes `<directory>/<name>` atomically and returns its path."""
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, name)
  tmp = path + '.tmp'
  with open(tmp, 'wb') as f:
    f.write(to_npy_bytes(data))
  os.replace(tmp, path)
  return path


def main() -> None:  # pragma: no cover (a convenience CLI)
  import argparse
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', required=True, help='Folder for css_style.npy.')
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()
  print(write(generate(args.seed), args.out))


if __name__ == '__main__':  # pragma: no cover
  main()
