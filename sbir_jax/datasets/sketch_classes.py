"""TFDS builder for sketch classification: TU-Berlin and QuickDraw.

The data of sbir_jax's own Sketch-a-Net pre-training. Configs and the
layouts they read from the manual dir:

  tu_berlin   `{train,test}/<class>/<id>.png` (the 40-class subset in
              ../shared/data/tu_berlin_40), or the official release's
              `png/<class>/<id>.png` (1111x1111, no split: the last tenth of
              each class in file-name order is test). Without a manual dir
              the official zip is downloaded. Images wider than 256 pixels
              are stored at 256 (antialiased).
  quickdraw   `quickdraw-{train,test}/<class>.npy` (uint8 (N, 784) bitmaps,
              ../shared/data/quickdraw_14), or a folder of Google's
              `numpy_bitmap/<class>.npy` files, of which the first 1,000
              drawings per class are train and the next 100 test. Google's
              files are large, so nothing is downloaded: fetch the classes
              you want into one folder.

Every example is a grey image with dark strokes on white (QuickDraw is
inverted), its class name and a unique id.
"""
import os
from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

TU_BERLIN_URL = 'https://cybertron.cg.tu-berlin.de/eitz/projects/classifysketch/sketches_png.zip'
QUICKDRAW_URL = 'https://storage.googleapis.com/quickdraw_dataset/full/numpy_bitmap/<class>.npy'
MAX_SIDE = 256
QUICKDRAW_SIDE = 28
QUICKDRAW_FULL_TRAIN, QUICKDRAW_FULL_TEST = 1000, 100
TEST_FRACTION = 0.1  # Of each class, for the official TU-Berlin release.


class SketchClassesError(ValueError):
  """The sketch files are missing or not in a known layout."""


def _grey(path: epath.Path) -> np.ndarray:
  """A PNG as (H, W, 1) uint8 with transparency flattened onto white."""
  with Image.open(path) as im:
    im = im.convert('RGBA')
    white = Image.new('RGBA', im.size, (255, 255, 255, 255))
    grey = Image.alpha_composite(white, im).convert('L')
    if max(grey.size) > MAX_SIDE:
      grey = grey.resize((MAX_SIDE, MAX_SIDE), Image.LANCZOS)
    return np.asarray(grey)[..., None]


def _class_dirs(folder: epath.Path) -> list[epath.Path]:
  return sorted((d for d in folder.iterdir() if d.is_dir()), key=lambda d: d.name)


def _tu_berlin_files(root: epath.Path, split: str) -> list[tuple[str, epath.Path]]:
  """(class, png path) pairs of `split` in either TU-Berlin layout."""
  if (root / 'train').is_dir():
    folder = root / split
    if not folder.is_dir():
      raise SketchClassesError(f'{root} has train/ but no {split}/.')
    return [(d.name, f) for d in _class_dirs(folder)
            for f in sorted(d.glob('*.png'))]
  folder = root / 'png' if (root / 'png').is_dir() else root
  files = []
  for d in _class_dirs(folder):
    pngs = sorted(d.glob('*.png'))
    num_test = max(1, int(round(len(pngs) * TEST_FRACTION)))
    files += [(d.name, f) for f in
              (pngs[-num_test:] if split == 'test' else pngs[:-num_test])]
  return files


def load_bitmaps(path: epath.Path) -> np.ndarray:
  """A QuickDraw .npy as (N, 28, 28, 1) uint8, dark strokes on white."""
  try:
    with path.open('rb') as f:
      data = np.load(f, allow_pickle=False)
  except (OSError, ValueError) as e:
    raise SketchClassesError(f'{path} is not a QuickDraw .npy bitmap file ({e}).') from e
  if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != QUICKDRAW_SIDE ** 2:
    raise SketchClassesError(
        f'{path} holds {data.dtype} {data.shape}; QuickDraw bitmaps are uint8 '
        f'(N, {QUICKDRAW_SIDE ** 2}).')
  return (255 - data).reshape(-1, QUICKDRAW_SIDE, QUICKDRAW_SIDE, 1)


def _quickdraw_arrays(root: epath.Path, split: str) -> Iterator[tuple[str, np.ndarray]]:
  """(class, bitmaps) of `split` in either QuickDraw layout."""
  folder = root / f'quickdraw-{split}'
  if folder.is_dir():
    for path in sorted(folder.glob('*.npy')):
      yield path.stem, load_bitmaps(path)
    return
  first, last = ((0, QUICKDRAW_FULL_TRAIN) if split == 'train' else
                 (QUICKDRAW_FULL_TRAIN, QUICKDRAW_FULL_TRAIN + QUICKDRAW_FULL_TEST))
  for path in sorted(root.glob('*.npy')):
    yield path.stem, load_bitmaps(path)[first:last]


class SketchClasses(tfds.core.GeneratorBasedBuilder):
  """Class-labelled sketches for pre-training Sketch-a-Net."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name='tu_berlin', description='TU-Berlin sketches'),
      tfds.core.BuilderConfig(name='quickdraw', description='QuickDraw bitmaps'),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
  tu_berlin: a folder with train/<class>/*.png and test/<class>/*.png, or the
  unzipped official release (png/<class>/*.png). Optional: without it
  {TU_BERLIN_URL} is downloaded.
  quickdraw: a folder with quickdraw-train/<class>.npy and
  quickdraw-test/<class>.npy, or with Google's {QUICKDRAW_URL} files.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(None, None, 1)),
            'label': tfds.features.Text(),
            'id': tfds.features.Text(),
        }),
        homepage=('https://cybertron.cg.tu-berlin.de/eitz/projects/classifysketch/'
                  if self.builder_config.name == 'tu_berlin'
                  else 'https://quickdraw.withgoogle.com/data'),
    )

  def _root(self, dl_manager) -> epath.Path:
    name = self.builder_config.name
    try:
      root = dl_manager.manual_dir
    except AssertionError:  # No manual dir given.
      if name == 'quickdraw':
        raise SketchClassesError(
            'QuickDraw needs a manual dir: put quickdraw-{train,test}/<class>.npy '
            f'or Google\'s {QUICKDRAW_URL} files in one folder and set '
            'config.data.quickdraw_dir to it.') from None
      return dl_manager.download_and_extract(TU_BERLIN_URL)
    if not root.is_dir():
      raise SketchClassesError(f'{name} folder {root} does not exist.')
    return root

  def _split_generators(self, dl_manager):
    root = self._root(dl_manager)
    return {split: self._generate_examples(root, split) for split in ('train', 'test')}

  def _generate_examples(self, root: epath.Path, split: str):
    count = 0
    if self.builder_config.name == 'tu_berlin':
      for label, path in _tu_berlin_files(root, split):
        key = f'{split}/{label}/{path.stem}'
        count += 1
        yield key, {'image': _grey(path), 'label': label, 'id': key}
    else:
      for label, bitmaps in _quickdraw_arrays(root, split):
        for i, bitmap in enumerate(bitmaps):
          key = f'{split}/{label}/{i:06d}'
          count += 1
          yield key, {'image': bitmap, 'label': label, 'id': key}
    if not count:
      raise SketchClassesError(
          f'No {split} sketch found under {root} for {self.builder_config.name}. '
          f'Expected layouts: {os.linesep}{self.MANUAL_DOWNLOAD_INSTRUCTIONS}')
