"""Serving a composed-query checkpoint (LBF, `tiny` on generated CSS-style
data): reference image id + modification text -> top K, the reference left
out (Recall@K protocol); empty and unknown-word texts as the task handles
them; unknown ids 404."""
import asyncio

import httpx
import numpy as np
import pytest

from configs import css
from sbir_jax import inference
from sbir_jax.core import trainer
from sbir_jax.models import text as text_lib
from sbir_jax.serve import server


@pytest.fixture(scope='module')
def composed(tfds_dir, tmp_path_factory):
  config = css.get_config('lbf_small,tiny')
  config.data.tfds_data_dir = tfds_dir
  config.num_train_steps = 2
  workdir = str(tmp_path_factory.mktemp('serve_composed') / 'run')
  trainer.train_and_evaluate(config, workdir)
  retriever = inference.load(config, workdir)
  app = server.create_app(retriever, top_k=5)
  yield retriever, app
  app.state.batcher.close()


def _ask(app, *requests):
  async def go():
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url='http://serve.test') as client:
      return await asyncio.gather(*[client.request(m, u, **kw) for m, u, kw in requests])
  return asyncio.run(go())


def test_composed_query_ranks_as_recall_at_k_and_leaves_out_the_reference(composed):
  retriever, app = composed
  assert isinstance(retriever, inference.ComposedRetriever)
  split = retriever.split
  queries = [(f'test/{int(s)}', t) for s, t in zip(split.source_ids[:6], split.texts[:6])]
  answers = _ask(app, ('GET', '/api/info', {}), *[
      ('POST', '/api/composed', {'json': {'image_id': i, 'text': t, 'k': 8}})
      for i, t in queries])
  info = answers[0].json()
  assert info['mode'] == 'composed' and info['gallery_size'] == len(split.images)
  assert info['examples'][0]['image_id'] == queries[0][0]
  # The evaluator's definition: cosine of composed query and gallery
  # embeddings, the reference removed.
  rows = [retriever.row_of[i] for i, _ in queries]
  q = retriever.task.embed_queries(retriever.variables,
                                   split.inputs(retriever.image_rows[rows]),
                                   retriever.task.vocab.encode(
                                       [t for _, t in queries],
                                       retriever.config.data.max_text_length))
  g = retriever.task.embed_gallery(retriever.variables, split.inputs(retriever.image_rows))
  unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  sims = unit(q) @ unit(g).T
  for answer, row, sim in zip(answers[1:], rows, sims):
    assert answer.status_code == 200, answer.text
    got = answer.json()['results']
    assert len(got) == 8
    assert retriever.ids[row] not in [r['id'] for r in got]
    sim[row] = -np.inf
    order = np.argsort(-sim, kind='stable')[:8]
    np.testing.assert_allclose([r['score'] for r in got], sim[order], rtol=1e-4, atol=1e-5)
    assert [r['id'] for r in got][:3] == [retriever.ids[i] for i in order][:3]


def test_composed_bad_input(composed):
  retriever, app = composed
  ref = retriever.ids[0]
  empty, blank, unknown, no_id, path_id, bad_k, no_body, sketch = _ask(
      app,
      ('POST', '/api/composed', {'json': {'image_id': ref, 'text': ''}}),
      ('POST', '/api/composed', {'json': {'image_id': ref, 'text': ' ?! '}}),
      ('POST', '/api/composed', {'json': {'image_id': ref, 'text': 'zzqx wibble'}}),
      ('POST', '/api/composed', {'json': {'image_id': 'test/99999', 'text': 'add red'}}),
      ('POST', '/api/composed', {'json': {'image_id': '../../etc/passwd', 'text': 'a'}}),
      ('POST', '/api/composed', {'json': {'image_id': ref, 'text': 'a', 'k': 0}}),
      ('POST', '/api/composed', {'json': {'text': 'add red'}}),
      ('POST', '/api/search', {'files': {'sketch': ('s.png', b'x', 'image/png')}}))
  # Empty text: the composed task's own refusal (models/text.py).
  for answer in (empty, blank):
    assert answer.status_code == 400 and 'has no words' in answer.json()['detail']
  # Unknown words: the unknown-word id, as in training and evaluation.
  assert retriever.task.vocab.encode(['zzqx wibble'], 4)[0, :2].tolist() == [
      text_lib.UNK_ID] * 2
  assert unknown.status_code == 200 and len(unknown.json()['results']) == 5
  assert no_id.status_code == 404 and path_id.status_code == 404
  assert 'No gallery image' in no_id.json()['detail']
  assert bad_k.status_code == 400 and no_body.status_code == 400
  assert sketch.status_code == 400 and 'composed-query model' in sketch.json()['detail']
  image = _ask(app, ('GET', f'/api/gallery/{ref}', {}))[0]
  assert image.status_code == 200 and image.content[:4] == b'\x89PNG'
