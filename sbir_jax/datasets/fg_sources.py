"""FG-SBIR data sources: which TFDS builder, and its examples as model inputs.

`config.data.source` names one:
- 'qmul_v1': Shoe V1 / Chair V1 / Handbag (`config.data.dataset`) with the
  photos as the edge maps the release ships (sketch i matches photo i);
- 'qmul_v1_rgb': Shoe V1 with its raw RGB photos;
- 'qmul_chair_v2': QMUL-Chair-V2, stroke sketches, several per RGB photo;
- 'sketchy_seen': the Sketchy zero-shot data (e.g. ../shared/data/
  sketchy_zs_subset), each sketch paired with the RGB photo it was drawn
  from, split by class as the zero-shot task splits it: train = the seen
  classes it trains on, val = its held-out validation classes, test = the
  unseen classes (`sketchy.class_splits`). It fine-tunes a trunk for the
  zero-shot features (configs/sketchy_seen.py) without ever training on a
  zero-shot validation or test class; its splits carry `photo_classes`.

Every source becomes a `RawSplit` at the files' 256-pixel size: grey sketches
(stroke files rendered with `config.data.stroke_width`), photos as
`config.data.photo_input` asks ('edge': grey edge maps, 'rgb': RGB), and
`photo_index`. Rendering and edge extraction happen here, once per load.
"""
import dataclasses
from typing import Callable

import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from sbir_jax import edge_maps
from sbir_jax import strokes
from sbir_jax.datasets import preparation
from sbir_jax.datasets import qmul_chair_v2
from sbir_jax.datasets import qmul_v1
from sbir_jax.datasets import qmul_v1_rgb
from sbir_jax.datasets import sketchy

SOURCES = ('qmul_v1', 'qmul_v1_rgb', 'qmul_chair_v2', 'sketchy_seen')
PHOTO_INPUTS = ('edge', 'rgb')

# source -> (builder factory, what the manual dir must hold).
_BUILDERS: dict[str, tuple[Callable, str]] = {
    'qmul_v1': (lambda data: qmul_v1.QmulV1(
        config=data.dataset, data_dir=data.tfds_data_dir),
                'shoes/, handbags/ (or chairs/)'),
    'qmul_v1_rgb': (lambda data: qmul_v1_rgb.QmulV1Rgb(
        config=data.dataset, data_dir=data.tfds_data_dir),
                    'shoes/ (with train/, test/, annotation/)'),
    'qmul_chair_v2': (lambda data: qmul_chair_v2.QmulChairV2(
        data_dir=data.tfds_data_dir),
                      f'{qmul_chair_v2.COORDINATE_FILE} and {qmul_chair_v2.PHOTO_DIR}/'),
}


@dataclasses.dataclass(frozen=True)
class RawSplit:
  """One split as stored, before val carving and resizing."""
  sketches: np.ndarray  # (N, 256, 256, 1) uint8, dark strokes on white.
  photos: np.ndarray  # (M, 256, 256, C) uint8; C = 1 edge map, 3 RGB.
  photo_index: np.ndarray  # (N,) int32: sketch i matches photo photo_index[i].
  triplets: list  # N arrays (p, 2): annotated [more, less similar] photos.
  photo_classes: np.ndarray | None = None  # (M,) int32 class ids, if known.


def check_source(data: ml_collections.ConfigDict) -> str:
  if data.source not in SOURCES:
    raise ValueError(f'config.data.source={data.source!r}; choose one of {SOURCES}.')
  if data.photo_input not in PHOTO_INPUTS:
    raise ValueError(f'config.data.photo_input={data.photo_input!r}; choose one '
                     f'of {PHOTO_INPUTS}.')
  if data.source == 'qmul_v1' and data.photo_input == 'rgb':
    raise ValueError(
        'config.data.source=qmul_v1 ships its photos as edge maps only, so '
        'photo_input="rgb" is impossible. Use photo_input="edge", or source '
        '"qmul_v1_rgb" (configs/shoes_rgb.py) for Shoe V1 with RGB photos.')
  return data.source


def build_builder(data: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  """Prepares (if needed) and returns the TFDS builder of `data.source`."""
  source = check_source(data)
  if source == 'sketchy_seen':
    return sketchy.build(data.manual_dir, data.tfds_data_dir)
  make, layout = _BUILDERS[source]
  return preparation.prepare(
      lambda: make(data), data.manual_dir,
      f'Set --config.data.manual_dir to the folder holding {layout}, e.g. '
      f'../shared/data/{source}, or set SBIR_JAX_DATA to the folder holding '
      f'{source}/.')


def _examples(builder, split: str, order_key: str) -> list[dict]:
  examples = list(tfds.as_numpy(builder.as_dataset(split=split)))
  return sorted(examples, key=lambda e: int(e[order_key]))


def _read_paired(builder, split: str) -> RawSplit:
  """qmul_v1 / qmul_v1_rgb: one photo per sketch, in `instance_id` order."""
  examples = _examples(builder, split, 'instance_id')
  return RawSplit(np.stack([e['sketch'] for e in examples]),
                  np.stack([e['photo'] for e in examples]),
                  np.arange(len(examples), dtype=np.int32),
                  [e['triplets'] for e in examples])


def _read_strokes(builder, split: str, stroke_width: float) -> RawSplit:
  """qmul_chair_v2: render each sketch; gather each photo once."""
  examples = _examples(builder, split, 'sketch_index')
  photo_index = np.array([e['photo_index'] for e in examples], np.int32)
  photos = np.zeros((photo_index.max() + 1,) + examples[0]['photo'].shape, np.uint8)
  seen = np.zeros(len(photos), bool)
  for e in examples:
    photos[e['photo_index']], seen[e['photo_index']] = e['photo'], True
  if not seen.all():  # The builder numbers the photos of sketches densely.
    raise ValueError(f'{split}: photo indices {np.flatnonzero(~seen)[:5]} have '
                     'no sketch; delete the prepared TFDS data and prepare again.')
  sketches = np.stack([strokes.render_strokes(e['strokes'], qmul_chair_v2.IMAGE_SIZE,
                                              stroke_width) for e in examples])
  return RawSplit(sketches[..., None], photos, photo_index,
                  [np.zeros((0, 2), np.int32)] * len(examples))


def read_split(builder, data: ml_collections.ConfigDict, split: str) -> RawSplit:
  """The split of `data.source` as model inputs at the files' size."""
  if check_source(data) == 'qmul_chair_v2':
    raw = _read_strokes(builder, split, data.stroke_width)
  else:
    raw = _read_paired(builder, split)
  if raw.photos.shape[-1] == 3 and data.photo_input == 'edge':
    raw = dataclasses.replace(raw, photos=edge_maps.edge_maps(raw.photos))
  return raw


def splits_by_class(data: ml_collections.ConfigDict) -> bool:
  """Whether the source defines train / val / test itself (by class)."""
  return check_source(data) == 'sketchy_seen'


def _read_images(images, size: int = 256) -> np.ndarray:
  """All images of an ImageSet, (N, size, size, 3) uint8, in its order."""
  batches = list(images.reader(np.arange(len(images)), size, 256))
  return np.concatenate(batches) if batches else np.zeros((0, size, size, 3), np.uint8)


def read_class_splits(builder, data: ml_collections.ConfigDict) -> dict[str, RawSplit]:
  """'sketchy_seen': train / val / test by class, each sketch with its photo."""
  sketch = sketchy.image_set(builder, 'sketch')
  photo = sketchy.image_set(builder, 'photo')
  classes = sketchy.class_splits(sketch.labels, data)
  class_id = {c: i for i, c in enumerate(sorted(set(sketch.labels.tolist())))}
  out = {}
  for name, wanted in classes.items():
    sketches = sketch.select(np.isin(sketch.labels, wanted))
    photos, photo_index = sketchy.paired_photos(sketches, photo, data.manual_dir, name)
    grey = _read_images(sketches).mean(axis=-1, keepdims=True)
    raw = RawSplit(np.round(grey).astype(np.uint8), _read_images(photos),
                   photo_index,
                   [np.zeros((0, 2), np.int32)] * len(sketches),
                   np.array([class_id[c] for c in photos.labels.tolist()], np.int32))
    if data.photo_input == 'edge':
      raw = dataclasses.replace(raw, photos=edge_maps.edge_maps(raw.photos))
    out[name] = raw
  return out
