"""Per-image regions for LBF's entities: boxes, and optionally their features.

LBF (Hosseinzadeh & Wang, CVPR 2020) represents an image by K regions from a
detector, each a visual feature and a normalised box. Two sources here:

- a region file: one `.npz` with, per split (`train`, `test`),
    <split>_boxes      (N, K, 4) float, normalised [x, y, w, h] per region,
    <split>_num_boxes  (N,) int, optional: real regions first, the rest padding
                       (default: all K are real),
    <split>_features   (N, K, F) float, optional: precomputed region features
                       (e.g. Faster R-CNN), needed by entities_from='region_features',
  N being the split's number of images, in image-id order;
- the scenes of a CSS-style file: each object's drawn box (the boxes a perfect
  detector would give; `css_style_generator.object_box`).

Both give `Regions`: numpy arrays over all N images, padded to a common K, with
a mask of the real boxes; `take(ids)` gives the model's dict input.
"""
import dataclasses
import json
import os
from typing import Optional, Sequence

import numpy as np

from sbir_jax.datasets import css_style_generator as gen


class RegionFileError(ValueError):
  """A region file that is missing, or whose arrays do not fit the images."""


@dataclasses.dataclass(frozen=True)
class Regions:
  boxes: np.ndarray  # (N, K, 4) float32, normalised [x, y, w, h]
  mask: np.ndarray  # (N, K) bool, True for real regions
  features: Optional[np.ndarray] = None  # (N, K, F) float32

  def truncated(self, max_regions: int) -> 'Regions':
    """The first `max_regions` regions of each image (files list the most
    confident detections first)."""
    cut = lambda a: None if a is None else a[:, :max_regions]
    return Regions(cut(self.boxes), cut(self.mask), cut(self.features))

  def take(self, ids: np.ndarray, images: Optional[np.ndarray] = None) -> dict:
    """The model's input for images `ids`: boxes, box_mask, and `features`
    (if any) or `image` (the pixels, pooled inside the boxes)."""
    out = {'boxes': self.boxes[ids], 'box_mask': self.mask[ids]}
    if self.features is not None:
      out['features'] = self.features[ids]
    if images is not None:
      out['image'] = images[ids]
    return out


def _check_boxes(boxes: np.ndarray, mask: np.ndarray, where: str) -> None:
  real = boxes[mask]
  if not np.all(np.isfinite(real)):
    raise RegionFileError(f'{where}: boxes hold NaN or Inf.')
  x, y, w, h = real.T
  tolerance = 1e-3
  if np.any(w <= 0) or np.any(h <= 0) or np.any(x < -tolerance) or np.any(y < -tolerance) \
      or np.any(x + w > 1 + tolerance) or np.any(y + h > 1 + tolerance):
    raise RegionFileError(
        f'{where}: boxes must be [x, y, w, h] normalised to the image (0 <= x, '
        f'x + w <= 1, w > 0, same for y, h); found x in [{x.min():.3g}, '
        f'{x.max():.3g}], w in [{w.min():.3g}, {w.max():.3g}]. Divide pixel '
        'boxes by the image width and height.')


def read_region_file(path: str, split: str, num_images: int,
                     need_features: bool) -> Regions:
  """The regions of `split` in the .npz at `path`, checked against the split."""
  if not os.path.isfile(path):
    raise RegionFileError(f'Region file {path!r} does not exist (config.data.regions_file).')
  try:
    with np.load(path, allow_pickle=False) as data:
      arrays = {k: data[k] for k in data.files}
  except Exception as e:
    raise RegionFileError(f'{path} is not a readable .npz ({type(e).__name__}: {e}).') from e
  key = f'{split}_boxes'
  if key not in arrays:
    raise RegionFileError(f'{path} has no {key!r}; it holds {sorted(arrays)}. See '
                          'sbir_jax/datasets/regions.py for the layout.')
  boxes = np.asarray(arrays[key], np.float32)
  if boxes.ndim != 3 or boxes.shape[2] != 4 or boxes.shape[0] != num_images:
    raise RegionFileError(f'{path}[{key!r}] has shape {boxes.shape}; expected '
                          f'({num_images}, K, 4) for the {num_images} {split} images.')
  k = boxes.shape[1]
  counts = np.asarray(arrays.get(f'{split}_num_boxes', np.full(num_images, k)))
  if counts.shape != (num_images,) or np.any(counts < 1) or np.any(counts > k):
    raise RegionFileError(f'{path}[{split}_num_boxes] must be ({num_images},) with '
                          f'values in 1..{k}.')
  mask = np.arange(k)[None, :] < counts[:, None]
  _check_boxes(boxes, mask, f'{path}[{key!r}]')
  features = arrays.get(f'{split}_features')
  if features is not None:
    features = np.asarray(features, np.float32)
    if features.ndim != 3 or features.shape[:2] != (num_images, k):
      raise RegionFileError(f'{path}[{split}_features] has shape {features.shape}; '
                            f'expected ({num_images}, {k}, F) like its boxes.')
  elif need_features:
    raise RegionFileError(f'{path} has no {split}_features; entities_from='
                          'region_features needs them (or use entities_from=boxes).')
  return Regions(boxes, mask, features)


def scene_regions(objects_json: Sequence[str]) -> Regions:
  """Each CSS-style scene's object boxes (from the builder's `objects` JSON)."""
  scenes = [json.loads(o) for o in objects_json]
  k = max(len(s) for s in scenes)
  boxes = np.zeros((len(scenes), k, 4), np.float32)
  mask = np.zeros((len(scenes), k), bool)
  for i, objects in enumerate(scenes):
    for j, obj in enumerate(objects):
      boxes[i, j] = gen.object_box(obj)
      mask[i, j] = True
  return Regions(boxes, mask)
