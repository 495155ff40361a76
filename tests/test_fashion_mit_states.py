"""Fashion200k and MIT-States builders on small files written in the real
layouts (generated here: the real images are not obtainable offline)."""
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from sbir_jax.datasets import fashion200k
from sbir_jax.datasets import mit_states


def _jpeg(path, color):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.new('RGB', (40, 60), color).save(path)


@pytest.fixture
def fashion_root(tmp_path):
  root = tmp_path / 'fashion200k'
  rows = {'train': [('women/dresses/a/1_0.jpeg', 'red midi dress'),
                    ('women/dresses/a/2_0.jpeg', 'blue midi dress'),
                    ('women/dresses/a/3_0.jpeg', 'red maxi dress')],
          'test': [('women/tops/b/4_0.jpeg', 'black silk top'),
                   ('women/tops/b/5_0.jpeg', 'white silk top'),
                   ('women/tops/b/6_0.jpeg', 'black lace top & co.')]}
  for split, items in rows.items():
    lines = []
    for i, (path, caption) in enumerate(items):
      _jpeg(root / path, (30 * i, 100, 200))
      lines.append(f'{path}\t0.9{i}\t{caption}')
    (root / 'labels').mkdir(parents=True, exist_ok=True)
    (root / 'labels' / f'dress_{split}_detect_all.txt').write_text('\n'.join(lines) + '\n')
  (root / 'test_queries.txt').write_text(
      'women/tops/b/4_0.jpeg women/tops/b/5_0.jpeg\n'
      'women/tops/b/5_0.jpeg women/tops/b/6_0.jpeg\n')
  return root


def test_fashion200k_builder(fashion_root, tmp_path):
  config = tfds.download.DownloadConfig(manual_dir=str(fashion_root))
  images = fashion200k.Fashion200k(config='images', data_dir=str(tmp_path / 'tfds'))
  images.download_and_prepare(download_config=config)
  test = tfds.as_numpy(images.as_dataset(split='test', batch_size=-1))
  assert test['image'].shape == (3, 224, 224, 3)
  captions = sorted(c.decode() for c in test['caption'])
  assert 'black lace top andmark codotmark' in captions
  queries = fashion200k.Fashion200k(config='test_queries', data_dir=str(tmp_path / 'tfds'))
  queries.download_and_prepare(download_config=config)
  texts = sorted(q['text'].decode() for q in tfds.as_numpy(queries.as_dataset(split='test')))
  assert texts == ['replace black with white', 'replace white with black']


def test_fashion200k_training_pairs_and_errors(fashion_root):
  pairs = fashion200k.training_pairs(['red midi dress', 'blue midi dress',
                                      'red maxi dress', 'green coat'])
  assert ('red midi dress', 'blue midi dress', 'replace red with blue') in pairs
  assert ('red midi dress', 'red maxi dress', 'replace midi with maxi') in pairs
  assert not any('coat' in p[0] or 'coat' in p[1] for p in pairs)
  (fashion_root / 'test_queries.txt').write_text('women/tops/b/4_0.jpeg nope.jpeg\n')
  images = fashion200k.read_labels(fashion_root, 'test')
  with pytest.raises(fashion200k.Fashion200kError, match='nope.jpeg'):
    fashion200k.read_test_queries(fashion_root, images)
  with pytest.raises(fashion200k.Fashion200kError, match='labels'):
    fashion200k.read_labels(fashion_root / 'missing', 'train')


def test_mit_states_builder_splits_and_queries(tmp_path):
  root = tmp_path / 'mit_states'
  for folder, n in (('ripe tomato', 2), ('rotten tomato', 1), ('sliced tomato', 1),
                    ('old car', 1), ('new car', 2), ('adj tomato', 1)):
    for i in range(n):
      _jpeg(root / 'images' / folder / f'{i}.jpg', (10 * i, 50, 90))
  (root / 'images' / 'README').write_text('not a class folder')
  builder = mit_states.MitStates(data_dir=str(tmp_path / 'tfds'))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(root)))
  test = tfds.as_numpy(builder.as_dataset(split='test', batch_size=-1))
  train = tfds.as_numpy(builder.as_dataset(split='train', batch_size=-1))
  assert {n.decode() for n in test['noun']} == {'tomato'}  # A TIRG test noun.
  assert len(test['image_id']) == 4 and len(train['image_id']) == 3
  assert {a.decode() for a in test['adjective']} == {'ripe', 'rotten', 'sliced'}
  queries = mit_states.test_queries(mit_states.list_images(root, 'test'))
  assert len(queries) == 4 * 2  # Each image, each other adjective of its noun.
  assert {'source_id': 0, 'text': 'rotten', 'target_caption': 'rotten tomato'} in queries
  with pytest.raises(mit_states.MitStatesError, match='images'):
    mit_states.list_images(tmp_path / 'none', 'train')


def _mit_states_root(tmp_path):
  root = tmp_path / 'mit_states'
  for folder, n in (('ripe tomato', 2), ('rotten tomato', 1), ('old car', 1),
                    ('new car', 2)):
    for i in range(n):
      _jpeg(root / 'images' / folder / f'{i}.jpg', (10 * i, 50, 90))
  return root


def test_composed_task_reads_fashion200k(fashion_root, tfds_dir):
  from configs import fashion200k as fashion_config
  from sbir_jax.tasks.composed import task as composed_task
  config = fashion_config.get_config('tiny')
  config.data.manual_dir = str(fashion_root)
  config.data.tfds_data_dir = tfds_dir
  config.data.val_fraction = 0.0
  splits = composed_task.ComposedTask(config, None).splits
  assert splits['train'].images.shape[1:] == (64, 64, 3)
  assert sorted(set(splits['train'].texts)) == [
      'replace blue with red', 'replace maxi with midi', 'replace midi with maxi',
      'replace red with blue']
  test = splits['test']
  assert test.texts == ['replace black with white', 'replace white with black']
  assert list(test.labels[test.target_ids]) == [1, 2]
