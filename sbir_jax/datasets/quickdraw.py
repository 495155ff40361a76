"""QuickDraw doodles (Jongejan et al., 2016) from the 28x28 numpy bitmaps.

Layout (../shared/data/quickdraw_14, and Google's `numpy_bitmap` files):
`<root>/quickdraw-<split>/<class>.npy`, uint8 (N, 784), white strokes on
black. The loader inverts them to dark strokes on white, the look of the
other sketch sources (TU-Berlin, Sketchy) and of the images the backbone
features were checked on.
"""
import os
from typing import Sequence

import numpy as np
from etils import epath

from sbir_jax import image_sets
from sbir_jax.datasets import sketch_classes


def _folder(root: str, split: str) -> str:
  return os.path.join(root, f'quickdraw-{split}')


def classes(root: str, split: str = 'train') -> list[str]:
  folder = _folder(root, split)
  if not os.path.isdir(folder):
    raise FileNotFoundError(
        f'QuickDraw folder {folder!r} not found. Point config.data.quickdraw_dir '
        'at the folder holding quickdraw-train/<class>.npy (e.g. '
        '../shared/data/quickdraw_14).')
  return sorted(f[:-4] for f in os.listdir(folder) if f.endswith('.npy'))


def load_bitmaps(path: str) -> np.ndarray:
  """(N, 28, 28) uint8, strokes dark on white."""
  return sketch_classes.load_bitmaps(epath.Path(path))[..., 0]


def load(root: str, splits: Sequence[str] = ('train', 'test'),
         class_names: Sequence[str] | None = None) -> image_sets.ImageSet:
  bitmaps, ids, labels = [], [], []
  for split in splits:
    names = image_sets.check_classes(classes(root, split), class_names,
                                     f'QuickDraw {_folder(root, split)}', 'file', '.npy')
    for name in names:
      images = load_bitmaps(os.path.join(_folder(root, split), f'{name}.npy'))
      bitmaps.append(images)
      ids.extend(f'{split}/{name}/{i:06d}' for i in range(len(images)))
      labels.extend([name] * len(images))
  return image_sets.ImageSet('quickdraw', np.array(ids), np.array(labels),
                             image_sets.array_reader(np.concatenate(bitmaps)))
