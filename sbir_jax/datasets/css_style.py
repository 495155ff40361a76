"""TFDS builder for CSS-style composed-query data in TIRG's CSS file structure.

Reads one `.npy` in a manual dir: a pickled dict `{split: {'objects_img',
'mods', optional 'labels'}}` (see `css_style_generator.py`), whether it was
written by our CSS-style generator or is a user's own copy of TIRG's CSS file
(`css_toy_dataset_novel2_small.dup.npy`). The pickle is read with a
restricted unpickler (plain data and numpy arrays only), never `np.load(...,
allow_pickle=True)`.

Two builder configs:
  images  one example per image: `image` (the 2D drawing, 64x64 RGB),
          `image_3d` (its 3D rendering), `render` (where that came from),
          `image_id`, `label` (shared by identical scenes; TIRG's caption is
          str(label)), and the scene's `objects` as JSON text.
  mods    one example per modification: `text`, and the `from` / `to` image
          ids it pairs (one text applies to many pairs).
The 2D image is drawn from the objects (`css_style_generator.render`, as
TIRG's `generate_2d_image`). The 3D one is the release's render
`images/css_<split>_<id:06d>.png` resized to 64x64 where the manual dir has
an `images/` folder (`render` 'release'; 'missing' where that folder lacks
the file), else our CSS-style 3D rendering (`css_style_3d.render`, seeded
by the image id; `render` 'css_style'). `load` returns both; the composed
task's `data.setting` picks 2D-to-2D, 3D-to-3D or 2D-to-3D.
"""
import functools
import hashlib
import json
import os
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from sbir_jax import safe_pickle
from sbir_jax.datasets import preparation
from sbir_jax.datasets import css_style_3d
from sbir_jax.datasets import css_style_generator as gen

SPLITS = ('train', 'test')
PREFERRED_FILE = 'css_style.npy'
RENDER_SOURCES = ('release', 'css_style', 'missing')


class CssStyleDataError(ValueError):
  """The CSS-style file is missing or malformed."""


def _text(value: Any) -> str:
  return value.decode('latin1') if isinstance(value, bytes) else str(value)


def _plain(value: Any) -> Any:
  """Python-2 pickles give bytes keys and strings: make them str."""
  if isinstance(value, dict):
    return {_text(k): _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return type(value)(_plain(v) for v in value)
  if isinstance(value, bytes):
    return _text(value)
  if isinstance(value, np.ndarray) and value.dtype == object:
    return [_plain(v) for v in value.tolist()]
  return value


def read_npy(path: epath.PathLike) -> dict:
  """The dict of a CSS-structure `.npy`, validated; clear errors otherwise."""
  path = epath.Path(path)
  try:
    with path.open('rb') as f:
      version = np.lib.format.read_magic(f)
      if version == (1, 0):
        np.lib.format.read_array_header_1_0(f)
      elif version == (2, 0):
        np.lib.format.read_array_header_2_0(f)
      else:
        raise ValueError(f'unsupported .npy format version {version}')
      payload = f.read()
    array = safe_pickle.load_plain_pickle(payload)
  except safe_pickle.UnsafePickleError:
    raise
  except Exception as e:
    raise CssStyleDataError(f'{path} is not a readable .npy of a pickled dict '
                            f'({type(e).__name__}: {e}).') from e
  data = _plain(array.item() if isinstance(array, np.ndarray) else array)
  if not isinstance(data, dict):
    raise CssStyleDataError(f'{path} holds a {type(data).__name__}, not the dict '
                            "{'train': ..., 'test': ...} of TIRG's CSS file.")
  for split in SPLITS:
    validate_split(data.get(split), f'{path}[{split!r}]')
  return data


def validate_split(split: Any, where: str) -> None:
  if not isinstance(split, dict) or 'objects_img' not in split or 'mods' not in split:
    raise CssStyleDataError(f"{where} must be a dict with 'objects_img' and 'mods'.")
  num_images = len(split['objects_img'])
  if 'labels' in split and len(split['labels']) != num_images:
    raise CssStyleDataError(f"{where}: {len(split['labels'])} labels for "
                            f'{num_images} images.')
  for i, mod in enumerate(split['mods']):
    if not all(k in mod for k in ('from', 'to', 'to_str')):
      raise CssStyleDataError(f"{where} mod {i} lacks 'from', 'to' or 'to_str'.")
    if len(mod['from']) != len(mod['to']):
      raise CssStyleDataError(f"{where} mod {i}: {len(mod['from'])} sources but "
                              f"{len(mod['to'])} targets.")
    if not str(mod['to_str']).strip():
      raise CssStyleDataError(f'{where} mod {i} has an empty modification text.')
    ids = list(mod['from']) + list(mod['to'])
    bad = [int(j) for j in ids if not 0 <= int(j) < num_images]
    if bad:
      raise CssStyleDataError(
          f'{where} mod {i} ({mod["to_str"]!r}) references images {bad[:5]} but '
          f'the split has {num_images} images (ids 0..{num_images - 1}); the '
          'mods and objects_img come from different files?')


def find_npy(manual_dir: epath.PathLike) -> epath.Path:
  """`css_style.npy`, else the only `.npy` in the manual dir."""
  root = epath.Path(manual_dir)
  if (root / PREFERRED_FILE).exists():
    return root / PREFERRED_FILE
  candidates = sorted(root.glob('*.npy')) if root.exists() else []
  if len(candidates) != 1:
    raise CssStyleDataError(
        f'{root} must hold {PREFERRED_FILE} (or exactly one .npy in TIRG\'s CSS '
        f'structure); found {[c.name for c in candidates]}. Generate one with '
        '`python -m sbir_jax.datasets.css_style_generator --out <dir>`, or leave '
        'config.data.manual_dir empty to generate it automatically.')
  return candidates[0]


def release_render_path(root: epath.Path, split: str, index: int) -> epath.Path:
  return root / 'images' / f'css_{split}_{index:06d}.png'


def images_for(root: epath.Path, split: str, index: int, objects: list
               ) -> tuple[np.ndarray, np.ndarray, str]:
  """(2D drawing, 3D rendering, where the 3D one came from) of one image."""
  flat = gen.render(objects)
  if not (root / 'images').exists():
    return flat, css_style_3d.render(objects, seed=index), 'css_style'
  png = release_render_path(root, split, index)
  if not png.exists():
    return flat, np.zeros_like(flat), 'missing'
  with png.open('rb') as f:
    image = Image.open(f).convert('RGB').resize((gen.IMAGE_SIZE, gen.IMAGE_SIZE),
                                                Image.BILINEAR)
  return flat, np.asarray(image, np.uint8), 'release'


def _json_objects(objects: list) -> str:
  return json.dumps([{k: (list(map(float, v)) if k == 'pos' else _text(v))
                      for k, v in o.items()} for o in objects])


class CssStyle(tfds.core.GeneratorBasedBuilder):
  """CSS-style scenes and modification texts (TIRG's CSS file structure)."""

  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.',
                   '1.1.0': 'The 2D drawing and the 3D rendering of every image.'}
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name='images', description='One example per image.'),
      tfds.core.BuilderConfig(name='mods', description='One example per text.'),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Put `css_style.npy` (from `python -m sbir_jax.datasets.css_style_generator
  --out <dir>`) or TIRG's CSS `.npy` (with optional `images/`) in the manual dir.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    if self.builder_config.name == 'images':
      features = {
          'image': tfds.features.Image(shape=(gen.IMAGE_SIZE, gen.IMAGE_SIZE, 3)),
          'image_3d': tfds.features.Image(shape=(gen.IMAGE_SIZE, gen.IMAGE_SIZE, 3)),
          'render': tfds.features.Text(),
          'image_id': np.int32,
          'label': np.int32,
          'objects': tfds.features.Text(),
      }
    else:
      features = {
          'mod_id': np.int32,
          'text': tfds.features.Text(),
          'from': tfds.features.Sequence(np.int32),
          'to': tfds.features.Sequence(np.int32),
      }
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(features), supervised_keys=None,
        homepage='https://github.com/google/tirg')

  def _split_generators(self, dl_manager):
    root = dl_manager.manual_dir
    data = read_npy(find_npy(root))
    return {split: self._generate_examples(root, split, data[split])
            for split in SPLITS}

  def _generate_examples(self, root, split: str, data: dict
                         ) -> Iterator[tuple[int, dict]]:
    if self.builder_config.name == 'mods':
      for i, mod in enumerate(data['mods']):
        yield i, {'mod_id': i, 'text': str(mod['to_str']),
                  'from': np.asarray(mod['from'], np.int32),
                  'to': np.asarray(mod['to'], np.int32)}
      return
    labels = data.get('labels')
    for i, objects in enumerate(data['objects_img']):
      flat, rendered, source = images_for(root, split, i, objects)
      yield i, {'image': flat, 'image_3d': rendered, 'render': source, 'image_id': i,
                'label': int(labels[i]) if labels is not None else i,
                'objects': _json_objects(objects)}


def file_digest(path: epath.PathLike) -> str:
  """Short content hash: prepared TFDS data is cached per file content."""
  digest = hashlib.sha256()
  with epath.Path(path).open('rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      digest.update(chunk)
  return digest.hexdigest()[:12]


def load(manual_dir: str, tfds_data_dir: str) -> dict[str, dict[str, Any]]:
  """Prepares both configs (cached per file content) and returns per split
  {'images' (N,64,64,3) uint8 2D drawings, 'images_3d' (N,64,64,3) their 3D
  renderings, 'renders' (N,) str (RENDER_SOURCES), 'labels' (N,),
  'objects' [json], 'mods' [...]}."""
  if not os.path.isdir(manual_dir):
    raise FileNotFoundError(
        f'CSS-style data dir {manual_dir!r} does not exist. Set '
        '--config.data.manual_dir to a folder holding css_style.npy (or TIRG\'s '
        'CSS .npy), or to "" to generate CSS-style data automatically.')
  data_dir = os.path.join(tfds_data_dir, f'css_style_{file_digest(find_npy(manual_dir))}')
  out = {}
  builders = {name: preparation.prepare(
      functools.partial(CssStyle, config=name, data_dir=data_dir), manual_dir,
      'Set --config.data.manual_dir to a folder holding css_style.npy.')
      for name in ('images', 'mods')}
  for split in SPLITS:
    images = tfds.as_numpy(builders['images'].as_dataset(split=split, batch_size=-1))
    order = np.argsort(images['image_id'])
    mods = sorted(tfds.as_numpy(builders['mods'].as_dataset(split=split)),
                  key=lambda m: int(m['mod_id']))
    out[split] = {
        'images': images['image'][order],
        'images_3d': images['image_3d'][order],
        'renders': np.array([r.decode() for r in images['render'][order]]),
        'labels': images['label'][order],
        'objects': [o.decode() for o in images['objects'][order]],
        'mods': [{'from': np.asarray(m['from']), 'to': np.asarray(m['to']),
                  'to_str': m['text'].decode()} for m in mods],
    }
  return out
