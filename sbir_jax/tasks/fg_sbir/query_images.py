"""Query and gallery images from files, made into what the FG-SBIR data is.

Any picture PIL reads (any mode, size or aspect; transparency, EXIF rotation,
16-bit grey, the first frame of an animation) becomes grey on white, padded to
a square, resized to the QMUL images' 256 then to `load_size` as the dataset
images are, and centre-cropped to `crop_size` as the evaluation's one view. A
file that cannot be used (missing, empty, not an image, too small, blank) is
refused with an `ImageFileError` that names it and says what to give instead.
"""
import io
import os

import numpy as np
from PIL import Image
from PIL import ImageOps

from sbir_jax import edge_maps
from sbir_jax.datasets import image_pipeline

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.webp', '.tif', '.tiff')
RAW_SIZE = 256  # The QMUL images' side: every picture goes through it first.
MIN_IMAGE_SIDE = 32


class ImageFileError(ValueError):
  """A file given as an image (query or gallery) cannot be used."""


def _on_white(image: Image.Image, rgb: bool = False) -> Image.Image:
  """Any PIL mode -> 'L' (or 'RGB'); transparent pixels become white (paper)."""
  if image.mode in ('I', 'I;16', 'I;16B', 'I;16L', 'I;16N', 'F'):
    # Wide-range grey: scale to 8 bits instead of letting PIL clip at 255.
    values = np.asarray(image, np.float64)
    top = 65535.0 if values.max() > 255 else 255.0
    return Image.fromarray(np.clip(values * 255.0 / top, 0, 255).astype(np.uint8))
  if image.mode in ('RGBA', 'LA', 'PA', 'La', 'RGBa') or 'transparency' in image.info:
    rgba = image.convert('RGBA')
    white = Image.new('RGBA', rgba.size, (255, 255, 255, 255))
    image = Image.alpha_composite(white, rgba)
  if image.mode not in ('L', 'RGB'):
    image = image.convert('RGB')  # CMYK, YCbCr, P, 1, ...
  return image.convert('RGB' if rgb else 'L')


def read_grey_image(path: str) -> np.ndarray:
  """The image at `path` as (RAW_SIZE, RAW_SIZE) uint8 grey on white."""
  return read_image(path, rgb=False)


def read_image(path: str, rgb: bool) -> np.ndarray:
  """The image at `path` as (RAW_SIZE, RAW_SIZE) uint8 grey (or (.., 3) RGB)
  on white.

  Non-square pictures are padded with white to a square (a sketch is not
  stretched); any mode is converted; unreadable files are refused by name.
  """
  if not os.path.exists(path):
    raise ImageFileError(f'{path}: no such file. Give the path of a sketch image '
                         '(PNG or JPEG).')
  if os.path.isdir(path):
    raise ImageFileError(f'{path} is a folder; give one sketch image file.')
  if os.path.getsize(path) == 0:
    raise ImageFileError(f'{path} is empty (0 bytes); give a sketch image '
                         '(PNG or JPEG).')
  return _decode(path, path, rgb)


def read_image_bytes(data: bytes, name: str, rgb: bool = False) -> np.ndarray:
  """As `read_image`, for the bytes of an uploaded file called `name`."""
  if not data:
    raise ImageFileError(f'{name} is empty (0 bytes); give a sketch image '
                         '(PNG or JPEG).')
  return _decode(io.BytesIO(data), name, rgb)


def _decode(source, name: str, rgb: bool) -> np.ndarray:
  """A file (path or file object) -> (RAW_SIZE, RAW_SIZE[, 3]) uint8 on white."""
  try:
    with Image.open(source) as image:
      image.seek(0)  # First frame of an animation.
      image.load()
      # Phone photos of paper sketches carry their rotation in EXIF.
      grey = _on_white(ImageOps.exif_transpose(image), rgb)
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    # PIL: UnidentifiedImageError (an OSError) for non-images, OSError for
    # truncated data, DecompressionBombError for absurd sizes.
    reason = str(e).replace(repr(source), 'the data')  # No object reprs for uploads.
    raise ImageFileError(f'{name} is not an image that can be read ({reason}); give a '
                         'sketch as PNG or JPEG.') from e
  width, height = grey.size
  if min(width, height) < MIN_IMAGE_SIDE:
    raise ImageFileError(f'{name} is {width}x{height} pixels: too small to hold a '
                         f'sketch (at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE}; '
                         f'the data is {RAW_SIZE}x{RAW_SIZE}).')
  if width != height:
    side = max(width, height)
    square = Image.new(grey.mode, (side, side), (255,) * len(grey.getbands()))
    square.paste(grey, ((side - width) // 2, (side - height) // 2))
    grey = square
  if grey.size != (RAW_SIZE, RAW_SIZE):
    grey = grey.resize((RAW_SIZE, RAW_SIZE), Image.Resampling.LANCZOS)
  return np.asarray(grey, np.uint8)


def load_image(path: str, load_size: int) -> np.ndarray:
  """(load_size, load_size, 1) uint8, resized exactly as the dataset images."""
  grey = read_grey_image(path)[None, ..., None]
  return image_pipeline.resize_images(grey, load_size)[0]


def load_photo(path: str, load_size: int, photo_input: str,
               stored_as_edges: bool) -> np.ndarray:
  """A gallery photo as the model's training photos were: (load_size,
  load_size, 3) RGB for photo_input 'rgb', else a (.., 1) edge map, made by
  `edge_maps.py` from the photo unless the files already are edge maps
  (stored_as_edges: QMUL V1 ships only those)."""
  if photo_input == 'rgb' or not stored_as_edges:
    image = read_image(path, rgb=True)[None]
    if photo_input != 'rgb':
      image = edge_maps.edge_maps(image)
  else:
    image = read_grey_image(path)[None, ..., None]
  return image_pipeline.resize_images(image, load_size)[0]


def load_query(path: str, load_size: int) -> np.ndarray:
  """A query sketch at load size; refuses a blank picture (nothing to match)."""
  return _check_not_blank(load_image(path, load_size), path)


def load_query_bytes(data: bytes, name: str, load_size: int) -> np.ndarray:
  """As `load_query`, for the bytes of an uploaded file (the same conversion,
  so an upload ranks exactly as the same file given to --mode=retrieve)."""
  grey = read_image_bytes(data, name)[None, ..., None]
  return _check_not_blank(image_pipeline.resize_images(grey, load_size)[0], name)


def _check_not_blank(image: np.ndarray, name: str) -> np.ndarray:
  if image.min() == image.max():
    raise ImageFileError(f'{name} is blank (every pixel is {int(image.min())}); '
                         'give a picture with the sketch strokes in it.')
  return image


def centre_crop(images_NxSxSxC: np.ndarray, crop_size: int) -> np.ndarray:
  """The evaluation's one-view crop (`ten_views` with one view)."""
  return image_pipeline.ten_views(images_NxSxSxC, crop_size, num_views=1)[:, 0]


def list_images(folder: str) -> list[str]:
  """Image files of `folder` (not recursive), sorted by name."""
  if not os.path.isdir(folder):
    raise ImageFileError(f'--gallery={folder}: not a folder. Give a folder of '
                         "photos, 'test', or a gallery .npz file.")
  names = sorted(n for n in os.listdir(folder)
                 if n.lower().endswith(IMAGE_SUFFIXES) and not n.startswith('.'))
  if not names:
    raise ImageFileError(f'{folder} holds no image files ({", ".join(IMAGE_SUFFIXES)}).')
  return names
