"""tf.data input for FG-SBIR: splits of any source, triplet sampling, 10-view eval.

Randomness is stateless and keyed by (seed, global example index): the triplet
that fills slot j of step s is the same whatever the number of hosts, and a
run resumed at step s sees exactly the batches an uninterrupted run would.
Images stay uint8 up to the device (`datasets/image_pipeline.py`).
"""
import dataclasses

import ml_collections
import numpy as np
import tensorflow as tf

from sbir_jax.datasets import fg_sources
from sbir_jax.datasets import image_pipeline
from sbir_jax.datasets import validation

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
  photo_classes: np.ndarray | None = None  # (M,) int32, for sources with classes.

  def __len__(self) -> int:
    """The number of sketches (queries)."""
    return len(self.sketches)

  @property
  def num_photos(self) -> int:
    return len(self.photos)




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
  return PairSplit(image_pipeline.resize_images(raw.sketches[keep], load_size),
                   image_pipeline.resize_images(raw.photos[keep_photos], load_size),
                   padded, np.array([len(p) for p in kept_pairs], np.int32),
                   new_index[raw.photo_index[keep]].astype(np.int32),
                   None if raw.photo_classes is None else raw.photo_classes[keep_photos])


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
  if fg_sources.splits_by_class(data):  # Val is a split of classes already.
    return {name: _select(raw, np.arange(len(raw.photos)), data.load_size)
            for name, raw in fg_sources.read_class_splits(builder, data).items()}
  train = fg_sources.read_split(builder, data, 'train')
  test = fg_sources.read_split(builder, data, 'test')
  train_ids, val_ids = validation.hold_out(len(train.photos), data.val_fraction,
                                           data.val_split_seed)
  splits = {'train': _select(train, train_ids, data.load_size),
            'test': _select(test, np.arange(len(test.photos)), data.load_size)}
  if len(val_ids):
    splits['val'] = _select(train, val_ids, data.load_size)
  return splits


def _candidate_mask(split: PairSplit) -> np.ndarray:
  """(N, M) bool: photo j is sketch i's match or an annotated candidate."""
  mask = np.zeros((len(split), split.num_photos), dtype=bool)
  mask[np.arange(len(split)), split.photo_index] = True
  for i, (pairs, count) in enumerate(zip(split.pairs, split.num_pairs)):
    mask[i, pairs[:count].reshape(-1)] = True
  return mask




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
        'sketch': image_pipeline.augment(sketches[anchor], s[5], data.crop_size, data.flip),
        'positive': image_pipeline.augment(photos[positive], s[6], data.crop_size, data.flip),
        'negative': image_pipeline.augment(photos[negative], s[7], data.crop_size, data.flip),
        # Photo ids let a loss use the batch's other photos as negatives;
        # match_id (the sketch's true photo) must never count as one.
        'sketch_id': tf.cast(anchor, tf.int32),
        'match_id': tf.cast(match, tf.int32),
        'positive_id': tf.cast(positive, tf.int32),
        'negative_id': tf.cast(negative, tf.int32),
    }

  ds = image_pipeline.example_indices(global_batch_size, start_step, process_index, process_count)
  ds = ds.map(make_triplet, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.batch(local_batch, drop_remainder=True).prefetch(2)







