"""TFDS builder for Fashion200k (Han et al., ICCV 2017) in TIRG's layout.

Manual dir (the release as TIRG reads it; the images are not obtainable
offline, so the tests use small files written in this layout):
  labels/<anything><split><anything>.txt   one image a line:
      file_path<TAB>detection_score<TAB>caption
  <file_path>                              the images, relative to the root
  test_queries.txt                         one "source_file target_file" a line
Captions are cleaned as TIRG does ('.' -> 'dotmark', '?' -> 'questionmark',
'&' -> 'andmark', '*' -> 'starmark'). Test queries: "replace <first word of
the source caption not in the target> with <first word of the target caption
not in the source>". Training pairs (`training_pairs`): images whose captions
differ by one word (a shared "parent" caption with that word removed).

Configs: `images` (image resized to IMAGE_SIZE, caption, file_path, split
index) and `test_queries` (source / target ids within the test split, text).
"""
import collections
from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

IMAGE_SIZE = 224
SPLITS = ('train', 'test')


class Fashion200kError(ValueError):
  """A Fashion200k file is missing or malformed."""


def clean_caption(caption: str) -> str:
  return (caption.strip().replace('.', 'dotmark').replace('?', 'questionmark')
          .replace('&', 'andmark').replace('*', 'starmark'))


def read_labels(root: epath.Path, split: str) -> list[dict]:
  """[{'file_path', 'caption'}] of `split`, from every labels file naming it."""
  label_dir = root / 'labels'
  files = sorted(f for f in label_dir.glob('*.txt') if split in f.name) \
      if label_dir.exists() else []
  if not files:
    raise Fashion200kError(
        f'No labels/*{split}*.txt under {root}. Point the manual dir at the '
        'Fashion200k root (holding labels/, women/ and test_queries.txt).')
  images = []
  for path in files:
    for number, line in enumerate(path.read_text().splitlines(), 1):
      if not line.strip():
        continue
      fields = line.split('\t')
      if len(fields) < 3:
        raise Fashion200kError(f'{path}:{number}: expected file_path<TAB>'
                               f'detection_score<TAB>caption, got {line!r}.')
      images.append({'file_path': fields[0], 'caption': clean_caption(fields[2])})
  return images


def different_words(source: str, target: str) -> tuple[str, str]:
  """TIRG's choice: first source word not in target, first target word not in source."""
  src, tgt = source.split(), target.split()
  source_word = next((w for w in src if w not in tgt), src[-1] if src else '')
  target_word = next((w for w in tgt if w not in src), tgt[-1] if tgt else '')
  return source_word, target_word


def modification_text(source_caption: str, target_caption: str) -> str:
  source_word, target_word = different_words(source_caption, target_caption)
  return f'replace {source_word} with {target_word}'


def read_test_queries(root: epath.Path, images: list[dict]) -> list[dict]:
  path = root / 'test_queries.txt'
  if not path.exists():
    raise Fashion200kError(f'{path} is missing (TIRG\'s Fashion200k test queries).')
  index = {img['file_path']: i for i, img in enumerate(images)}
  queries = []
  for number, line in enumerate(path.read_text().splitlines(), 1):
    if not line.strip():
      continue
    try:
      source_file, target_file = line.split()
    except ValueError:
      raise Fashion200kError(f'{path}:{number}: expected "source target", '
                             f'got {line!r}.') from None
    missing = [f for f in (source_file, target_file) if f not in index]
    if missing:
      raise Fashion200kError(f'{path}:{number} names {missing}, which are not '
                             'in the test labels files.')
    s, t = index[source_file], index[target_file]
    queries.append({'source_id': s, 'target_id': t, 'text': modification_text(
        images[s]['caption'], images[t]['caption'])})
  return queries


def training_pairs(captions: list[str]) -> list[tuple[str, str, str]]:
  """(source caption, target caption, text) for captions one word apart."""
  children = collections.defaultdict(set)
  for caption in set(captions):
    for word in caption.split():
      parent = ' '.join(w for w in caption.split() if w != word)
      children[parent].add(caption)
  pairs = set()
  for group in children.values():
    for a in group:
      for b in group:
        if a != b:
          pairs.add((a, b, modification_text(a, b)))
  return sorted(pairs)


def load_image(path: epath.Path) -> np.ndarray:
  if not path.exists():
    raise Fashion200kError(f'Image {path} (named in the labels files) is missing.')
  with path.open('rb') as f:
    image = Image.open(f).convert('RGB').resize((IMAGE_SIZE, IMAGE_SIZE),
                                                Image.BILINEAR)
  return np.asarray(image, np.uint8)


class Fashion200k(tfds.core.GeneratorBasedBuilder):
  """Fashion200k images with captions, and TIRG's test queries."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name='images', description='Images and captions.'),
      tfds.core.BuilderConfig(name='test_queries', description="TIRG's test queries."),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Put the Fashion200k release in the manual dir: labels/*.txt, the image
  folders (women/...), and TIRG's test_queries.txt.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    if self.builder_config.name == 'images':
      features = {'image': tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 3)),
                  'image_id': np.int32, 'caption': tfds.features.Text(),
                  'file_path': tfds.features.Text()}
    else:
      features = {'query_id': np.int32, 'source_id': np.int32,
                  'target_id': np.int32, 'text': tfds.features.Text()}
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(features), supervised_keys=None,
        homepage='https://github.com/xthan/fashion-200k')

  def _split_generators(self, dl_manager):
    root = epath.Path(dl_manager.manual_dir)
    if self.builder_config.name == 'images':
      return {split: self._generate_examples(root, split) for split in SPLITS}
    return {'test': self._generate_examples(root, 'test')}

  def _generate_examples(self, root, split: str) -> Iterator[tuple[int, dict]]:
    images = read_labels(root, split)
    if self.builder_config.name == 'test_queries':
      for i, q in enumerate(read_test_queries(root, images)):
        yield i, dict(q, query_id=i)
      return
    for i, img in enumerate(images):
      yield i, {'image': load_image(root / img['file_path']), 'image_id': i,
                'caption': img['caption'], 'file_path': img['file_path']}
