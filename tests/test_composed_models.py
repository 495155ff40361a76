"""Attention, text encoding, LBF / TIRG / baselines and their losses."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sbir_jax import losses
from sbir_jax.models import attention
from sbir_jax.models import composed_baselines
from sbir_jax.models import composed_encoders as enc
from sbir_jax.models import lbf
from sbir_jax.models import text
from sbir_jax.models import tirg


def test_attention_matches_a_per_head_per_example_loop():
  mha = attention.MultiHeadAttention(num_heads=2, dim=8)
  q = jax.random.normal(jax.random.key(0), (3, 4, 8))
  kv = jax.random.normal(jax.random.key(1), (3, 5, 8))
  mask = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], bool)
  params = mha.init(jax.random.key(2), q, kv, mask)['params']
  out, weights = mha.apply({'params': params}, q, kv, mask, return_weights=True)
  assert out.shape == (3, 4, 8) and weights.shape == (3, 2, 4, 5)
  np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)
  assert float(jnp.max(jnp.where(mask[:, None, None, :], 0.0, weights))) == 0.0
  p = jax.tree.map(np.asarray, params)
  for b in range(3):
    keep = np.asarray(mask[b])
    heads = []
    for h in range(2):
      qh = np.asarray(q[b]) @ p['query']['kernel'][:, h] + p['query']['bias'][h]
      kh = np.asarray(kv[b][keep]) @ p['key']['kernel'][:, h] + p['key']['bias'][h]
      vh = np.asarray(kv[b][keep]) @ p['value']['kernel'][:, h] + p['value']['bias'][h]
      logits = qh @ kh.T / np.sqrt(4)
      w = np.exp(logits - logits.max(-1, keepdims=True))
      heads.append((w / w.sum(-1, keepdims=True)) @ vh)
    expected = np.einsum('qhd,hdo->qo', np.stack(heads, 1), p['out']['kernel'])
    np.testing.assert_allclose(out[b], expected + p['out']['bias'], rtol=1e-4, atol=1e-5)


def test_vocabulary_unknown_words_and_empty_text():
  vocab = text.Vocabulary(['add red circle to top-left', 'remove blue object'])
  ids = vocab.encode(['Add RED unicorn!', 'remove'], max_length=5)
  assert ids.shape == (2, 5)
  assert ids[0, 2] == text.UNK_ID and ids[0, 3] == text.PAD_ID
  assert vocab.words[ids[0, 0]] == 'add' and vocab.words[ids[1, 0]] == 'remove'
  with pytest.raises(text.EmptyTextError, match='has no words'):
    vocab.encode(['add red circle', '  '], max_length=5)


def test_box_pool_grid_cells_and_fractional_boxes():
  x = jnp.arange(16.0).reshape(1, 4, 4, 1)
  cells = jnp.asarray(enc.cell_boxes(2, 2))[None]
  np.testing.assert_allclose(enc.box_average_pool(x, cells)[0, :, 0],
                             [2.5, 4.5, 10.5, 12.5])
  # One map cell exactly; then a box over half of column 0 and all of column 1
  # (of row 0): weights 1/3, 2/3.
  boxes = jnp.array([[[0.25, 0.5, 0.25, 0.25], [0.125, 0.0, 0.375, 0.25]]])
  np.testing.assert_allclose(enc.box_average_pool(x, boxes)[0, :, 0],
                             [9.0, 0 / 3 + 2 / 3], rtol=1e-6)
  assert enc.box_average_pool(jnp.ones((2, 16, 16, 3)),
                              jnp.asarray(enc.cell_boxes(3, 6))[None]).shape == (2, 18, 3)
  np.testing.assert_allclose(enc.cell_boxes(3, 6)[7], [1 / 6, 1 / 3, 1 / 6, 1 / 3])


def _inputs(b=2):
  images = jax.random.randint(jax.random.key(0), (b, 64, 64, 3), 0, 256).astype(jnp.uint8)
  tokens = jnp.array([[2, 3, 4, 0, 0, 0], [5, 1, 0, 0, 0, 0]])[:b]
  return images, tokens


@pytest.mark.parametrize('size,k', [('big', 36), ('small', 18)])
def test_lbf_entity_counts_and_outputs(size, k):
  rows, cols = lbf.ENTITY_GRIDS[size]
  model = lbf.Lbf(vocab_size=8, dim=16, num_heads=2, entity_rows=rows,
                  entity_cols=cols, max_text_length=6, cnn_width=16)
  images, tokens = _inputs()
  params = model.init(jax.random.key(1), images, tokens, images)['params']
  entities, mask = model.apply({'params': params}, images, method=model.entities)
  assert entities.shape == (2, k, 16) and mask is None  # Every cell is real.
  query, target = model.apply({'params': params}, images, tokens, images)
  assert query.shape == target.shape == (2, 16)
  # Normalised and scaled by the learnable factor, initialised to 4.0.
  np.testing.assert_allclose(jnp.linalg.norm(query, axis=1), 4.0, rtol=1e-5)
  # The text matters.
  other = model.apply({'params': params}, images, tokens[::-1], method=model.compose)
  assert not np.allclose(other, query)


def test_lbf_padding_words_are_ignored():
  model = lbf.Lbf(vocab_size=8, dim=16, num_heads=2, max_text_length=8, cnn_width=16)
  images, tokens = _inputs(1)
  params = model.init(jax.random.key(1), images, tokens, images)['params']
  short = model.apply({'params': params}, images, tokens[:, :4], method=model.compose)
  long = model.apply({'params': params}, images, tokens, method=model.compose)
  np.testing.assert_allclose(short, long, rtol=1e-4, atol=1e-5)


def _region_model(entities_from):
  return lbf.Lbf(vocab_size=8, dim=16, num_heads=2, max_text_length=6, cnn_width=16,
                 entities_from=entities_from)


def _regions(b=2, k=4, feature_dim=5):
  """Regions with the last box of every image padding (random contents)."""
  boxes = jax.random.uniform(jax.random.key(3), (b, k, 4), minval=0.05, maxval=0.5)
  mask = jnp.arange(k)[None, :].repeat(b, 0) < k - 1
  features = jax.random.normal(jax.random.key(4), (b, k, feature_dim))
  return boxes, mask, features


@pytest.mark.parametrize('entities_from', ['boxes', 'region_features'])
def test_lbf_entities_from_given_regions_ignore_padding(entities_from):
  model = _region_model(entities_from)
  images, tokens = _inputs()
  boxes, mask, features = _regions()
  inputs = {'boxes': boxes, 'box_mask': mask}
  inputs.update({'features': features} if entities_from == 'region_features'
                else {'image': images})
  params = model.init(jax.random.key(1), inputs, tokens, inputs)['params']
  assert ('cnn' in params) == (entities_from == 'boxes')  # Features: no backbone.
  entities, entity_mask = model.apply({'params': params}, inputs, method=model.entities)
  assert entities.shape == (2, 4, 16) and entity_mask.shape == (2, 4)
  query, target = model.apply({'params': params}, inputs, tokens, inputs)
  # Other contents in the padded slot: the same embeddings.
  changed = dict(inputs, boxes=boxes.at[:, -1].set(0.2),
                 **({'features': features.at[:, -1].set(9.0)}
                    if entities_from == 'region_features' else {}))
  query2, target2 = model.apply({'params': params}, changed, tokens, changed)
  np.testing.assert_allclose(query2, query, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(target2, target, rtol=1e-4, atol=1e-5)
  # A real box moved: different embeddings.
  moved = dict(inputs, boxes=boxes.at[:, 0].set(0.3))
  assert not np.allclose(model.apply({'params': params}, moved, tokens, moved)[1], target)


def test_lbf_refuses_the_wrong_image_input():
  images, tokens = _inputs()
  with pytest.raises(ValueError, match="'boxes' and 'box_mask'"):
    _region_model('boxes').init(jax.random.key(1), images, tokens, images)
  boxes, mask, _ = _regions()
  regions = {'image': images, 'boxes': boxes, 'box_mask': mask}
  with pytest.raises(ValueError, match='not a dict of regions'):
    _region_model('grid').init(jax.random.key(1), regions, tokens, regions)
  with pytest.raises(ValueError, match='entities_from'):
    _region_model('detector').init(jax.random.key(1), images, tokens, images)


def test_tirg_scale_and_weights_init():
  model = tirg.Tirg(vocab_size=8, dim=16, cnn_width=16)
  images, tokens = _inputs()
  params = model.init(jax.random.key(1), images, tokens, images)['params']
  assert float(params['normalize']['scale']) == 4.0
  np.testing.assert_allclose(params['weights'], [1.0, 10.0])
  query, target = model.apply({'params': params}, images, tokens, images)
  np.testing.assert_allclose(jnp.linalg.norm(target, axis=1), 4.0, rtol=1e-5)


@pytest.mark.parametrize('kind', composed_baselines.KINDS)
def test_baselines(kind):
  model = composed_baselines.ComposedBaseline(vocab_size=8, kind=kind, dim=16,
                                              cnn_width=16)
  images, tokens = _inputs()
  params = model.init(jax.random.key(1), images, tokens, images)['params']
  query = model.apply({'params': params}, images, tokens, method=model.compose)
  swapped_text = model.apply({'params': params}, images, tokens[::-1],
                             method=model.compose)
  swapped_image = model.apply({'params': params}, images[::-1], tokens,
                              method=model.compose)
  assert np.allclose(query, swapped_text) == (kind == 'image_only')
  assert np.allclose(query, swapped_image) == (kind == 'text_only')


def test_soft_triplet_matches_loop_over_all_negatives():
  q = jax.random.normal(jax.random.key(0), (4, 3))
  t = jax.random.normal(jax.random.key(1), (4, 3))
  got = losses.soft_triplet(q, t, jax.random.key(2), num_negatives=6)
  x = np.concatenate([q, t]).astype(np.float64)
  terms = []
  for i in range(8):
    j = (i + 4) % 8
    for k in range(8):
      if k % 4 != i % 4:
        d = lambda a, b: np.sum((x[a] - x[b]) ** 2)
        terms.append(np.log1p(np.exp(d(i, j) - d(i, k))))
  np.testing.assert_allclose(got, np.mean(terms), rtol=1e-4)
  # With 3 sampled negatives: between the smallest and largest terms.
  sampled = losses.soft_triplet(q, t, jax.random.key(3))
  assert min(terms) <= float(sampled) <= max(terms)


def test_lbf_soft_triplet_matches_a_literal_per_pair_sum():
  """LBF's form: query i against every other target j (candidates only),
  log(1 + exp(sim(q_i, t_j)) / exp(sim(q_i, t_i))), summed over j, mean over i."""
  rng = np.random.default_rng(0)
  q, t = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
  want = np.mean([sum(np.log(1.0 + np.exp(q[i] @ t[j]) / np.exp(q[i] @ t[i]))
                      for j in range(5) if j != i) for i in range(5)])
  got = losses.lbf_soft_triplet(jnp.asarray(q, jnp.float32), jnp.asarray(t, jnp.float32))
  np.testing.assert_allclose(float(got), want, rtol=1e-5)
  # Queries are never each other's negatives: moving one query leaves the
  # other queries' terms alone (TIRG's form would change them).
  q2 = q.copy()
  q2[0] += 3.0
  per_query = lambda qq: [sum(np.log1p(np.exp(qq[i] @ t[j] - qq[i] @ t[i]))
                              for j in range(5) if j != i) for i in range(5)]
  np.testing.assert_allclose(per_query(q2)[1:], per_query(q)[1:])
  with pytest.raises(ValueError, match='at least 2 pairs'):
    losses.lbf_soft_triplet(jnp.ones((1, 4)), jnp.ones((1, 4)))


def test_batch_classification_is_cross_entropy_over_the_batch():
  q = jax.random.normal(jax.random.key(0), (3, 5))
  t = jax.random.normal(jax.random.key(1), (3, 5))
  logits = np.asarray(q) @ np.asarray(t).T
  expected = np.mean([np.log(np.sum(np.exp(logits[i]))) - logits[i, i] for i in range(3)])
  np.testing.assert_allclose(losses.batch_classification(q, t), expected, rtol=1e-5)
