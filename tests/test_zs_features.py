"""Feature extraction: sharded EfficientNet-Lite0 features, cached by id and reused."""
import os

import ml_collections
import numpy as np
import pytest

from sbir_jax.tasks.zs_sbir import features
from sbir_jax.core import sharding
from sbir_jax.datasets import tu_berlin
from tests import helpers


def _cfg(tmp_path, **kw):
  cfg = dict(extractor='efficientnet_lite0', dim=1280, image_size=64, batch_size=16,
             weights='', cache_dir=str(tmp_path / 'cache'), precomputed_dir='')
  cfg.update(kw)
  return ml_collections.ConfigDict(cfg)


@pytest.fixture(scope='module')
def sketches():
  s = tu_berlin.load(helpers.require_data('tu_berlin_40'), ('test',), ['ant', 'camel'])
  return s  # 20 real TU-Berlin sketches.


def test_extract_once_then_reuse_the_cache(tmp_path, sketches):
  mesh = sharding.make_mesh()  # 8 simulated devices: the batch is sharded.
  cfg = _cfg(tmp_path)
  directory = features.cache_dir(cfg, 'some/data')
  first = features.FeatureStore(cfg, mesh, directory)
  part = first.get(sketches.select(np.arange(0, 20, 2)))
  assert part.shape == (10, 1280) and first.num_extracted == 10
  assert np.all(np.isfinite(part)) and part.std() > 0
  full = first.get(sketches)  # Only the 10 ids not cached yet are extracted.
  assert first.num_extracted == 20
  np.testing.assert_allclose(full[::2], part, rtol=1e-5, atol=1e-6)
  # A new run (new store) reads everything from the cache.
  second = features.FeatureStore(cfg, mesh, directory)
  again = second.get(sketches)
  assert second.num_extracted == 0
  np.testing.assert_array_equal(again, full)
  assert os.listdir(directory) == ['tu_berlin.npz']
  # The same images through a different batch size give the same features.
  other = features.FeatureStore(_cfg(tmp_path, batch_size=8), mesh,
                                str(tmp_path / 'other'))
  np.testing.assert_allclose(other.get(sketches), full, rtol=1e-4, atol=1e-5)


def test_precomputed_features_are_read_and_checked(tmp_path, sketches):
  mesh = sharding.make_mesh()
  pre = tmp_path / 'pre'
  os.makedirs(pre)
  feats = np.random.default_rng(0).normal(size=(len(sketches), 4096)).astype(np.float32)
  np.savez(pre / 'tu_berlin.npz', ids=sketches.ids[::-1], features=feats[::-1])
  cfg = _cfg(tmp_path, extractor='precomputed', dim=4096, precomputed_dir=str(pre))
  store = features.FeatureStore(cfg, mesh, features.cache_dir(cfg, 'x'))
  np.testing.assert_array_equal(store.get(sketches), feats)  # Matched by id.
  wrong = _cfg(tmp_path, extractor='precomputed', dim=1280, precomputed_dir=str(pre))
  with pytest.raises(features.FeatureError,
                     match=r'4096-d features but config.features.dim=1280'):
    features.FeatureStore(wrong, mesh, str(pre)).get(sketches)
  np.savez(pre / 'tu_berlin.npz', ids=sketches.ids[:5], features=feats[:5])
  with pytest.raises(features.FeatureError, match='lacks features of 15 image'):
    features.FeatureStore(cfg, mesh, str(pre)).get(sketches)


def test_corrupt_cache_and_bad_extractor_are_named(tmp_path, sketches):
  mesh = sharding.make_mesh()
  directory = tmp_path / 'c'
  os.makedirs(directory)
  (directory / 'tu_berlin.npz').write_bytes(b'garbage')
  with pytest.raises(features.FeatureError, match='Delete it to recompute'):
    features.FeatureStore(_cfg(tmp_path), mesh, str(directory)).get(sketches)
  with pytest.raises(features.FeatureError, match='choose one of'):
    features.make_extract_fn(_cfg(tmp_path, extractor='vgg'), mesh)
  with pytest.raises(features.FeatureError, match='EfficientNet-Lite0 gives 1280'):
    features.make_extract_fn(_cfg(tmp_path, dim=4096), mesh)
