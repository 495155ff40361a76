"""Retrieval at scale: embed a gallery once, exact sharded top-K, export, plots.

- Scoring (`Scorer`): inner product, negative squared Euclidean, and the
  learnable energies of DSSA (HOLEF, Sec. 3.3; weighted; Mahalanobis) as
  scores = -energy. Every kind is written as `q' g^T + bias(g) + const(q)`:
  the queries are transformed (for HOLEF q' = 2 q W), the gallery rows are
  stored as embedded, and ranking costs one matrix product; no (N, d, d)
  tensor is formed.
- `GalleryIndex`: the gallery resident on the mesh, rows sharded on `data`
  (padded to a multiple of the device count, padding scored -inf). A search
  is one jitted `shard_map`: every device takes the top-K of its own rows with
  `lax.top_k`, the (devices x K) candidates are all-gathered and merged by a
  second top-K. Exact: no approximation anywhere.
- `Gallery` files (`.npz`): embeddings, ids and a model fingerprint; a file
  embedded by another model is refused.
- Query images: any picture PIL reads is turned into what the FG-SBIR data
  is (grey, white background, 256 then `load_size`, centre `crop_size`), or
  refused with a message naming the file.
- `retrieve`: `--mode=retrieve` (restore, embed, search, draw the results
  grid and the DSSA attention mask as in the paper's Figures 4 and 5).
"""
import dataclasses
import functools
import hashlib
import json
import os
import time
from typing import Any, Callable, Optional, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageOps

from sbir_jax import input_pipeline
from sbir_jax import sharding
from sbir_jax.models import energies

P = jax.sharding.PartitionSpec

SCORE_KINDS = ('inner_product', 'euclidean', 'holef', 'mahalanobis')
IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.webp', '.tif', '.tiff')
RAW_SIZE = 256  # The QMUL images' side: every picture goes through it first.
MIN_IMAGE_SIDE = 32


class ImageFileError(ValueError):
  """A file given as an image (query or gallery) cannot be used."""


class GalleryMismatchError(ValueError):
  """A gallery file is unreadable, or was embedded by another model."""


# --- Scores -------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class Scorer:
  """score(q, g), higher = closer; for the energies it is exactly -energy.

  kind: one of SCORE_KINDS. W_DxD: HOLEF's W (kind='holef') or the
  Mahalanobis map M with energy ||M (s - p)||^2 (kind='mahalanobis').
  """
  kind: str
  W_DxD: Optional[np.ndarray] = None

  def __post_init__(self):
    if self.kind not in SCORE_KINDS:
      raise ValueError(f'Unknown score kind {self.kind!r}; use one of {SCORE_KINDS}.')
    if (self.kind in ('holef', 'mahalanobis')) != (self.W_DxD is not None):
      raise ValueError(f'Score kind {self.kind!r} needs W_DxD exactly when it is '
                       'holef or mahalanobis.')


def scorer_for_energy(kind: str, energy_params: Optional[dict]) -> Scorer:
  """The Scorer equal to -Energy(kind) (models/energies.py) with its params."""
  if kind == 'euclidean':
    return Scorer('euclidean')
  if kind == 'holef':
    return Scorer('holef', np.asarray(energy_params['W'], np.float32))
  if kind == 'weighted':
    # sum_i w_i (s_i - p_i)^2 is HOLEF with W = diag(w), w as the model has it.
    w = energies.weighted_energy_weights(
        jnp.asarray(energy_params[energies.WEIGHTED_PARAM], jnp.float32))
    return Scorer('holef', np.diag(np.asarray(w)))
  if kind == 'mahalanobis':
    return Scorer('mahalanobis', np.asarray(energy_params['W'], np.float32))
  raise ValueError(f'No retrieval score for energy {kind!r}.')


def _gallery_bias(kind: str, W_DxD, g_NxD: jax.Array) -> jax.Array:
  """The score term that depends on the gallery row only, (N,)."""
  if kind == 'inner_product':
    return jnp.zeros(g_NxD.shape[:1], g_NxD.dtype)
  if kind == 'euclidean':
    return -jnp.sum(g_NxD * g_NxD, axis=-1)
  if kind == 'holef':  # -c.p^2, c = column sums of W.
    return -(g_NxD * g_NxD) @ W_DxD.sum(axis=0)
  mapped = g_NxD @ W_DxD.T
  return -jnp.sum(mapped * mapped, axis=-1)


def _query_terms(kind: str, W_DxD, q_BxD: jax.Array):
  """(q' such that the cross term is q' g^T, the query-only term (B,))."""
  if kind == 'inner_product':
    return q_BxD, jnp.zeros(q_BxD.shape[:1], q_BxD.dtype)
  if kind == 'euclidean':
    return 2.0 * q_BxD, -jnp.sum(q_BxD * q_BxD, axis=-1)
  if kind == 'holef':  # 2 s W p - r.s^2, r = row sums of W.
    return 2.0 * q_BxD @ W_DxD, -(q_BxD * q_BxD) @ W_DxD.sum(axis=1)
  mapped = q_BxD @ W_DxD.T
  return 2.0 * mapped @ W_DxD, -jnp.sum(mapped * mapped, axis=-1)


def scores(scorer: Scorer, q_BxD: jax.Array, g_NxD: jax.Array) -> jax.Array:
  """All (B, N) scores in one product; a reference for small galleries."""
  W = None if scorer.W_DxD is None else jnp.asarray(scorer.W_DxD)
  q2, const_B = _query_terms(scorer.kind, W, q_BxD)
  return q2 @ g_NxD.T + _gallery_bias(scorer.kind, W, g_NxD)[None, :] + const_B[:, None]


# --- Exact top-K over a gallery sharded on the mesh ----------------------------
class GalleryIndex:
  """A gallery kept on the devices, rows sharded on `data`; exact top-K search.

  Built once (one host->device copy, the per-row bias computed once); every
  `search` is one jitted call with no per-query loop. The compiled search is
  cached per (number of queries, k).
  """

  def __init__(self, embeddings_NxD: np.ndarray, scorer: Scorer,
               mesh: jax.sharding.Mesh,
               precision: Any = jax.lax.Precision.HIGHEST):
    embeddings_NxD = np.asarray(embeddings_NxD, np.float32)
    if embeddings_NxD.ndim != 2 or not len(embeddings_NxD):
      raise ValueError(f'Gallery embeddings must be a non-empty (N, D) array; '
                       f'got shape {embeddings_NxD.shape}.')
    self.scorer, self.mesh, self.precision = scorer, mesh, precision
    self._compiled = {}  # k -> jitted search (jit caches per query count).
    self.size, self.dim = embeddings_NxD.shape
    devices = mesh.shape['data']
    self.rows_per_device = -(-self.size // devices)
    padded = self.rows_per_device * devices
    row_sharding = jax.NamedSharding(mesh, P('data', None))
    self._replicated = sharding.replicated(mesh)

    def shard_rows(index):
      # Each device's rows, zero-padded at the end: no padded host copy of
      # the whole gallery is made.
      start, stop, _ = index[0].indices(padded)
      block = embeddings_NxD[start:stop]
      missing = (stop - start) - len(block)
      return np.pad(block, ((0, missing), (0, 0))) if missing else block

    self._rows = jax.make_array_from_callback(
        (padded, self.dim), row_sharding, shard_rows)
    W = None if scorer.W_DxD is None else np.asarray(scorer.W_DxD, np.float32)
    self._W = None if W is None else jax.device_put(W, self._replicated)

    def bias_fn(rows, W_):
      bias = _gallery_bias(scorer.kind, W_, rows)
      # Padding rows can never win: -inf.
      return jnp.where(jnp.arange(padded) < self.size, bias, -jnp.inf)

    self._bias = jax.jit(bias_fn, out_shardings=jax.NamedSharding(mesh, P('data')))(
        self._rows, self._W)

  def _search_fn(self, k: int) -> Callable:
    if k not in self._compiled:
      self._compiled[k] = self._make_search_fn(k)
    return self._compiled[k]

  def _make_search_fn(self, k: int) -> Callable:
    local_k = min(k, self.rows_per_device)
    rows_per_device, kind, precision = self.rows_per_device, self.scorer.kind, self.precision

    def local_top_k(g_nxD, bias_n, q2_BxD):
      scores_Bxn = jnp.dot(q2_BxD, g_nxD.T, precision=precision) + bias_n[None, :]
      top_BxL, idx_BxL = jax.lax.top_k(scores_Bxn, local_k)
      idx_BxL = idx_BxL + jax.lax.axis_index('data') * rows_per_device
      # Every device's candidates to every device, then the exact merge.
      top_BxM = jax.lax.all_gather(top_BxL, 'data', axis=1, tiled=True, to='invarying')
      idx_BxM = jax.lax.all_gather(idx_BxL, 'data', axis=1, tiled=True, to='invarying')
      top_BxK, pick_BxK = jax.lax.top_k(top_BxM, k)
      return top_BxK, jnp.take_along_axis(idx_BxM, pick_BxK, axis=1)

    sharded = jax.shard_map(local_top_k, mesh=self.mesh,
                            in_specs=(P('data', None), P('data'), P()),
                            out_specs=(P(), P()))

    def search(rows, bias, W, q_BxD):
      q2_BxD, const_B = _query_terms(kind, W, q_BxD)
      top_BxK, idx_BxK = sharded(rows, bias, q2_BxD)
      return top_BxK + const_B[:, None], idx_BxK

    return jax.jit(search, out_shardings=(self._replicated, self._replicated))

  def _queries(self, q_BxD: np.ndarray) -> jax.Array:
    q_BxD = np.asarray(q_BxD, np.float32)
    if q_BxD.ndim != 2 or q_BxD.shape[1] != self.dim:
      raise ValueError(f'Queries must be (B, {self.dim}); got {q_BxD.shape}.')
    return jax.make_array_from_callback(q_BxD.shape, self._replicated,
                                        lambda index: q_BxD[index])

  def search_device(self, q_BxD: np.ndarray, k: int) -> tuple[jax.Array, jax.Array]:
    """Like `search`, but returns device arrays without waiting (benchmarks)."""
    if not 1 <= k <= self.size:
      raise ValueError(f'top_k={k} must be between 1 and the gallery size {self.size}.')
    return self._search_fn(k)(self._rows, self._bias, self._W, self._queries(q_BxD))

  def search(self, q_BxD: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores (B, k) best first, gallery row indices (B, k))."""
    top, idx = self.search_device(q_BxD, k)
    return np.asarray(top), np.asarray(idx)

  def rank_of(self, q_1xD: np.ndarray, row: int) -> int:
    """0-based rank of gallery row `row` for one query (rows scoring higher)."""
    if not 0 <= row < self.size:
      raise ValueError(f'Row {row} is not in the gallery of {self.size}.')
    return int(self._rank_fn(self._rows, self._bias, self._W, self._queries(q_1xD),
                             row))

  @functools.cached_property
  def _rank_fn(self) -> Callable:
    kind, precision = self.scorer.kind, self.precision

    def rank(rows, bias, W, q_1xD, row):
      q2_1xD, _ = _query_terms(kind, W, q_1xD)
      scores_N = jnp.dot(q2_1xD, rows.T, precision=precision)[0] + bias
      return jnp.sum(scores_N > scores_N[row])
    return jax.jit(rank, out_shardings=self._replicated)


# --- Gallery files --------------------------------------------------------------
@dataclasses.dataclass
class Gallery:
  """Embedded gallery: row i of `embeddings` is the item named `ids[i]`."""
  embeddings: np.ndarray  # (N, D) float32
  ids: np.ndarray  # (N,) str
  fingerprint: dict
  source: str = ''  # 'test', or the folder the images came from.


def _hash(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()[:16]


def model_fingerprint(config: ml_collections.ConfigDict, embedding_dim: int,
                      params: Any) -> dict:
  """What makes two embeddings comparable: model config, preprocessing, weights."""
  relevant = {'task': config.task, 'model': config.model.to_dict(),
              'energy': config.loss.energy, 'load_size': config.data.load_size,
              'crop_size': config.data.crop_size, 'pixel_mean': config.pixel_mean,
              'input_scale': config.input_scale}
  digest = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    digest.update(jax.tree_util.keystr(path).encode())
    digest.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
  return {'embedding_dim': int(embedding_dim), 'energy': config.loss.energy,
          'config_name': f'{config.task}/{config.data.dataset}',
          'config_hash': _hash(json.dumps(relevant, sort_keys=True).encode()),
          'params_hash': digest.hexdigest()[:16]}


def save_gallery(path: str, gallery: Gallery) -> None:
  """Writes `path` (.npz) atomically: a kill never leaves half a file."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + '.tmp'
  with open(tmp, 'wb') as f:
    np.savez(f, embeddings=np.asarray(gallery.embeddings, np.float32),
             ids=np.asarray(gallery.ids, dtype=str),
             fingerprint=np.array(json.dumps(gallery.fingerprint, sort_keys=True)),
             source=np.array(gallery.source))
  os.replace(tmp, path)


def load_gallery(path: str, expected_fingerprint: Optional[dict] = None) -> Gallery:
  """Reads a gallery file; refuses one from another model than `expected`."""
  try:
    with np.load(path, allow_pickle=False) as data:
      gallery = Gallery(data['embeddings'], data['ids'],
                        json.loads(str(data['fingerprint'])), str(data['source']))
  except FileNotFoundError:
    raise
  except Exception as e:  # numpy/zipfile/json raise many types for bad files.
    raise GalleryMismatchError(
        f'{path} is not a gallery file written by sbir_jax ({type(e).__name__}: '
        f'{e}). Delete it and embed the gallery again.') from e
  found_dim = gallery.embeddings.shape[1] if gallery.embeddings.ndim == 2 else None
  if found_dim != gallery.fingerprint.get('embedding_dim') or len(gallery.ids) != len(
      gallery.embeddings):
    raise GalleryMismatchError(
        f'{path} is inconsistent (embeddings {gallery.embeddings.shape}, '
        f'{len(gallery.ids)} ids, fingerprint {gallery.fingerprint}). Delete it '
        'and embed the gallery again.')
  if expected_fingerprint is not None:
    want = expected_fingerprint['embedding_dim']
    if found_dim != want:
      raise GalleryMismatchError(
          f'{path} holds {found_dim}-d embeddings but this model embeds {want}-d '
          'ones: the file was made by a different model. Embed the gallery again '
          'with this model (give the image folder, or delete the file).')
    differ = {k: (gallery.fingerprint.get(k), v)
              for k, v in expected_fingerprint.items()
              if gallery.fingerprint.get(k) != v}
    if differ:
      what = '; '.join(f'{k}: file {a!r}, model {b!r}' for k, (a, b) in differ.items())
      raise GalleryMismatchError(
          f'{path} was embedded by a different model ({what}). Its scores would '
          'be meaningless against this model; embed the gallery again with it '
          '(give the image folder, or delete the file).')
  return gallery


# --- Images -------------------------------------------------------------------
def _grey_on_white(image: Image.Image) -> Image.Image:
  """Any PIL mode -> 'L'; transparent pixels become white (sketch paper)."""
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
  return image.convert('L')


def read_grey_image(path: str) -> np.ndarray:
  """The image at `path` as (RAW_SIZE, RAW_SIZE) uint8 grey on white.

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
  try:
    with Image.open(path) as image:
      image.seek(0)  # First frame of an animation.
      image.load()
      # Phone photos of paper sketches carry their rotation in EXIF.
      grey = _grey_on_white(ImageOps.exif_transpose(image))
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    # PIL: UnidentifiedImageError (an OSError) for non-images, OSError for
    # truncated data, DecompressionBombError for absurd sizes.
    raise ImageFileError(f'{path} is not an image that can be read ({e}); give a '
                         'sketch as PNG or JPEG.') from e
  width, height = grey.size
  if min(width, height) < MIN_IMAGE_SIDE:
    raise ImageFileError(f'{path} is {width}x{height} pixels: too small to hold a '
                         f'sketch (at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE}; '
                         f'the data is {RAW_SIZE}x{RAW_SIZE}).')
  if width != height:
    side = max(width, height)
    square = Image.new('L', (side, side), 255)
    square.paste(grey, ((side - width) // 2, (side - height) // 2))
    grey = square
  if grey.size != (RAW_SIZE, RAW_SIZE):
    grey = grey.resize((RAW_SIZE, RAW_SIZE), Image.Resampling.LANCZOS)
  return np.asarray(grey, np.uint8)


def load_image(path: str, load_size: int) -> np.ndarray:
  """(load_size, load_size, 1) uint8, resized exactly as the dataset images."""
  grey = read_grey_image(path)[None, ..., None]
  return input_pipeline.resize_images(grey, load_size)[0]


def load_query(path: str, load_size: int) -> np.ndarray:
  """A query sketch at load size; refuses a blank picture (nothing to match)."""
  image = load_image(path, load_size)
  if image.min() == image.max():
    raise ImageFileError(f'{path} is blank (every pixel is {int(image.min())}); '
                         'give a picture with the sketch strokes in it.')
  return image


def centre_crop(images_NxSxSx1: np.ndarray, crop_size: int) -> np.ndarray:
  """The evaluation's one-view crop (`ten_views` with one view)."""
  return input_pipeline.ten_views(images_NxSxSx1, crop_size, num_views=1)[:, 0]


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


# --- Embedding a gallery --------------------------------------------------------
def embed_gallery(embed_fn: Callable[[np.ndarray], np.ndarray], num_items: int,
                  read_chunk: Callable[[int, int], np.ndarray], *,
                  chunk_size: int, what: str = 'gallery',
                  log_every_seconds: float = 10.0) -> np.ndarray:
  """Embeds items [0, num_items) chunk by chunk, logging progress and ETA.

  read_chunk(start, stop) -> the model inputs of those items; embed_fn maps a
  chunk to (n, D) embeddings (batched and sharded on `data` inside). Only one
  chunk of images is in memory at a time.
  """
  out, start_time, last_log = [], time.time(), 0.0
  for start in range(0, num_items, chunk_size):
    stop = min(start + chunk_size, num_items)
    out.append(np.asarray(embed_fn(read_chunk(start, stop)), np.float32))
    now = time.time()
    if now - last_log >= log_every_seconds or stop == num_items:
      rate = stop / max(now - start_time, 1e-9)
      logging.info('Embedded %d/%d %s images (%.1f/s, %.0f s left)', stop, num_items,
                   what, rate, (num_items - stop) / rate)
      last_log = now
  return np.concatenate(out)


# --- Pictures -----------------------------------------------------------------
def _jet(m_HxW: np.ndarray) -> np.ndarray:
  """[0, 1] -> RGB uint8 with the usual blue-cyan-yellow-red heat map."""
  channels = [np.clip(1.5 - np.abs(4.0 * m_HxW - c), 0.0, 1.0) for c in (3.0, 2.0, 1.0)]
  return (np.stack(channels, axis=-1) * 255).astype(np.uint8)


def attention_overlay(sketch_HxW: np.ndarray, mask_hxw: np.ndarray,
                      size: int = 256) -> Image.Image:
  """The sketch beside the sketch with its attention map (upsampled) over it.

  Colours span the mask's own min..max (as CAM pictures do); the caption
  gives that range and the uniform value 1/(h w), so a flat mask is seen as
  flat.
  """
  mask = np.asarray(mask_hxw, np.float32)
  low, high = float(mask.min()), float(mask.max())
  scaled = (mask - low) / max(high - low, 1e-12)
  heat = Image.fromarray(scaled).resize((size, size), Image.Resampling.BILINEAR)
  heat_rgb = _jet(np.clip(np.asarray(heat), 0.0, 1.0))
  sketch = np.asarray(Image.fromarray(sketch_HxW).convert('RGB').resize(
      (size, size), Image.Resampling.LANCZOS))
  blend = (0.55 * sketch + 0.45 * heat_rgb).astype(np.uint8)
  # Strokes stay readable: dark pixels of the sketch are kept dark.
  blend = np.where(sketch < 128, (0.5 * sketch).astype(np.uint8), blend)
  caption = 32
  canvas = Image.new('RGB', (2 * size + 12, size + caption), 'white')
  canvas.paste(Image.fromarray(sketch), (0, caption))
  canvas.paste(Image.fromarray(blend), (size + 12, caption))
  draw = ImageDraw.Draw(canvas)
  draw.text((4, 6), 'query (model input crop)', fill='black')
  h, w = mask.shape
  draw.text((size + 16, 4), f'attention {h}x{w}: {low:.3f} (blue) to '
            f'{high:.3f} (red)', fill='black')
  draw.text((size + 16, 17), f'(uniform would be {1 / (h * w):.3f})', fill='black')
  return canvas


def results_grid(query_HxW: np.ndarray, photos: Sequence[np.ndarray],
                 captions: Sequence[str], true_position: Optional[int] = None,
                 note: str = '', cell: int = 160, per_row: int = 6) -> Image.Image:
  """Query then the top-K photos (best first); the true match outlined green."""
  tiles = [query_HxW] + list(photos)
  labels = ['query'] + list(captions)
  pad, caption = 8, 30
  rows = -(-len(tiles) // per_row)
  width = per_row * (cell + pad) + pad
  height = rows * (cell + caption + pad) + pad + 20
  canvas = Image.new('RGB', (width, height), 'white')
  draw = ImageDraw.Draw(canvas)
  draw.text((pad, 4), note, fill='black')
  for i, (tile, label) in enumerate(zip(tiles, labels)):
    x = pad + (i % per_row) * (cell + pad)
    y = 20 + pad + (i // per_row) * (cell + caption + pad)
    image = Image.fromarray(np.asarray(tile)).convert('RGB').resize(
        (cell, cell), Image.Resampling.LANCZOS)
    canvas.paste(image, (x, y))
    is_true = true_position is not None and i == true_position + 1
    colour, border = (('green', 5) if is_true else
                      ('royalblue', 3) if i == 0 else ('grey', 1))
    draw.rectangle((x - border, y - border, x + cell + border - 1,
                    y + cell + border - 1), outline=colour, width=border)
    for line, text in enumerate(label.split('\n')[:2]):
      draw.text((x, y + cell + 3 + 12 * line), text, fill=colour if is_true else 'black')
  return canvas


def _gallery_picture(gallery: Gallery, row: int, test_photos, size: int) -> np.ndarray:
  """What to show for gallery row `row`: the photo, or a grey tile if gone."""
  if gallery.source == 'test' and test_photos is not None:
    return test_photos[row][..., 0]
  path = os.path.join(gallery.source, str(gallery.ids[row]))
  try:
    with Image.open(path) as image:
      return np.asarray(image.convert('RGB').resize((size, size)))
  except (OSError, ValueError):
    return np.full((size, size), 200, np.uint8)


# --- --mode=retrieve ------------------------------------------------------------
def _match_in_split(query_SxSx1: np.ndarray, sketches_NxSxSx1: np.ndarray) -> Optional[int]:
  """The split sketch the query is a copy of (so its photo is the true match)."""
  diff = np.abs(sketches_NxSxSx1.astype(np.int16) - query_SxSx1[None].astype(np.int16))
  mean_diff = diff.reshape(len(diff), -1).mean(axis=1)
  best = int(np.argmin(mean_diff))
  return best if mean_diff[best] < 1.0 else None


def _gallery_cache_path(workdir: str, gallery_arg: str) -> str:
  if gallery_arg == 'test':
    return os.path.join(workdir, 'retrieval', 'gallery_test.npz')
  folder = os.path.abspath(gallery_arg)
  name = os.path.basename(folder.rstrip(os.sep)) or 'root'
  return os.path.join(workdir, 'retrieval',
                      f'gallery_{name}_{_hash(folder.encode())[:8]}.npz')


def retrieve(config: ml_collections.ConfigDict, workdir: str, query: str,
             gallery: str = 'test', top_k: int = 10,
             checkpoint: str = 'best') -> dict:
  """--mode=retrieve: top-K photos of `gallery` for the sketch file `query`.

  gallery: 'test' (the task's test photos), a folder of photos, or a gallery
  .npz written before. The gallery is embedded once and cached in
  <workdir>/retrieval/ (re-embedded when the checkpoint changed). Writes
  <workdir>/retrieval/<query>_top<k>.png and <query>_attention.png.
  """
  from sbir_jax import checkpointing  # Heavy trainer imports only here.
  from sbir_jax import tasks
  from sbir_jax import train
  from sbir_jax.models import dssa

  if config.task != 'fg_sbir':
    raise ValueError(f'--mode=retrieve answers sketch queries (config.task='
                     f'fg_sbir); this config has task {config.task!r}.')
  if top_k < 1:
    raise ValueError(f'--top_k={top_k}; give a positive number.')
  data = config.data
  # A bad query fails before anything slow happens.
  query_image = load_query(query, data.load_size)

  # --- Model: restored like --mode=eval ---------------------------------------
  mesh = sharding.make_mesh()
  task = tasks.get_task(config, mesh)
  state = train.create_state(task, config, mesh)
  manager = checkpointing.make_manager(workdir, config.keep_latest, read_only=True,
                                       selection_metric=task.selection_metric)
  step = checkpointing.resolve_step(manager, checkpoint)
  params = checkpointing.restore(manager, step, state).params
  fingerprint = model_fingerprint(config, task.model.output_dim, params)
  embed = functools.partial(task.embed_images, params)
  chunk = config.eval.batch_size * 8

  # --- Gallery: cached file, or embed once -------------------------------------
  test_photos = None
  if gallery == 'test':
    test_photos = task.splits['test'].photos
  if gallery.endswith('.npz') and not os.path.isdir(gallery):
    if not os.path.exists(gallery):
      raise FileNotFoundError(f'--gallery={gallery}: no such gallery file.')
    items = load_gallery(gallery, fingerprint)
    if items.source == 'test':
      test_photos = task.splits['test'].photos
  else:
    cache = _gallery_cache_path(workdir, gallery)
    items = None
    if os.path.exists(cache):
      try:
        items = load_gallery(cache, fingerprint)
        logging.info('Gallery embeddings read from %s', cache)
      except GalleryMismatchError as e:
        logging.info('Re-embedding the gallery: %s', e)
    if items is None:
      if gallery == 'test':
        ids = np.array([f'test/{i}' for i in range(len(test_photos))])
        read = lambda a, b: centre_crop(test_photos[a:b], data.crop_size)
        source = 'test'
      else:
        source = os.path.abspath(gallery)
        ids = np.array(list_images(source))
        read = lambda a, b: centre_crop(np.stack(
            [load_image(os.path.join(source, n), data.load_size) for n in ids[a:b]]),
            data.crop_size)
      embeddings = embed_gallery(embed, len(ids), read, chunk_size=chunk)
      items = Gallery(embeddings, ids, fingerprint, source)
      if jax.process_index() == 0:
        save_gallery(cache, items)
      logging.info('Gallery of %d embedded; saved to %s', len(ids), cache)

  # --- Search ------------------------------------------------------------------
  energy_params = params.get('energy')
  scorer = scorer_for_energy(config.loss.energy, energy_params)
  index = GalleryIndex(items.embeddings, scorer, mesh)
  k = min(top_k, index.size)
  crop = centre_crop(query_image[None], data.crop_size)
  q_1xD = embed(crop)
  top_scores, top_rows = index.search(q_1xD, k)
  top_scores, top_rows = top_scores[0], top_rows[0]

  true_row = None
  if items.source == 'test':
    true_row = _match_in_split(query_image, task.splits['test'].sketches)
  else:
    stem = os.path.splitext(os.path.basename(query))[0]
    stems = [os.path.splitext(os.path.basename(str(i)))[0] for i in items.ids]
    true_row = stems.index(stem) if stems.count(stem) == 1 else None
  true_rank = None if true_row is None else index.rank_of(q_1xD, true_row)

  # --- Pictures ----------------------------------------------------------------
  out_dir = os.path.join(workdir, 'retrieval')
  os.makedirs(out_dir, exist_ok=True)
  name = os.path.splitext(os.path.basename(query))[0]
  grid_path = os.path.join(out_dir, f'{name}_top{k}.png')
  attention_path = os.path.join(out_dir, f'{name}_attention.png')
  photos = [_gallery_picture(items, int(r), test_photos, data.load_size)
            for r in top_rows]
  captions = [f'#{i + 1} {items.ids[r]}\nscore {s:.3f}'
              for i, (r, s) in enumerate(zip(top_rows, top_scores))]
  hits = np.flatnonzero(top_rows == true_row) if true_row is not None else []
  note = (f'{os.path.basename(query)}: top {k} of {index.size} '
          f'({config.loss.energy} energy, step {step}); ' +
          ('true match unknown' if true_row is None else
           f'true match {items.ids[true_row]} at rank {true_rank + 1}'))
  if jax.process_index() == 0:
    results_grid(query_image[..., 0], photos, captions,
                 int(hits[0]) if len(hits) else None, note).save(grid_path)
  mask = None
  if config.model.attention:
    mask = task.model.apply(
        {'params': params},
        input_pipeline.normalize(jnp.asarray(crop), config.pixel_mean, config.input_scale),
        method=dssa.DSSA.attention_mask)
    if jax.process_index() == 0:
      attention_overlay(crop[0, ..., 0], np.asarray(mask)[0, ..., 0]).save(attention_path)
  else:
    attention_path = None
    logging.info('This model has no attention module: no attention picture.')

  result = {'query': query, 'gallery': items.source or gallery, 'step': step,
            'gallery_size': index.size,
            'top': [{'id': str(items.ids[r]), 'score': float(s)}
                    for r, s in zip(top_rows, top_scores)],
            'true_match': None if true_row is None else str(items.ids[true_row]),
            'true_match_rank': None if true_rank is None else true_rank + 1,
            'grid_png': grid_path, 'attention_png': attention_path}
  logging.info('Retrieval: %s', json.dumps(result))
  return result
