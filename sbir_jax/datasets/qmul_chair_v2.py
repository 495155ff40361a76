"""TFDS builder for QMUL-Chair-V2: stroke sketches of 400 chair photos.

Files (as in the public copy `wdr123/DARP-SBIR`, `data/chairv2/`):
- `photo/<name>.png`: RGB photos (most 256x256; stored here resized to 256).
- `ChairV2_Coordinate`: a pickle of a dict `'/<split>/<photo name>_<k>'` ->
  float (points, 3) of (x, y, pen_state) in 256-pixel coordinates, pen_state
  1 ending a stroke. Read with a restricted unpickler (a pickle can run code).

One example per sketch: its strokes (rendering, with the configured stroke
width, is the input pipeline's job), its photo, and `photo_index`, the photo's
index among the split's photos sorted by name. Train: 300 photos, 952
sketches; test: 100 photos, 323 sketches. No triplet annotation exists.

Files come from a manual dir laid out as above (e.g. ../shared/data/
qmul_chair_v2) or are downloaded: the pickle first, whose keys name the
photos to fetch.
"""
import dataclasses
import io
import urllib.parse
from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from sbir_jax import safe_pickle

_REPO_URL = ('https://raw.githubusercontent.com/wdr123/DARP-SBIR/'
             'b8625337c7e31e19edb0817356089cf525295352/data/chairv2')
COORDINATE_FILE = 'ChairV2_Coordinate'
PHOTO_DIR = 'photo'
IMAGE_SIZE = 256
SPLITS = ('train', 'test')


class QmulChairV2Error(ValueError):
  """A QMUL-Chair-V2 file is missing or malformed."""


@dataclasses.dataclass(frozen=True)
class SketchEntry:
  key: str  # The pickle key, e.g. '/train/9910-02-carbon_1'.
  split: str
  photo_name: str
  strokes: np.ndarray  # (points, 3) float32


def parse_coordinates(table) -> list[SketchEntry]:
  """Validates the unpickled dict and returns its sketches sorted by key."""
  if not isinstance(table, dict):
    raise QmulChairV2Error(f'{COORDINATE_FILE} holds a {type(table).__name__}, '
                           'expected a dict of sketch key -> (points, 3) array.')
  entries = []
  for key in sorted(table):
    parts = key.split('/') if isinstance(key, str) else []
    if len(parts) != 3 or parts[0] or parts[1] not in SPLITS or '_' not in parts[2]:
      raise QmulChairV2Error(f'{COORDINATE_FILE}: key {key!r} is not of the '
                             "form '/train/<photo name>_<k>' or '/test/...'.")
    strokes = np.asarray(table[key])
    if (strokes.ndim != 2 or strokes.shape[1] != 3 or not len(strokes)
        or not np.issubdtype(strokes.dtype, np.number)):
      raise QmulChairV2Error(f'{COORDINATE_FILE}: sketch {key!r} has shape '
                             f'{strokes.shape} ({strokes.dtype}); expected '
                             'numeric (points, 3) of (x, y, pen_state).')
    entries.append(SketchEntry(key, parts[1], parts[2].rsplit('_', 1)[0],
                               strokes.astype(np.float32)))
  photo_splits = {}
  for e in entries:
    if photo_splits.setdefault(e.photo_name, e.split) != e.split:
      raise QmulChairV2Error(f'Photo {e.photo_name!r} has sketches in both '
                             'train and test; the splits must not share photos.')
  return entries


def read_coordinates(path: epath.PathLike) -> list[SketchEntry]:
  """Reads `ChairV2_Coordinate` with the restricted unpickler."""
  path = epath.Path(path)
  try:
    table = safe_pickle.load_plain_pickle(path.read_bytes())
  except safe_pickle.UnsafePickleError:
    raise  # Never soften: the file tried to name code.
  except Exception as e:  # A truncated or non-pickle file: several types.
    raise QmulChairV2Error(f'{path} is not a readable pickle ({e}); download '
                           'it again from the QMUL-Chair-V2 release.') from e
  return parse_coordinates(table)


def load_photo(path: epath.Path) -> np.ndarray:
  """A photo file -> uint8 (256, 256, 3); other sizes are resized (bicubic)."""
  try:
    with Image.open(io.BytesIO(path.read_bytes())) as image:
      image = image.convert('RGB')
      if image.size != (IMAGE_SIZE, IMAGE_SIZE):  # 8 of the 400 are 500x500.
        image = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC)
      return np.asarray(image, np.uint8)
  except OSError as e:
    raise QmulChairV2Error(f'{path} is not a readable image ({e}); download it '
                           'again from the QMUL-Chair-V2 release.') from e


class QmulChairV2(tfds.core.GeneratorBasedBuilder):
  """QMUL-Chair-V2 FG-SBIR: stroke sketches and the RGB photos they match."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
  Optional. Put `{COORDINATE_FILE}` and `{PHOTO_DIR}/<name>.png` (from
  wdr123/DARP-SBIR, `data/chairv2/`) in `<manual_dir>/`. Without a manual dir
  the files are downloaded.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'strokes': tfds.features.Tensor(shape=(None, 3), dtype=np.float32),
            'sketch_name': tfds.features.Text(),
            # Orders the sketches: the index of the key in sorted order.
            'sketch_index': np.int32,
            'photo': tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 3)),
            'photo_name': tfds.features.Text(),
            # The photo's index among this split's photos sorted by name.
            'photo_index': np.int32,
        }),
        supervised_keys=None,
        homepage='http://sketchx.eecs.qmul.ac.uk/downloads/',
    )

  def _locate_files(self, dl_manager) -> tuple[list[SketchEntry], dict[str, epath.Path]]:
    """The parsed sketches and photo name -> local path of every photo."""
    try:
      root = dl_manager.manual_dir
    except AssertionError:  # No manual dir given: fetch from the release.
      coordinates = epath.Path(dl_manager.download(f'{_REPO_URL}/{COORDINATE_FILE}'))
      entries = read_coordinates(coordinates)
      names = sorted({e.photo_name for e in entries})
      # The pickle names the photos, so they can only be listed after it.
      urls = {n: f'{_REPO_URL}/{PHOTO_DIR}/{urllib.parse.quote(n)}.png' for n in names}
      return entries, {k: epath.Path(v) for k, v in dl_manager.download(urls).items()}
    if not (root / COORDINATE_FILE).exists():
      raise QmulChairV2Error(
          f'{root} lacks {COORDINATE_FILE}. Point config.data.manual_dir at the '
          f'folder holding {COORDINATE_FILE} and {PHOTO_DIR}/ (e.g. '
          '../shared/data/qmul_chair_v2), or unset it to download the files.')
    entries = read_coordinates(root / COORDINATE_FILE)
    photos = {e.photo_name: root / PHOTO_DIR / f'{e.photo_name}.png' for e in entries}
    for e in entries:
      if not photos[e.photo_name].exists():
        raise QmulChairV2Error(
            f'Sketch {e.key!r} matches photo {photos[e.photo_name]}, which does '
            f'not exist. Restore the missing file under {root / PHOTO_DIR}/ (or '
            f'use a complete copy of the data).')
    return entries, photos

  def _split_generators(self, dl_manager):
    entries, photos = self._locate_files(dl_manager)
    return {split: self._generate_examples([e for e in entries if e.split == split],
                                           photos)
            for split in SPLITS}

  def _generate_examples(self, entries: list[SketchEntry],
                         photos: dict[str, epath.Path]) -> Iterator[tuple[str, dict]]:
    names = sorted({e.photo_name for e in entries})
    photo_index = {n: i for i, n in enumerate(names)}
    images = {n: load_photo(photos[n]) for n in names}  # Each photo read once.
    for i, e in enumerate(entries):
      yield e.key, {
          'strokes': e.strokes, 'sketch_name': e.key.rsplit('/', 1)[1],
          'sketch_index': i, 'photo': images[e.photo_name],
          'photo_name': e.photo_name, 'photo_index': photo_index[e.photo_name]}
