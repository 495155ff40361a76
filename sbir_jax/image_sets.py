"""ImageSet: ids, classes and a batched image reader, the input of feature extraction.

Every zero-shot data source (Sketchy via TFDS, TU-Berlin and QuickDraw from
their files) becomes one or more ImageSets. Features are computed per image
id and cached (`sbir_jax/tasks/zs_sbir/features.py`), so images are read only for ids the
cache lacks, and only once.
"""
import dataclasses
from typing import Callable, Iterator, Sequence

import numpy as np
from PIL import Image

# reader(indices, size) -> iterator of uint8 (b, size, size, 3) batches, in
# the order of `indices`, of at most `batch` images each.
Reader = Callable[[np.ndarray, int, int], Iterator[np.ndarray]]


@dataclasses.dataclass(frozen=True)
class ImageSet:
  name: str  # Names the feature cache file, e.g. 'sketchy/sketch'.
  ids: np.ndarray  # (N,) str, unique within the set.
  labels: np.ndarray  # (N,) str class names.
  reader: Reader = dataclasses.field(repr=False, compare=False)
  photo_ids: np.ndarray | None = None  # (N,) str: the photo a sketch was drawn from.
  domain: str = 'sketch'  # Or 'photo': which branch of a trained two-domain model.

  def __len__(self) -> int:
    return len(self.ids)

  def select(self, mask: np.ndarray) -> 'ImageSet':
    """The subset `mask` (bool or indices); reading maps back to this set."""
    index = np.arange(len(self))[mask]
    parent = self.reader
    return ImageSet(self.name, self.ids[index], self.labels[index],
                    lambda idx, size, batch: parent(index[idx], size, batch),
                    None if self.photo_ids is None else self.photo_ids[index],
                    self.domain)


def to_rgb(image: np.ndarray, size: int) -> np.ndarray:
  """uint8 (H, W) or (H, W, C) -> (size, size, 3), bilinear resize."""
  im = Image.fromarray(np.asarray(image, np.uint8))
  im = im.convert('RGB')
  if im.size != (size, size):
    im = im.resize((size, size), Image.BILINEAR)
  return np.asarray(im)


def batched(images: Iterator[np.ndarray], batch: int) -> Iterator[np.ndarray]:
  chunk = []
  for image in images:
    chunk.append(image)
    if len(chunk) == batch:
      yield np.stack(chunk)
      chunk = []
  if chunk:
    yield np.stack(chunk)


def file_reader(paths: Sequence[str]) -> Reader:
  """Reads image files with PIL (grey or colour)."""
  paths = list(paths)

  def read(indices, size, batch):
    def images():
      for i in indices:
        try:
          with Image.open(paths[i]) as im:
            yield to_rgb(np.asarray(im.convert('RGB')), size)
        except OSError as e:
          raise OSError(f'{paths[i]} is not a readable image ({e}); replace or '
                        'delete it.') from e
    return batched(images(), batch)
  return read


def array_reader(images_NxHxW: np.ndarray) -> Reader:
  """Reads from an in-memory uint8 array of grey images."""
  def read(indices, size, batch):
    return batched((to_rgb(images_NxHxW[i], size) for i in indices), batch)
  return read


def check_classes(present: Sequence[str], wanted: Sequence[str] | None,
                  where: str, kind: str = 'class', suffix: str = '') -> list[str]:
  """`wanted` (default: all `present`), or an error naming what is missing."""
  names = list(present) if wanted is None else list(wanted)
  missing = [c + suffix for c in names if c not in present]
  if missing:
    raise FileNotFoundError(f'{where} has no {kind} {missing}.')
  return names
