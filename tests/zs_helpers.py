"""Zero-shot SBIR test data: the real Sketchy airplane class plus generated classes.

Generated classes exist only because the shared data holds one real Sketchy
class and a zero-shot split needs several; they are never called real. Each
generated class draws its own shape (so classes differ), photos as JPEG,
sketches as `<photo id>-<k>.png`, exactly the Sketchy layout.
"""
import os

import numpy as np
from PIL import Image
from PIL import ImageDraw

GENERATED_UNSEEN = ('bat', 'cabin')  # Names from the real unseen list.
GENERATED_SEEN = ('ant',)


def _draw(shape: str, rng: np.random.Generator, size: int, colour: bool) -> Image.Image:
  im = Image.new('RGB', (size, size), (255, 255, 255))
  d = ImageDraw.Draw(im)
  lo, hi = rng.integers(4, size // 3, 2), rng.integers(2 * size // 3, size - 4, 2)
  box = [int(lo[0]), int(lo[1]), int(hi[0]), int(hi[1])]
  fill = tuple(int(v) for v in rng.integers(0, 200, 3)) if colour else None
  if shape == 'ellipse':
    d.ellipse(box, outline=(0, 0, 0), fill=fill, width=3)
  elif shape == 'rectangle':
    d.rectangle(box, outline=(0, 0, 0), fill=fill, width=3)
  else:
    d.polygon([(box[0], box[3]), ((box[0] + box[2]) // 2, box[1]), (box[2], box[3])],
              outline=(0, 0, 0), fill=fill)
  return im


def make_sketchy_dir(root: str, airplane_dir: str | None, photos_per_class: int = 6,
                     sketches_per_photo: int = 2, extended: bool = False,
                     photo_dir_name: str = 'photo') -> str:
  """<root>/{photo,sketch}/<class>/ with generated classes (+ real airplane links)."""
  rng = np.random.default_rng(0)
  shapes = {'bat': 'ellipse', 'cabin': 'rectangle', 'ant': 'triangle'}
  for cls, shape in shapes.items():
    pdir = os.path.join(root, photo_dir_name, cls)
    sdir = os.path.join(root, 'sketch', cls)
    os.makedirs(pdir, exist_ok=True)
    os.makedirs(sdir, exist_ok=True)
    for i in range(photos_per_class):
      pid = f'gen_{cls}_{i}'
      _draw(shape, rng, 96, True).save(os.path.join(pdir, pid + '.jpg'))
      for k in range(1, sketches_per_photo + 1):
        _draw(shape, rng, 96, False).save(os.path.join(sdir, f'{pid}-{k}.png'))
    if extended:
      edir = os.path.join(root, 'extended', cls)
      os.makedirs(edir, exist_ok=True)
      for i in range(3):
        _draw(shape, rng, 80, True).save(os.path.join(edir, f'ext_{cls}_{i}.jpg'))
  if airplane_dir:
    for kind, real in (('photo', 'image'), ('sketch', 'sketch')):
      target = os.path.join(root, photo_dir_name if kind == 'photo' else kind, 'airplane')
      os.symlink(os.path.join(airplane_dir, real, 'airplane'), target)
  return root


def write_split_file(path: str, classes=GENERATED_UNSEEN) -> str:
  with open(path, 'w') as f:
    f.write('\n'.join(classes) + '\n')
  return path
