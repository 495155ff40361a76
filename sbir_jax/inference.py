"""One inference API for `--mode=retrieve`, `--mode=serve` and your own code.

A retriever holds a restored model and its gallery, embedded once (and, for
FG-SBIR, cached as `<workdir>/retrieval/gallery_*.npz`, refused when another
model wrote it: `gallery_file.py`) and kept on the devices for the exact
sharded top-K of `gallery_index.GalleryIndex`:

    from sbir_jax import inference
    r = inference.load(config, workdir)                  # best checkpoint, test gallery
    sketch = r.read_sketch('305.png')                    # (S, S, 1) uint8, as the data
    scores, rows = r.search(r.embed_sketches(sketch[None]), k=10)
    [r.ids[i] for i in rows[0]]                          # best first

`SketchRetriever` serves FG-SBIR (DSSA and the RGB models; score = -energy
the model was trained with) and, with no trained checkpoint, the untrained
ImageNet EfficientNet-Lite0 trunk (pooled 1280-d features, cosine);
`ComposedRetriever` serves a composed-query (LBF / TIRG) checkpoint: a
gallery image as reference plus a modification text, the reference itself
left out of the results as in the Recall@K protocol. Both take many queries
per call: the server batches concurrent requests into one `search`.
"""
import functools
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

from sbir_jax.core import sharding
from sbir_jax.datasets import image_pipeline
from sbir_jax.tasks.fg_sbir import gallery_file
from sbir_jax.tasks.fg_sbir import gallery_index
from sbir_jax.tasks.fg_sbir import query_images
from sbir_jax.tasks.fg_sbir import scoring

UNTRAINED = 'untrained ImageNet EfficientNet-Lite0'
UNTRAINED_INPUT = 224  # Lite0's ImageNet resolution.


def query_buckets(n: int, devices: int) -> int:
  """Rows per device call for n queries: the next power of two (a multiple
  of the device count), so a server compiles a handful of shapes, not one
  per batch size."""
  size = 1
  while size < n:
    size *= 2
  return -(-size // devices) * devices


def query_chunks(n: int, devices: int, largest: int) -> list[int]:
  """Rows per device call for n queries: `query_buckets` sizes (at most
  `largest`), split so that no call is more than a quarter padding: 33
  queries are a call of 32 and one of 1, not one of 64 padded with 31 copies
  (on the 2-core CPU the model's time per query does not fall with the batch,
  so each padding row costs as much as a real query); 63 are one call of 64."""
  sizes = []
  while n > 0:
    size = min(query_buckets(n, devices), largest)
    half = min(query_buckets(n, 1) // 2, largest)
    half = -(-half // devices) * devices
    if size - n > n // 4 and 0 < half < n:
      size = half
    sizes.append(size)
    n -= size
  return sizes


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


def gallery_cache_path(workdir: str, gallery_arg: str, tag: str = '') -> str:
  """<workdir>/retrieval/gallery_<test | folder name_hash>[_<tag>].npz."""
  suffix = f'_{tag}' if tag else ''
  if gallery_arg == 'test':
    return os.path.join(workdir, 'retrieval', f'gallery_test{suffix}.npz')
  folder = os.path.abspath(gallery_arg)
  name = os.path.basename(folder.rstrip(os.sep)) or 'root'
  return os.path.join(workdir, 'retrieval', f'gallery_{name}_'
                      f'{gallery_file.short_hash(folder.encode())[:8]}{suffix}.npz')


def _thumbnails(images_NxSxSx1: np.ndarray, side: int = 16) -> np.ndarray:
  """(N, side*side) block means: a cheap first look for `match_in_split`."""
  n, s = images_NxSxSx1.shape[:2]
  cut = s - s % side
  x = images_NxSxSx1[:, :cut, :cut, 0].astype(np.float32)
  return x.reshape(n, side, cut // side, side, cut // side).mean(axis=(2, 4)).reshape(n, -1)


def match_in_split(query_SxSx1: np.ndarray, sketches_NxSxSx1: np.ndarray,
                   thumbnails_NxT: Optional[np.ndarray] = None) -> Optional[int]:
  """The split sketch the query is a copy of (so its photo is the true match):
  mean absolute pixel difference under 1. With `thumbnails_NxT`
  (`_thumbnails` of the sketches) only the closest thumbnail is compared in
  full, so a server checks each query in well under a millisecond."""
  if thumbnails_NxT is not None:
    near = np.abs(thumbnails_NxT - _thumbnails(query_SxSx1[None])).mean(axis=1)
    best = int(np.argmin(near))
    candidates = sketches_NxSxSx1[best:best + 1]
  else:
    best, candidates = 0, sketches_NxSxSx1
  diff = np.abs(candidates.astype(np.int16) - query_SxSx1[None].astype(np.int16))
  mean_diff = diff.reshape(len(diff), -1).mean(axis=1)
  pick = int(np.argmin(mean_diff))
  return best + pick if mean_diff[pick] < 1.0 else None


# --- FG-SBIR --------------------------------------------------------------------
class SketchRetriever:
  """Sketch in, top-K gallery photos out (FG-SBIR, or the untrained trunk).

  Build with `load` (from a workdir) or `SketchRetriever(task, state,
  workdir, gallery)` with a task and its restored state (state None: the
  untrained ImageNet trunk). gallery: 'test' (the task's test photos), a
  folder of photos, or a gallery .npz written before.
  """

  def __init__(self, task: Any, state: Optional[Any], workdir: str,
               gallery: str = 'test', *, embeddings: Optional[gallery_file.Gallery] = None):
    self.task, self.config, self.mesh = task, task.config, task.mesh
    self.trained = state is not None
    data = self.config.data
    self.load_size, self.crop_size = data.load_size, data.crop_size
    if self.trained:
      from sbir_jax.models import dssa
      self.step = int(state.step)
      self.variables = state.variables
      params = state.params
      fingerprint = gallery_file.model_fingerprint(self.config, task.model.output_dim,
                                                   params)
      self.scorer = scoring.scorer_for_energy(self.config.loss.energy,
                                              params.get('energy'))
      self.score_name = f'-{self.config.loss.energy} energy'
      self.has_attention = isinstance(task.model, dssa.DSSA) and bool(task.model.attention)
      cache_tag = ''
    else:
      self.step, self.variables = None, None
      fingerprint = self._untrained_fingerprint()
      self.scorer = scoring.Scorer('inner_product')  # Of unit vectors: cosine.
      self.score_name = 'cosine'
      self.has_attention = False
      cache_tag = 'untrained_lite0'
    self.description = (f"{self.config.model.name} step {self.step}" if self.trained
                        else UNTRAINED + ' (pooled features, cosine): no trained '
                        'checkpoint in the workdir')
    self.items = embeddings or self._gallery(workdir, gallery, fingerprint, cache_tag)
    self.ids = [str(i) for i in self.items.ids]
    self.row_of = {name: row for row, name in enumerate(self.ids)}
    self.index = gallery_index.GalleryIndex(self.items.embeddings, self.scorer, self.mesh)
    self.size = self.index.size

  # --- embedding -----------------------------------------------------------------
  def read_sketch(self, path: str) -> np.ndarray:
    """A sketch file as the data is read: (load_size, load_size, 1) uint8."""
    return query_images.load_query(path, self.load_size)

  def read_sketch_bytes(self, data: bytes, name: str = 'upload') -> np.ndarray:
    """The same for the bytes of an uploaded file (same conversion, same ranks)."""
    return query_images.load_query_bytes(data, name, self.load_size)

  def read_sketches_bytes(self, uploads: Sequence[tuple[bytes, str]]) -> list:
    """Many uploads (data, name) at once, for a server's batch: per upload
    its sketch exactly as `read_sketch_bytes` gives it, or the exception that
    refuses it (`query_images.ImageFileError` for one that cannot be used;
    any other error while decoding one upload is its own too, so that one
    malformed file never fails the others). The dataset's resize runs
    once for the whole batch (one TensorFlow call instead of one per upload;
    each image gets the same pixels as alone: tests/test_serve.py)."""
    out: list = []
    raw = []
    for data, name in uploads:
      try:
        raw.append(query_images.read_image_bytes(data, name))
        out.append(None)
      except Exception as e:  # noqa: BLE001  (this upload's answer, not the batch's)
        out.append(e)
    if not raw:
      return out
    resized = iter(image_pipeline.resize_images(np.stack(raw)[..., None], self.load_size))
    for i, (_, name) in enumerate(uploads):
      if out[i] is None:
        try:
          # The refusal of `load_query_bytes`, on the resized image as there.
          out[i] = query_images._check_not_blank(next(resized), name)  # pylint: disable=protected-access
        except query_images.ImageFileError as e:
          out[i] = e
    return out

  def _crop(self, images_NxSxSxC: np.ndarray) -> np.ndarray:
    return query_images.centre_crop(np.asarray(images_NxSxSxC), self.crop_size)

  def embed_sketches(self, sketches_NxSxSx1: np.ndarray) -> np.ndarray:
    """(N, load, load, 1) uint8 sketches -> (N, D) query embeddings."""
    return self.embed_sketches_with_attention(sketches_NxSxSx1)[0]

  def embed_sketches_with_attention(self, sketches_NxSxSx1: np.ndarray
                                    ) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """((N, D) query embeddings, DSSA's attention masks (N, h, w) over the
    model's input crops, or None for models without attention and the
    untrained trunk). One compiled call gives both (the trunk is shared), and
    every query path uses it, so the command line and the server embed a
    sketch with the same program and rank it the same."""
    crops = self._crop(sketches_NxSxSx1)
    if not self.has_attention:
      return self._embed(crops, 'sketch'), None
    embeddings, masks = [], []
    for piece, size in self._pieces(crops):
      for n, global_batch in sharding.padded_global_batches([piece], size, self.mesh):
        e, m = self._embed_and_attend_fn(self.variables, global_batch)
        embeddings.append(np.asarray(e, np.float32)[:n])
        masks.append(np.asarray(m, np.float32)[:n, ..., 0])
    return np.concatenate(embeddings), np.concatenate(masks)

  def _pieces(self, crops: np.ndarray) -> list:
    """(rows, call size) of the device calls for these queries: `query_chunks`."""
    out, start = [], 0
    for size in query_chunks(len(crops), self.mesh.size, self.config.eval.batch_size):
      out.append((crops[start:start + size], size))
      start += size
    return out

  def embed_photos(self, photos_NxSxSxC: np.ndarray) -> np.ndarray:
    """(N, load, load, C) uint8 photos as the model reads them -> (N, D)."""
    return self._embed(self._crop(photos_NxSxSxC), 'photo')

  def _embed(self, crops: np.ndarray, domain: str, batch_size: Optional[int] = None
             ) -> np.ndarray:
    if batch_size is None:  # Queries: calls of bucket sizes, little padding.
      return np.concatenate([self._embed(piece, domain, size)
                             for piece, size in self._pieces(crops)])
    if self.trained:
      return np.asarray(self.task.embed_images(self.variables, crops, domain,
                                               batch_size=batch_size), np.float32)
    return sharding.map_batches(self._untrained_fn, crops, batch_size, self.mesh)

  @functools.cached_property
  def _untrained_fn(self):
    from sbir_jax.models import convert_efficientnet
    from sbir_jax.models import efficientnet_lite
    model = efficientnet_lite.EfficientNetLite0()
    variables = jax.device_put(convert_efficientnet.load_pretrained(),
                               sharding.replicated(self.mesh))

    def features(images):
      if images.shape[-1] == 1:
        images = jnp.repeat(images, 3, axis=-1)
      x = efficientnet_lite.preprocess(images, UNTRAINED_INPUT)
      f = model.apply(variables, x, method=model.pooled_features)
      return f / jnp.linalg.norm(f, axis=-1, keepdims=True).clip(1e-12)
    return jax.jit(features, out_shardings=sharding.replicated(self.mesh))

  def _untrained_fingerprint(self) -> dict:
    relevant = {'trunk': 'efficientnet_lite0', 'input': UNTRAINED_INPUT,
                'load_size': self.load_size, 'crop_size': self.crop_size,
                'photo_input': self.config.data.get('photo_input', 'edge')}
    return {'embedding_dim': 1280, 'energy': 'cosine',
            'config_name': f'untrained_lite0/{self.config.data.dataset}',
            'config_hash': gallery_file.short_hash(
                json.dumps(relevant, sort_keys=True).encode()),
            'params_hash': 'imagenet_lite0'}

  # --- the gallery --------------------------------------------------------------
  def _gallery(self, workdir: str, gallery: str, fingerprint: dict,
               cache_tag: str) -> gallery_file.Gallery:
    """The cached gallery file, or the gallery embedded once (and cached)."""
    if gallery.endswith('.npz') and not os.path.isdir(gallery):
      if not os.path.exists(gallery):
        raise FileNotFoundError(f'--gallery={gallery}: no such gallery file.')
      return gallery_file.load_gallery(gallery, fingerprint)
    cache = gallery_cache_path(workdir, gallery, cache_tag)
    if os.path.exists(cache):
      try:
        items = gallery_file.load_gallery(cache, fingerprint)
        logging.info('Gallery embeddings read from %s', cache)
        return items
      except gallery_file.GalleryMismatchError as e:
        logging.info('Re-embedding the gallery: %s', e)
    data = self.config.data
    if gallery == 'test':
      photos = self.task.splits['test'].photos
      ids = np.array([f'test/{i}' for i in range(len(photos))])
      read = lambda a, b: photos[a:b]
      source = 'test'
    else:
      source = os.path.abspath(gallery)
      ids = np.array(query_images.list_images(source))
      # Photos as the model was trained on them: RGB, or edge maps.
      photo_input = data.get('photo_input', 'edge')
      stored_as_edges = data.source == 'qmul_v1'
      read = lambda a, b: np.stack(
          [query_images.load_photo(os.path.join(source, n), data.load_size,
                                   photo_input, stored_as_edges) for n in ids[a:b]])
    chunk = self.config.eval.batch_size * 8
    embeddings = embed_gallery(
        lambda images: self._embed(self._crop(images), 'photo',
                                   self.config.eval.batch_size),
        len(ids), read, chunk_size=chunk)
    items = gallery_file.Gallery(embeddings, ids, fingerprint, source)
    if jax.process_index() == 0:
      gallery_file.save_gallery(cache, items)
    logging.info('Gallery of %d embedded; saved to %s', len(ids), cache)
    return items

  @functools.cached_property
  def test_photos(self) -> Optional[np.ndarray]:
    return self.task.splits['test'].photos if self.items.source == 'test' else None

  def gallery_image(self, row: int) -> np.ndarray:
    """What to show for gallery row `row`: (H, W) or (H, W, 3) uint8, a grey
    tile if the file is gone. Only files the gallery lists are ever read."""
    if self.test_photos is not None:
      photo = self.test_photos[row]
      return photo[..., 0] if photo.shape[-1] == 1 else photo
    path = os.path.join(self.items.source, self.ids[row])
    try:
      with Image.open(path) as image:
        return np.asarray(image.convert('RGB').resize((self.load_size,) * 2))
    except (OSError, ValueError):
      return np.full((self.load_size, self.load_size), 200, np.uint8)

  # --- search -------------------------------------------------------------------
  def search(self, q_BxD: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores (B, k) best first, gallery rows (B, k)): the exact sharded top-K.
    The queries are padded to a bucket size, so any B reuses a compiled search."""
    q_BxD = np.asarray(q_BxD, np.float32)
    b = len(q_BxD)
    padded = query_buckets(b, 1)
    if padded != b:
      q_BxD = np.concatenate([q_BxD, np.repeat(q_BxD[:1], padded - b, axis=0)])
    scores, rows = self.index.search(q_BxD, min(k, self.size))
    return scores[:b], rows[:b]

  def rank_of(self, q_1xD: np.ndarray, row: int) -> int:
    """0-based rank of gallery row `row` for one query."""
    return self.index.rank_of(np.asarray(q_1xD, np.float32), row)

  def true_row(self, sketch_SxSx1: np.ndarray, name: str = '') -> Optional[int]:
    """The gallery row of the query's true match, when known: a copy of a test
    sketch (test gallery), or a gallery file with the query file's name."""
    if self.items.source == 'test':
      return match_in_split(sketch_SxSx1, self.task.splits['test'].sketches,
                            self._test_thumbnails)
    if not name or not os.path.isdir(self.items.source):
      return None
    return self._row_of_stem.get(os.path.splitext(os.path.basename(name))[0])

  @functools.cached_property
  def _test_thumbnails(self) -> np.ndarray:
    return _thumbnails(self.task.splits['test'].sketches)

  @functools.cached_property
  def _row_of_stem(self) -> dict:
    """File stem -> gallery row, for stems that name exactly one file."""
    rows = {}
    for row, name in enumerate(self.ids):
      rows.setdefault(os.path.splitext(os.path.basename(name))[0], []).append(row)
    return {stem: found[0] for stem, found in rows.items() if len(found) == 1}

  def attention_masks(self, sketches_NxSxSx1: np.ndarray) -> Optional[np.ndarray]:
    """DSSA's attention masks (N, h, w) over the model's input crops, or None."""
    return self.embed_sketches_with_attention(sketches_NxSxSx1)[1]

  @functools.cached_property
  def _embed_and_attend_fn(self):
    from sbir_jax.models import dssa

    def embed_and_attend(variables, crops):
      x = self.task.prepare_inputs(crops, 'sketch')
      return (self.task.model.apply(variables, x, method=dssa.DSSA.embed),
              self.task.model.apply(variables, x, method=dssa.DSSA.attention_mask))
    return jax.jit(embed_and_attend, out_shardings=sharding.replicated(self.mesh))


# --- Composed queries (LBF / TIRG) ---------------------------------------------------
class ComposedRetriever:
  """Reference image (a gallery id) + modification text in, top-K images out.

  The gallery is the test images (TIRG's protocol ranks all of them),
  embedded once at start; scores are cosine, as Recall@K ranks; the
  reference image itself is never returned. An empty text is refused with
  the task's `EmptyTextError`; unknown words become the unknown-word id, as
  in training and evaluation.
  """

  def __init__(self, task: Any, state: Any, gallery: str = 'test'):
    if gallery != 'test':
      raise ValueError(f'--gallery={gallery}: a composed-query model serves its '
                       "test images; use --gallery=test.")
    self.task, self.config, self.mesh = task, task.config, task.mesh
    self.trained, self.step = True, int(state.step)
    self.variables = state.variables
    self.split = task.splits['test']
    self.image_rows = np.asarray(self.split.gallery_ids)
    self.ids = [f'test/{int(i)}' for i in self.image_rows]
    self.row_of = {name: row for row, name in enumerate(self.ids)}
    self.description = f'{self.config.model.name} step {self.step}'
    self.score_name = 'cosine'
    self.has_attention = False
    self.examples = [(self.row_of[f'test/{int(s)}'], t)
                     for s, t in zip(self.split.source_ids[:20], self.split.texts[:20])]
    g = task.embed_gallery(self.variables, self.split.inputs(self.image_rows))
    g = np.asarray(g, np.float32)
    self.embeddings = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
    self.index = gallery_index.GalleryIndex(self.embeddings,
                                            scoring.Scorer('inner_product'), self.mesh)
    self.size = self.index.size

  def embed_composed(self, rows: Sequence[int], texts: Sequence[str]) -> np.ndarray:
    """(B, D) unit-norm composed queries of gallery rows + texts."""
    tokens = self.task.vocab.encode(list(texts), self.config.data.max_text_length)
    # As the task's queries: the references' own rendering (2D in 2D-to-3D).
    images = self.split.reference_inputs(self.image_rows[np.asarray(rows)])
    q = np.asarray(self.task.embed_queries(self.variables, images, tokens), np.float32)
    return q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)

  def search(self, q_BxD: np.ndarray, k: int, exclude_rows: Sequence[int]
             ) -> tuple[list, list]:
    """Per query (scores, rows) of its top k, its reference row left out."""
    q_BxD = np.asarray(q_BxD, np.float32)
    b = len(q_BxD)
    padded = query_buckets(b, 1)
    if padded != b:
      q_BxD = np.concatenate([q_BxD, np.repeat(q_BxD[:1], padded - b, axis=0)])
    k = min(k, self.size - 1)
    scores, rows = self.index.search(q_BxD, k + 1)
    out_scores, out_rows = [], []
    for s, r, skip in zip(scores[:b], rows[:b], exclude_rows):
      keep = r != skip
      out_scores.append(s[keep][:k])
      out_rows.append(r[keep][:k])
    return out_scores, out_rows

  def gallery_image(self, row: int) -> np.ndarray:
    return self.split.images[self.image_rows[row]]


# --- Building one from a workdir --------------------------------------------------
def load(config: ml_collections.ConfigDict, workdir: str, checkpoint: str = 'best',
         gallery: str = 'test', *, allow_untrained: bool = False):
  """A retriever for the config's task from the checkpoint in `workdir`.

  allow_untrained: with no checkpoint at all in the workdir, an FG-SBIR
  config serves the untrained ImageNet trunk instead of failing.
  """
  from sbir_jax.core import checkpointing
  from sbir_jax.core import task as task_lib
  from sbir_jax.core import trainer

  if config.task not in ('fg_sbir', 'composed'):
    raise ValueError(f'Task {config.task!r} has no retriever; serving knows fg_sbir '
                     'and composed configs.')
  try:
    task, state = trainer.restore_for_mode(config, workdir, checkpoint)
  except checkpointing.CheckpointError as e:
    no_checkpoint = '. Train first' in str(e)  # None at all (not: none of `best`).
    if not (allow_untrained and config.task == 'fg_sbir' and no_checkpoint):
      raise
    logging.warning('%s Serving the %s instead.', e, UNTRAINED)
    task = task_lib.make_task(config, sharding.make_mesh())
    task.load_data()
    state = None
  if config.task == 'composed':
    return ComposedRetriever(task, state, gallery)
  return SketchRetriever(task, state, workdir, gallery)
