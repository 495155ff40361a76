"""Image inputs shared by the sketch tasks: resize, augment, example streams, views.

Randomness is stateless and keyed by (seed, global example index): the
example that fills slot j of step s is the same whatever the number of hosts,
and a run resumed at step s sees exactly the batches an uninterrupted run
would. Images stay uint8 up to the device; `normalize` runs inside jit.
"""
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
  """(N, S, S, C) uint8 -> (N, size, size, C): the dataset's (antialiased) resize."""
  if images.shape[1] == size:
    return images
  resized = tf.image.resize(images, (size, size), antialias=True)
  return np.asarray(tf.clip_by_value(tf.round(resized), 0, 255), np.uint8)


def augment(image, seed, crop_size: int, flip: bool):
  """Random crop and horizontal flip, drawn independently per image."""
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  image = tf.image.stateless_random_crop(
      image, (crop_size, crop_size, image.shape[-1]), crop_seed)
  if flip:
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
  return image


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
