"""tf.data input for FG-SBIR: splits of any source, triplet sampling, 10-view eval.

Randomness is stateless and keyed by (seed, global example index): the triplet
that fills slot j of step s is the same whatever the number of hosts, and a
run resumed at step s sees exactly the batches an uninterrupted run would.
Images stay uint8 up to the device; `normalize` runs inside the jitted step.
"""
import dataclasses
from typing import Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from sbir_jax.datasets import fg_sources

TRIPLET_SAMPLINGS = ('annotated', 'true_match')


@dataclasses.dataclass(frozen=True)
class PairSplit:
  """Sketch i matches photo `photo_index[i]` (QMUL V1: photo i; Chair-V2:
  several sketches per photo). `pairs[i, :num_pairs[i]]` are sketch i's
  annotated [more similar, less similar] photo indices (within this split)."""
  sketches: np.ndarray  # (N, S, S, 1) uint8
  photos: np.ndarray  # (M, S, S, C) uint8, M <= N; C = 1 (edge map) or 3 (RGB)
  pairs: np.ndarray  # (N, P, 2) int32, padded
  num_pairs: np.ndarray  # (N,) int32
  photo_index: np.ndarray  # (N,) int32 in [0, M)

  def __len__(self) -> int:
    """The number of sketches (queries)."""
    return len(self.sketches)

  @property
  def num_photos(self) -> int:
    return len(self.photos)


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
  """(N, S, S, C) uint8 -> (N, size, size, C): the dataset's (antialiased) resize."""
  if images.shape[1] == size:
    return images
  resized = tf.image.resize(images, (size, size), antialias=True)
  return np.asarray(tf.clip_by_value(tf.round(resized), 0, 255), np.uint8)


def _select(raw: fg_sources.RawSplit, keep_photos: np.ndarray,
            load_size: int) -> PairSplit:
  """Keeps photos `keep_photos` with all their sketches, re-indexing photos."""
  new_index = np.full(len(raw.photos), -1, np.int64)
  new_index[keep_photos] = np.arange(len(keep_photos))
  keep = np.flatnonzero(new_index[raw.photo_index] >= 0)  # In sketch order.
  kept_pairs = []
  for i in keep:
    pairs = new_index[np.asarray(raw.triplets[i], np.int64).reshape(-1, 2)]
    # Pairs naming a held-out photo cannot be trained on.
    kept_pairs.append(pairs[(pairs >= 0).all(axis=1)])
  width = max([1] + [len(p) for p in kept_pairs])
  padded = np.zeros((len(keep), width, 2), np.int32)
  for row, pairs in enumerate(kept_pairs):
    padded[row, :len(pairs)] = pairs
  return PairSplit(resize_images(raw.sketches[keep], load_size),
                   resize_images(raw.photos[keep_photos], load_size),
                   padded, np.array([len(p) for p in kept_pairs], np.int32),
                   new_index[raw.photo_index[keep]].astype(np.int32))


def build_builder(data: ml_collections.ConfigDict):
  """Prepares (if needed) and returns the TFDS builder of `data.source`."""
  return fg_sources.build_builder(data)


def load_splits(data: ml_collections.ConfigDict) -> dict[str, PairSplit]:
  """train / val / test of `data.source`; val is carved from train by photo.

  Val takes `val_fraction` of the train photos with all their sketches, so
  its photos are unseen in training, as the test photos are. With one sketch
  per photo (QMUL V1) this is the carving by sketch id it always was.
  """
  builder = build_builder(data)
  train = fg_sources.read_split(builder, data, 'train')
  test = fg_sources.read_split(builder, data, 'test')
  n = len(train.photos)
  num_val = int(round(n * data.val_fraction))
  order = np.random.default_rng(data.val_split_seed).permutation(n)
  val_ids, train_ids = np.sort(order[:num_val]), np.sort(order[num_val:])
  splits = {'train': _select(train, train_ids, data.load_size),
            'test': _select(test, np.arange(len(test.photos)), data.load_size)}
  if num_val:
    splits['val'] = _select(train, val_ids, data.load_size)
  return splits


def _candidate_mask(split: PairSplit) -> np.ndarray:
  """(N, M) bool: photo j is sketch i's match or an annotated candidate."""
  mask = np.zeros((len(split), split.num_photos), dtype=bool)
  mask[np.arange(len(split)), split.photo_index] = True
  for i, (pairs, count) in enumerate(zip(split.pairs, split.num_pairs)):
    mask[i, pairs[:count].reshape(-1)] = True
  return mask


def augment(image, seed, crop_size: int, flip: bool):
  """Random crop and horizontal flip, drawn independently per image."""
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  image = tf.image.stateless_random_crop(
      image, (crop_size, crop_size, image.shape[-1]), crop_seed)
  if flip:
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
  return image


def triplet_dataset(split: PairSplit, data: ml_collections.ConfigDict, *,
                    global_batch_size: int, seed: int, start_step: int = 0,
                    process_index: int = 0,
                    process_count: int = 1) -> tf.data.Dataset:
  """Endless per-host batches: uint8 crops `sketch`, `positive`, `negative`,
  the sketch's index `sketch_id` and the photo indices `match_id` (the
  sketch's true photo), `positive_id`, `negative_id`.

  'true_match': positive = the sketch's photo, negative = a uniformly drawn
  other photo. 'annotated': a random annotated [more, less similar] pair of
  the sketch, the negative replaced by an easy one (outside the sketch's
  candidates) with probability easy_negative_fraction; sketches without
  pairs fall back to 'true_match'.
  """
  if data.triplet_sampling not in TRIPLET_SAMPLINGS:
    raise ValueError(f'config.data.triplet_sampling={data.triplet_sampling!r}; '
                     f'choose one of {TRIPLET_SAMPLINGS}.')
  local_batch = global_batch_size // process_count
  n, num_photos = len(split), split.num_photos
  if num_photos < 2:
    raise ValueError(f'The split has {num_photos} photo(s); a triplet needs a '
                     'negative photo besides the match. Lower val_fraction or '
                     'use more data.')
  sketches = tf.constant(split.sketches)
  photos = tf.constant(split.photos)
  photo_index = tf.constant(split.photo_index)
  pairs = tf.constant(split.pairs)
  num_pairs = tf.constant(split.num_pairs)
  # Easy negatives come from outside the sketch's candidate set.
  easy_logits = tf.constant(np.where(_candidate_mask(split), -1e9, 0.0), tf.float32)
  annotated = data.triplet_sampling == 'annotated'

  def random_other(photo, seed_):
    return (photo + 1 + tf.random.stateless_uniform(
        [], seed_, 0, num_photos - 1, tf.int64)) % num_photos

  def make_triplet(example_index):
    s = tf.random.experimental.stateless_split(
        tf.stack([tf.cast(seed, tf.int64), example_index]), 8)
    anchor = tf.random.stateless_uniform([], s[0], 0, n, tf.int64)
    match = tf.cast(photo_index[anchor], tf.int64)  # The sketch's own photo.
    positive, negative = match, random_other(match, s[1])
    if annotated:
      count = tf.cast(num_pairs[anchor], tf.int64)
      k = tf.random.stateless_uniform([], s[2], 0, tf.maximum(count, 1), tf.int64)
      pair = tf.cast(pairs[anchor, k], tf.int64)
      easy = tf.random.stateless_categorical(easy_logits[anchor][None], 1, s[3])[0, 0]
      use_easy = tf.random.stateless_uniform([], s[4]) < data.easy_negative_fraction
      has_pairs = count > 0
      positive = tf.where(has_pairs, pair[0], match)
      negative = tf.where(has_pairs, tf.where(use_easy, easy, pair[1]), negative)
    return {
        'sketch': augment(sketches[anchor], s[5], data.crop_size, data.flip),
        'positive': augment(photos[positive], s[6], data.crop_size, data.flip),
        'negative': augment(photos[negative], s[7], data.crop_size, data.flip),
        # Photo ids let a loss use the batch's other photos as negatives;
        # match_id (the sketch's true photo) must never count as one.
        'sketch_id': tf.cast(anchor, tf.int32),
        'match_id': tf.cast(match, tf.int32),
        'positive_id': tf.cast(positive, tf.int32),
        'negative_id': tf.cast(negative, tf.int32),
    }

  ds = example_indices(global_batch_size, start_step, process_index, process_count)
  ds = ds.map(make_triplet, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.batch(local_batch, drop_remainder=True).prefetch(2)


def example_indices(global_batch_size: int, start_step: int = 0,
                    process_index: int = 0, process_count: int = 1) -> tf.data.Dataset:
  """Endless global example indices of this host's slots, from `start_step` on.

  Slot j of step s is example s * global_batch_size + j; host p owns the
  p-th contiguous block of each step, so the examples a step sees do not
  depend on the number of hosts.
  """
  if global_batch_size % process_count:
    raise ValueError(f'Batch size {global_batch_size} is not divisible by the '
                     f'{process_count} processes.')
  local_batch = global_batch_size // process_count
  first = process_index * local_batch
  return tf.data.Dataset.range(start_step, 2**62).flat_map(
      lambda step: tf.data.Dataset.range(step * global_batch_size + first,
                                         step * global_batch_size + first + local_batch))


def iterate(ds: tf.data.Dataset) -> Iterator[dict[str, np.ndarray]]:
  return iter(tfds.as_numpy(ds))


def ten_views(images: np.ndarray, crop_size: int, num_views: int = 10) -> np.ndarray:
  """(N, S, S, C) -> (N, V, c, c, C): 4 corners + centre, then their flips."""
  size = images.shape[1]
  far = size - crop_size
  centre = far // 2
  offsets = [(0, 0), (0, far), (far, 0), (far, far), (centre, centre)]
  crops = [images[:, y:y + crop_size, x:x + crop_size] for y, x in offsets]
  crops += [c[:, :, ::-1] for c in crops]
  if num_views not in (1, 10):
    raise ValueError(f'config.eval.num_views={num_views}; use 10 (the paper) '
                     'or 1 (centre crop only).')
  views = crops if num_views == 10 else [crops[4]]
  return np.stack(views, axis=1)


def normalize(images_uint8: jax.Array, mean: float, scale: float) -> jax.Array:
  """Mean subtraction (the paper's 250.42) and an optional scale, on device."""
  return (images_uint8.astype(jnp.float32) - mean) * scale
