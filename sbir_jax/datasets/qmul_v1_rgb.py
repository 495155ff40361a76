"""TFDS builder for Shoe V1 with its raw RGB photos (not the edge maps).

The same 419 shoes as QMUL V1 (train ids 1..304, test 305..419), from the
public fork `lyd911/Deep_SBIR_tf`, `data/shoes/`:
- `<split>/images/<id>.jpg`: 256x256 RGB photos;
- `<split>/sketches/<id>.png`: 256x256 RGBA sketches (composited on white,
  stored grey);
- `annotation/shoes_annotation.json`: the V1 annotation (the same file as in
  qmul_v1): per split the ordered `images` / `sketches` file names, and per
  sketch its human [more similar, less similar] photo index pairs.

Examples mirror qmul_v1's (`sketch`, `photo`, `instance_id`, `triplets`,
sketch i matching photo i) with a 3-channel photo, so the input pipeline reads
both the same way. Files come from a manual dir `<manual_dir>/shoes/...` (e.g.
../shared/data/qmul_v1_rgb) or are downloaded (the annotation first, as it
lists the image files).
"""
import io
import json
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

_REPO_URL = ('https://raw.githubusercontent.com/lyd911/Deep_SBIR_tf/'
             'c157a49/data')
ANNOTATION = 'annotation/shoes_annotation.json'
IMAGE_SIZE = 256
SPLITS = ('train', 'test')


class QmulV1RgbError(ValueError):
  """A Shoe V1 RGB file is missing or malformed."""


def _check_annotation(annotation: Any, source: str) -> None:
  for split in SPLITS:
    entry = annotation.get(split) if isinstance(annotation, dict) else None
    if not isinstance(entry, dict) or not all(
        isinstance(entry.get(k), list) for k in ('images', 'sketches', 'triplets')):
      raise QmulV1RgbError(f'{source}: "{split}" lacks the lists images, '
                           'sketches, triplets of the Shoe V1 annotation.')
    lengths = {k: len(entry[k]) for k in ('images', 'sketches', 'triplets')}
    if len(set(lengths.values())) != 1:
      raise QmulV1RgbError(f'{source}: "{split}" lists differ in length '
                           f'{lengths}; sketch i must match image i.')


def split_files(annotation: dict, split: str) -> dict[str, str]:
  """'image/<i>' and 'sketch/<i>' -> relative path, for item i of the split."""
  entry = annotation[split]
  files = {f'image/{i}': f'{split}/images/{n}' for i, n in enumerate(entry['images'])}
  files.update({f'sketch/{i}': f'{split}/sketches/{n}'
                for i, n in enumerate(entry['sketches'])})
  return files


def load_image(path: epath.Path, mode: str) -> np.ndarray:
  """A 256x256 image file -> uint8 array in `mode` ('RGB' or 'L').

  Transparent pixels become white: the sketches are RGBA PNGs.
  """
  try:
    with Image.open(io.BytesIO(path.read_bytes())) as image:
      image.load()
      if image.size != (IMAGE_SIZE, IMAGE_SIZE):
        raise QmulV1RgbError(f'{path} is {image.size[0]}x{image.size[1]}, '
                             f'expected {IMAGE_SIZE}x{IMAGE_SIZE}.')
      if image.mode in ('RGBA', 'LA', 'P'):
        paper = Image.new('RGBA', image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(paper, image.convert('RGBA'))
      return np.asarray(image.convert(mode), np.uint8)
  except OSError as e:
    raise QmulV1RgbError(f'{path} is not a readable image ({e}); download it '
                         'again from the Shoe V1 RGB release.') from e


class QmulV1Rgb(tfds.core.GeneratorBasedBuilder):
  """Shoe V1: grey sketches and RGB photos, with triplet annotations."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name='shoes', description='Shoe V1 RGB')]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Optional. Put the files of lyd911/Deep_SBIR_tf `data/shoes/` in
  `<manual_dir>/shoes/`: `train/images/1.jpg`, `train/sketches/1.png`, ...,
  `annotation/shoes_annotation.json`. Without a manual dir they are downloaded.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'sketch': tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 1)),
            'photo': tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 3)),
            'instance_id': np.int32,
            # [more similar, less similar] photo indices within the split.
            'triplets': tfds.features.Tensor(shape=(None, 2), dtype=np.int32),
        }),
        supervised_keys=None,
        homepage='http://sketchx.eecs.qmul.ac.uk/downloads/',
    )

  def _locate_files(self, dl_manager) -> tuple[dict, dict[str, epath.Path]]:
    """The annotation and '<split>/<image|sketch>/<i>' -> local path."""
    name = self.builder_config.name
    try:
      root = dl_manager.manual_dir / name
    except AssertionError:  # No manual dir given: fetch from the release.
      base = f'{_REPO_URL}/{name}'
      path = epath.Path(dl_manager.download(f'{base}/{ANNOTATION}'))
      annotation = json.loads(path.read_text())
      _check_annotation(annotation, str(path))
      urls = {f'{split}/{k}': f'{base}/{v}' for split in SPLITS
              for k, v in split_files(annotation, split).items()}
      return annotation, {k: epath.Path(v) for k, v in dl_manager.download(urls).items()}
    if not (root / ANNOTATION).exists():
      raise QmulV1RgbError(
          f'{root} lacks {ANNOTATION}. Point config.data.manual_dir at the '
          'folder holding shoes/ (e.g. ../shared/data/qmul_v1_rgb), or unset '
          'it to download the files.')
    annotation = json.loads((root / ANNOTATION).read_text())
    _check_annotation(annotation, str(root / ANNOTATION))
    paths = {f'{split}/{k}': root / v for split in SPLITS
             for k, v in split_files(annotation, split).items()}
    missing = sorted(str(p) for p in paths.values() if not p.exists())
    if missing:
      raise QmulV1RgbError(f'{len(missing)} files named by {ANNOTATION} are '
                           f'missing, e.g. {missing[:3]}; restore them or use '
                           'a complete copy of the data.')
    return annotation, paths

  def _split_generators(self, dl_manager):
    annotation, paths = self._locate_files(dl_manager)
    return {split: self._generate_examples(annotation[split], paths, split)
            for split in SPLITS}

  def _generate_examples(self, entry: dict, paths: dict[str, epath.Path],
                         split: str) -> Iterator[tuple[int, dict]]:
    n = len(entry['images'])
    for i, pairs in enumerate(entry['triplets']):
      pairs = np.asarray(pairs if pairs else np.zeros((0, 2)), np.int32).reshape(-1, 2)
      if pairs.size and (pairs.min() < 0 or pairs.max() >= n):
        raise QmulV1RgbError(f'{ANNOTATION}: {split} sketch {i} names photo '
                             f'indices outside [0, {n}).')
      yield i, {'sketch': load_image(paths[f'{split}/sketch/{i}'], 'L')[..., None],
                'photo': load_image(paths[f'{split}/image/{i}'], 'RGB'),
                'instance_id': i, 'triplets': pairs}
