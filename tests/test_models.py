"""Shapes of Sketch-a-Net and DSSA, and what the switches change."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sbir_jax.models import dssa
from sbir_jax.models import sketch_a_net


def test_sketch_a_net_conv5_is_7x7x256_at_225():
  trunk = sketch_a_net.SketchANetTrunk()
  out = jax.eval_shape(lambda x: trunk.init_with_output(jax.random.key(0), x)[0],
                       jnp.zeros((2, 225, 225, 1)))
  assert out.shape == (2, 7, 7, 256)
  assert sketch_a_net.trunk_output_size(225) == 7


@pytest.mark.parametrize('cff,dim', [(True, 512), (False, 256)])
def test_dssa_embedding_shape_and_norm(cff, dim):
  model = dssa.DSSA(coarse_fine_fusion=cff, width_multiplier=0.25, fc6_dim=64)
  x = jax.random.uniform(jax.random.key(0), (3, 129, 129, 1))
  params = model.init(jax.random.key(1), x)
  emb = model.apply(params, x, method=dssa.DSSA.embed)
  expected_dim = 256 + (64 if cff else 0)
  assert emb.shape == (3, expected_dim if cff else 256)
  # fc7 part is unit-norm; with CFF the fine part is unit-norm too.
  np.testing.assert_allclose(np.linalg.norm(emb[:, :256], axis=1), 1.0, rtol=1e-5)
  if cff:
    np.testing.assert_allclose(np.linalg.norm(emb[:, 256:], axis=1), 1.0, rtol=1e-5)
  assert params['params']['energy']['W'].shape == (emb.shape[1],) * 2


def test_attention_mask_is_a_distribution_and_shortcut_matters():
  x = jax.random.uniform(jax.random.key(0), (2, 129, 129, 1))
  with_shortcut = dssa.DSSA(width_multiplier=0.25, fc6_dim=32, embed_dim=16)
  params = with_shortcut.init(jax.random.key(1), x)
  mask = with_shortcut.apply(params, x, method=dssa.DSSA.attention_mask)
  assert mask.shape == (2, 3, 3, 1)
  np.testing.assert_allclose(mask.sum(axis=(1, 2, 3)), 1.0, rtol=1e-5)
  without = dssa.DSSA(width_multiplier=0.25, fc6_dim=32, embed_dim=16,
                      attention_shortcut=False)
  a = with_shortcut.apply(params, x, method=dssa.DSSA.embed)
  b = without.apply(params, x, method=dssa.DSSA.embed)
  assert not np.allclose(a, b)


def test_no_attention_has_no_attention_parameters():
  model = dssa.DSSA(attention=False, width_multiplier=0.25, fc6_dim=32)
  params = model.init(jax.random.key(0), jnp.zeros((1, 129, 129, 1)))
  assert 'spatial_attention' not in params['params']


def test_too_small_input_is_refused():
  with pytest.raises(ValueError, match='crop_size'):
    dssa.DSSA().init(jax.random.key(0), jnp.zeros((1, 64, 64, 1)))
