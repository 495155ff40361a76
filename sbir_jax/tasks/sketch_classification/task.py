"""Sketch recognition: the pre-training of Sketch-a-Net for DSSA.

Class-labelled sketches (TU-Berlin and/or QuickDraw, `datasets/sketch_classes`)
train Sketch-a-Net with softmax cross-entropy; its trunk and fc6 then
initialise DSSA (`config.init_from` of an FG-SBIR run). Validation is carved
from train; acc@K averages the class probabilities over the 10 views.
"""
import dataclasses
import functools
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tensorflow as tf
import tensorflow_datasets as tfds

from sbir_jax.datasets import image_pipeline
from sbir_jax.core import precision
from sbir_jax.core import sharding
from sbir_jax.datasets import preparation
from sbir_jax.datasets import sketch_classes
from sbir_jax.datasets import validation
from sbir_jax.models import sketch_a_net


@dataclasses.dataclass(frozen=True)
class LabelledImages:
  images: np.ndarray  # (N, S, S, 1) uint8, at config.data.load_size
  labels: np.ndarray  # (N,) int32 into the task's class list

  def __len__(self) -> int:
    return len(self.labels)

  def select(self, index: np.ndarray) -> 'LabelledImages':
    return LabelledImages(self.images[index], self.labels[index])


def _read(builder: tfds.core.DatasetBuilder, split: str, size: int):
  """(images resized to `size`, class names) of one split, in id order."""
  images, names = [], []
  for example in tfds.as_numpy(builder.as_dataset(split=split)):
    images.append(image_pipeline.resize_images(example['image'][None], size)[0])
    names.append(example['label'].decode())
  return np.stack(images), np.array(names)


def load_splits(data: ml_collections.ConfigDict) -> tuple[dict[str, LabelledImages], list[str]]:
  """train / val / test over every source in data.sources, classes merged by name."""
  read = {'train': [], 'test': []}
  for source in data.sources:
    if source not in ('tu_berlin', 'quickdraw'):
      raise ValueError(f'config.data.sources has {source!r}; use tu_berlin and/or quickdraw.')
    builder = preparation.prepare(
        functools.partial(sketch_classes.SketchClasses, config=source,
                          data_dir=data.tfds_data_dir),
        data[f'{source}_dir'],
        f'Set --config.data.{source}_dir to the folder holding its sketches '
        f'(e.g. ../shared/data/{"tu_berlin_40" if source == "tu_berlin" else "quickdraw_14"}).')
    for split in read:
      read[split].append(_read(builder, split, data.load_size))
  class_names = sorted(set(np.concatenate([names for _, names in read['train']])))
  index = {name: i for i, name in enumerate(class_names)}

  def labelled(parts) -> LabelledImages:
    names = np.concatenate([n for _, n in parts])
    unknown = sorted(set(names) - set(index))
    if unknown:
      raise ValueError(f'Test classes {unknown[:5]} have no training sketch.')
    return LabelledImages(np.concatenate([im for im, _ in parts]),
                          np.array([index[n] for n in names], np.int32))

  train = labelled(read['train'])
  train_ids, val_ids = validation.hold_out(len(train), data.val_fraction,
                                           data.val_split_seed)
  splits = {'train': train.select(train_ids), 'test': labelled(read['test'])}
  if len(val_ids):
    splits['val'] = train.select(val_ids)
  return splits, class_names


class SketchClassificationTask:
  """The sketch recognition task (contract: sbir_jax/core/task.py)."""
  modes = {}

  def __init__(self, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
    self.config = config
    self.mesh = mesh

  @functools.cached_property
  def _data(self):
    return load_splits(self.config.data)

  @property
  def splits(self) -> dict[str, LabelledImages]:
    return self._data[0]

  @property
  def class_names(self) -> list[str]:
    return self._data[1]

  def load_data(self) -> dict[str, int]:
    return {**{name: len(s) for name, s in self.splits.items()},
            'classes': len(self.class_names)}

  def batch_spec(self) -> dict[str, jax.ShapeDtypeStruct]:
    rows = self.config.batch_size // jax.process_count()
    size = self.config.data.crop_size
    return {'image': jax.ShapeDtypeStruct((rows, size, size, 1), np.uint8),
            'label': jax.ShapeDtypeStruct((rows,), np.int32)}

  @functools.cached_property
  def model(self) -> sketch_a_net.SketchANetClassifier:
    m = self.config.model
    return sketch_a_net.SketchANetClassifier(
        num_classes=len(self.class_names), fc6_dim=m.fc6_dim,
        dropout_rate=m.dropout_rate, width_multiplier=m.width_multiplier,
        dtype=precision.compute_dtype(self.config))

  def init_variables(self, rng: jax.Array) -> tuple[Any, Any]:
    size = self.config.data.crop_size
    return self.model.init(rng, jnp.zeros((1, size, size, 1)))['params'], {}

  def _logits(self, variables, images, train: bool = False, rng=None):
    x = image_pipeline.normalize(images, self.config.pixel_mean, self.config.input_scale)
    return self.model.apply(variables, x, train,
                            rngs={'dropout': rng} if train else None)

  def loss_fn(self, params, model_state, batch: dict, rng: jax.Array):
    logits = self._logits({'params': params}, batch['image'], True, rng)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label']).mean()
    return loss, ({'train_acc': jnp.mean(jnp.argmax(logits, -1) == batch['label'])},
                  model_state)

  def train_batches(self, start_step: int) -> Iterator[dict]:
    """Uniformly sampled, augmented sketches; keyed by (seed, example index)."""
    data, train = self.config.data, self.splits['train']
    images, labels = tf.constant(train.images), tf.constant(train.labels)

    def example(index):
      seeds = tf.random.experimental.stateless_split(
          tf.stack([tf.cast(self.config.seed, tf.int64), index]), 2)
      item = tf.random.stateless_uniform([], seeds[0], 0, len(train), tf.int64)
      return {'image': image_pipeline.augment(images[item], seeds[1],
                                              data.crop_size, data.flip),
              'label': labels[item]}

    batch = self.config.batch_size // jax.process_count()
    ds = image_pipeline.example_indices(self.config.batch_size, start_step,
                                        jax.process_index(), jax.process_count())
    ds = ds.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return image_pipeline.iterate(ds.batch(batch, drop_remainder=True).prefetch(2))

  @functools.cached_property
  def _probabilities_fn(self):
    return jax.jit(lambda variables, images: jax.nn.softmax(self._logits(variables, images)),
                   out_shardings=sharding.replicated(self.mesh))

  def class_probabilities(self, variables: dict, split: str) -> np.ndarray:
    """(N, classes) probabilities of the split's sketches, mean over the views."""
    data = self.splits[split]
    views = image_pipeline.ten_views(data.images, self.config.data.crop_size,
                                     self.config.eval.num_views)
    n, v = views.shape[:2]
    probs = sharding.map_batches(functools.partial(self._probabilities_fn, variables),
                                 views.reshape((n * v,) + views.shape[2:]),
                                 self.config.eval.batch_size, self.mesh)
    return probs.reshape(n, v, -1).mean(axis=1)

  @property
  def predict_fns(self) -> dict:
    """'distances': classes are the gallery (distance = -probability), the
    true class the target; ties count against the query."""
    return {'distances': lambda variables, split: {
        'distances': -self.class_probabilities(variables, split),
        'targets': self.splits[split].labels.astype(np.int64)}}

  def write_outputs(self, variables: dict, workdir: str) -> None:
    del variables, workdir  # Nothing beyond the metrics.
