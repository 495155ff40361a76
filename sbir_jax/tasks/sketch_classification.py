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

from sbir_jax import input_pipeline
from sbir_jax import sharding
from sbir_jax.datasets import preparation
from sbir_jax.evaluators import accuracy_at_k
from sbir_jax.datasets import sketch_classes
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
    images.append(input_pipeline.resize_images(example['image'][None], size)[0])
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
  order = np.random.default_rng(data.val_split_seed).permutation(len(train))
  num_val = int(round(len(train) * data.val_fraction))
  splits = {'train': train.select(np.sort(order[num_val:])),
            'test': labelled(read['test'])}
  if num_val:
    splits['val'] = train.select(np.sort(order[:num_val]))
  return splits, class_names


class SketchClassificationTask:
  """Everything the trainer needs for sketch recognition."""
  selection_metric = 'val_acc@1'

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

  @functools.cached_property
  def model(self) -> sketch_a_net.SketchANetClassifier:
    m = self.config.model
    return sketch_a_net.SketchANetClassifier(
        num_classes=len(self.class_names), fc6_dim=m.fc6_dim,
        dropout_rate=m.dropout_rate, width_multiplier=m.width_multiplier)

  def init_params(self, rng: jax.Array) -> Any:
    size = self.config.data.crop_size
    return self.model.init(rng, jnp.zeros((1, size, size, 1)))['params']

  def _logits(self, params, images, train: bool = False, rng=None):
    x = input_pipeline.normalize(images, self.config.pixel_mean, self.config.input_scale)
    return self.model.apply({'params': params}, x, train,
                            rngs={'dropout': rng} if train else None)

  def loss_fn(self, params, batch: dict, rng: jax.Array):
    logits = self._logits(params, batch['image'], True, rng)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label']).mean()
    return loss, {'train_acc': jnp.mean(jnp.argmax(logits, -1) == batch['label'])}

  def train_batches(self, start_step: int) -> Iterator[dict]:
    """Uniformly sampled, augmented sketches; keyed by (seed, example index)."""
    data, train = self.config.data, self.splits['train']
    images, labels = tf.constant(train.images), tf.constant(train.labels)

    def example(index):
      seeds = tf.random.experimental.stateless_split(
          tf.stack([tf.cast(self.config.seed, tf.int64), index]), 2)
      item = tf.random.stateless_uniform([], seeds[0], 0, len(train), tf.int64)
      return {'image': input_pipeline.augment(images[item], seeds[1],
                                              data.crop_size, data.flip),
              'label': labels[item]}

    batch = self.config.batch_size // jax.process_count()
    ds = input_pipeline.example_indices(self.config.batch_size, start_step,
                                        jax.process_index(), jax.process_count())
    ds = ds.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return input_pipeline.iterate(ds.batch(batch, drop_remainder=True).prefetch(2))

  @functools.cached_property
  def _probabilities_fn(self):
    return jax.jit(lambda params, images: jax.nn.softmax(self._logits(params, images)),
                   out_shardings=sharding.replicated(self.mesh))

  def evaluate(self, params, split: str) -> dict[str, float]:
    data = self.splits[split]
    views = input_pipeline.ten_views(data.images, self.config.data.crop_size,
                                     self.config.eval.num_views)
    n, v = views.shape[:2]
    probs = sharding.map_batches(self._probabilities_fn, params,
                                 views.reshape((n * v,) + views.shape[2:]),
                                 self.config.eval.batch_size, self.mesh)
    probs = probs.reshape(n, v, -1).mean(axis=1)
    # Classes are the gallery, the true class the target; ties count against.
    return accuracy_at_k.accuracy_at_k(-probs, self.config.eval.ks,
                                       targets=data.labels.astype(np.int64))
