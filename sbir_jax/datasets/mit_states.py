"""TFDS builder for MIT-States (Isola et al., CVPR 2015) in TIRG's layout.

Manual dir (the release as TIRG reads it; not obtainable offline, so the
tests use small files written in this layout):
  images/<adjective> <noun>/*.jpg
Folders without a space are skipped, and folders whose adjective is `adj`
are unlabelled and skipped. Images of the 49 `TEST_NOUNS` (TIRG's list) form
the test split, the others train. Query = an image + a target adjective (the
text); target = any image of the same noun with that adjective (a hit is a
caption match, caption = "<adjective> <noun>"). Test queries
(`test_queries`): every test image with every other adjective of its noun.
"""
import collections
from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

IMAGE_SIZE = 224
SPLITS = ('train', 'test')
TEST_NOUNS = (
    'armor', 'bracelet', 'bush', 'camera', 'candy', 'castle', 'ceramic', 'cheese',
    'clock', 'clothes', 'coffee', 'fan', 'fig', 'fish', 'foam', 'forest', 'fruit',
    'furniture', 'garden', 'gate', 'glass', 'horse', 'island', 'laptop', 'lead',
    'lightning', 'mirror', 'orange', 'paint', 'persimmon', 'plastic', 'plate',
    'potato', 'road', 'rubber', 'sand', 'shell', 'sky', 'smoke', 'steel', 'stream',
    'table', 'tea', 'tomato', 'vacuum', 'wax', 'wheel', 'window', 'wool')


class MitStatesError(ValueError):
  """MIT-States files are missing or malformed."""


def list_images(root: epath.Path, split: str) -> list[dict]:
  """[{'file_path', 'adjective', 'noun', 'caption'}] of `split`, sorted."""
  image_dir = root / 'images'
  if not image_dir.exists():
    raise MitStatesError(f'{image_dir} is missing. Point the manual dir at the '
                         'MIT-States release root (holding images/).')
  out = []
  for folder in sorted(image_dir.iterdir(), key=lambda p: p.name):
    if ' ' not in folder.name:
      continue
    adjective, noun = folder.name.split(' ', 1)
    if adjective == 'adj' or (noun in TEST_NOUNS) != (split == 'test'):
      continue
    for path in sorted(folder.iterdir(), key=lambda p: p.name):
      if path.name.lower().endswith('.jpg'):
        out.append({'file_path': f'{folder.name}/{path.name}', 'adjective': adjective,
                    'noun': noun, 'caption': f'{adjective} {noun}'})
  if not out:
    raise MitStatesError(f'No "<adjective> <noun>/*.jpg" images of the {split} '
                         f'split under {image_dir}.')
  return out


def test_queries(images: list[dict]) -> list[dict]:
  """Every image with every other adjective seen for its noun (TIRG)."""
  adjectives = collections.defaultdict(list)
  for img in images:
    if img['adjective'] not in adjectives[img['noun']]:
      adjectives[img['noun']].append(img['adjective'])
  queries = []
  for i, img in enumerate(images):
    for adjective in adjectives[img['noun']]:
      if adjective != img['adjective']:
        queries.append({'source_id': i, 'text': adjective,
                        'target_caption': f'{adjective} {img["noun"]}'})
  return queries


class MitStates(tfds.core.GeneratorBasedBuilder):
  """MIT-States images with their adjective and noun (TIRG's splits)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Put the MIT-States release in the manual dir: images/<adjective> <noun>/*.jpg.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 3)),
            'image_id': np.int32, 'adjective': tfds.features.Text(),
            'noun': tfds.features.Text(), 'caption': tfds.features.Text(),
        }), supervised_keys=None,
        homepage='http://web.mit.edu/phillipi/Public/states_and_transformations/')

  def _split_generators(self, dl_manager):
    root = epath.Path(dl_manager.manual_dir)
    return {split: self._generate_examples(root, list_images(root, split))
            for split in SPLITS}

  def _generate_examples(self, root, images) -> Iterator[tuple[int, dict]]:
    for i, img in enumerate(images):
      path = root / 'images' / img['file_path']
      try:
        with path.open('rb') as f:
          image = Image.open(f).convert('RGB').resize((IMAGE_SIZE, IMAGE_SIZE),
                                                      Image.BILINEAR)
      except OSError as e:
        raise MitStatesError(f'{path} is not a readable image ({e}).') from e
      yield i, {'image': np.asarray(image, np.uint8), 'image_id': i,
                'adjective': img['adjective'], 'noun': img['noun'],
                'caption': img['caption']}
