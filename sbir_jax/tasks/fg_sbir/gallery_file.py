"""Gallery files (`.npz`): embeddings, their ids and the model's fingerprint.

A gallery is embedded once and saved (atomically) with a fingerprint of what
makes embeddings comparable: the model config, the preprocessing and a hash of
the weights. Reading a file checks it against the model at hand and refuses,
with `GalleryMismatchError` naming what differs, one embedded by another
model, whose scores would be meaningless.
"""
import dataclasses
import hashlib
import json
import os
from typing import Any, Optional

import jax
import ml_collections
import numpy as np


class GalleryMismatchError(ValueError):
  """A gallery file is unreadable, or was embedded by another model."""


@dataclasses.dataclass
class Gallery:
  """Embedded gallery: row i of `embeddings` is the item named `ids[i]`."""
  embeddings: np.ndarray  # (N, D) float32
  ids: np.ndarray  # (N,) str
  fingerprint: dict
  source: str = ''  # 'test', or the folder the images came from.


def short_hash(data: bytes) -> str:
  """16 hex digits of sha256: fingerprints and cache file names."""
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
          'config_hash': short_hash(json.dumps(relevant, sort_keys=True).encode()),
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
