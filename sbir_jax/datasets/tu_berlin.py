"""TU-Berlin sketches (Eitz et al., SIGGRAPH 2012) from a folder of PNG files.

Layout (the 40-class subset in ../shared/data/tu_berlin_40 and the full
250-class release alike): `<root>/<split>/<class>/<id>.png`, grey sketches,
dark strokes on white. A simple loader: the files are read (and resized) only
when features are extracted, then cached by id.
"""
import os
from typing import Sequence

import numpy as np

from sbir_jax import image_sets


def classes(root: str, split: str = 'train') -> list[str]:
  folder = os.path.join(root, split)
  if not os.path.isdir(folder):
    raise FileNotFoundError(
        f'TU-Berlin folder {folder!r} not found. Point config.data.tu_berlin_dir '
        'at the folder holding train/<class>/*.png (e.g. ../shared/data/tu_berlin_40).')
  return sorted(d for d in os.listdir(folder)
                if os.path.isdir(os.path.join(folder, d)))


def load(root: str, splits: Sequence[str] = ('train', 'test'),
         class_names: Sequence[str] | None = None) -> image_sets.ImageSet:
  """Every PNG of `class_names` (default all) in the given splits."""
  paths, ids, labels = [], [], []
  for split in splits:
    names = image_sets.check_classes(classes(root, split), class_names,
                                     f'TU-Berlin {os.path.join(root, split)}',
                                     'class folder')
    for name in names:
      folder = os.path.join(root, split, name)
      for file in sorted(os.listdir(folder)):
        if file.lower().endswith('.png'):
          paths.append(os.path.join(folder, file))
          ids.append(f'{split}/{name}/{os.path.splitext(file)[0]}')
          labels.append(name)
  if not paths:
    raise FileNotFoundError(f'No PNG sketch under {root} for {splits}.')
  return image_sets.ImageSet('tu_berlin', np.array(ids), np.array(labels),
                             image_sets.file_reader(paths))
