"""TFDS builder for the Sketchy database (+ Sketchy-Extended), and its zero-shot split.

Sketchy (Sangkloy et al., SIGGRAPH 2016): 125 classes, 12,500 photos and
75,481 sketches, each sketch drawn from one photo. Sketchy-Extended (Liu et
al., CVPR 2017) adds 73,002 photos of the same classes; the ZS-SBIR paper
(Yelamarthi et al., ECCV 2018) retrieves from them.

The full data cannot be downloaded by a script (the release sits behind a web
form), so the builder reads a manual dir in the release's layout:

  <manual_dir>/photo/<class>/<photo id>.jpg     (or image/<class>/, as in
                                                 ../shared/data/sketchy_airplane)
  <manual_dir>/sketch/<class>/<photo id>-<k>.png
  <manual_dir>/extended/<class>/*.jpg           (optional; EXTEND_image_sketchy/
                                                 is accepted as well)

The shared data's `sketchy_zs_subset/` (all 125 classes, 25 sketches each,
photo/ layout; variant `subset` of configs/zs_sketchy.py) and
`sketchy_airplane/` (one class, image/ layout) are read the same way.

Splits: 'photo', 'sketch' and, when present, 'extended'. Each example has the
encoded image (kept byte for byte), `id` ('<class>/<file stem>'), `class_name`
and, for sketches, `photo_id` (the id of the photo it was drawn from).

The zero-shot split is applied when reading (`zero_shot_split`), not when
preparing: the unseen classes are the lines of a split file (by default
`$SBIR_JAX_DATA/zeroshot_splits/zeroshot_classes_sketchy.txt`, 21 classes) and
every other class present is seen (104 with the full data).
"""
import functools
import os
from typing import Iterator

import jax
import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from sbir_jax.datasets import preparation
from sbir_jax.datasets import validation

PHOTO_DIRS = ('photo', 'image')
EXTENDED_DIRS = ('extended', 'EXTEND_image_sketchy')
PHOTO_SUFFIXES = ('.jpg', '.jpeg', '.png')


class SketchyError(ValueError):
  """The Sketchy files or the zero-shot split do not fit together."""


def _first_existing(root: epath.Path, names) -> epath.Path | None:
  for name in names:
    if (root / name).is_dir():
      return root / name
  return None


def _class_dirs(root: epath.Path) -> list[epath.Path]:
  return sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.name)


def _check_image(path: epath.Path) -> bytes:
  data = path.read_bytes()
  try:
    with Image.open(path) as im:
      im.verify()
  except Exception as e:  # PIL raises several types for a broken file.
    raise SketchyError(f'{path} is not a readable image ({e}); replace it with '
                       'the file from the Sketchy release, or delete it.') from e
  return data


def photo_id_of_sketch(sketch_stem: str) -> str:
  """'n02691156_10151-3' -> 'n02691156_10151' (the photo it was drawn from)."""
  stem, sep, k = sketch_stem.rpartition('-')
  if not sep or not k.isdigit():
    raise SketchyError(f'Sketch file name {sketch_stem!r} is not '
                       '<photo id>-<k>.png as in the Sketchy release.')
  return stem


def locate(manual_dir: epath.PathLike) -> dict[str, epath.Path]:
  """The photo, sketch and (optional) extended folders of a manual dir."""
  root = epath.Path(manual_dir)
  photo = _first_existing(root, PHOTO_DIRS)
  sketch = root / 'sketch'
  if photo is None or not sketch.is_dir():
    raise SketchyError(
        f'{root} must hold photo/<class>/*.jpg (or image/<class>/) and '
        'sketch/<class>/<photo id>-<k>.png, as the Sketchy release does. Point '
        'config.data.manual_dir at that folder.')
  dirs = {'photo': photo, 'sketch': sketch}
  extended = _first_existing(root, EXTENDED_DIRS)
  if extended is not None:
    dirs['extended'] = extended
  return dirs


class Sketchy(tfds.core.GeneratorBasedBuilder):
  """Sketchy photos and sketches (and Sketchy-Extended photos), by class."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download the Sketchy database (https://sketchy.eye.gatech.edu/, the
  "rendered_256x256" photos and sketches) and optionally Sketchy-Extended,
  then lay them out as <manual_dir>/photo/<class>/*.jpg,
  <manual_dir>/sketch/<class>/<photo id>-<k>.png and
  <manual_dir>/extended/<class>/*.jpg.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(None, None, 3)),
            'id': tfds.features.Text(),
            'class_name': tfds.features.Text(),
            'photo_id': tfds.features.Text(),  # '' for photos.
        }),
        supervised_keys=None,
        homepage='https://sketchy.eye.gatech.edu/',
    )

  def _split_generators(self, dl_manager):
    dirs = locate(dl_manager.manual_dir)
    splits = {'photo': self._generate_examples(dirs['photo']),
              'sketch': self._generate_examples(dirs['sketch'], dirs['photo'])}
    if 'extended' in dirs:
      splits['extended'] = self._generate_examples(dirs['extended'])
    return splits

  def _generate_examples(self, root: epath.Path,
                         photo_root: epath.Path | None = None):
    """Photos of `root`, or (with photo_root) the sketches of `root`."""
    if photo_root is None:
      return self._generate_photos(root)
    return self._generate_sketches(root, photo_root)

  def _generate_photos(self, root: epath.Path) -> Iterator[tuple[str, dict]]:
    for class_dir in _class_dirs(root):
      for path in sorted(class_dir.iterdir()):
        if path.suffix.lower() not in PHOTO_SUFFIXES:
          continue
        key = f'{class_dir.name}/{path.stem}'
        yield key, {'image': _check_image(path), 'id': key,
                    'class_name': class_dir.name, 'photo_id': ''}

  def _generate_sketches(self, root: epath.Path,
                         photo_root: epath.Path) -> Iterator[tuple[str, dict]]:
    for class_dir in _class_dirs(root):
      photos = {p.stem for p in (photo_root / class_dir.name).glob('*')} if (
          photo_root / class_dir.name).is_dir() else set()
      for path in sorted(class_dir.glob('*.png')):
        photo = photo_id_of_sketch(path.stem)
        if photo not in photos:
          raise SketchyError(
              f'Sketch {path} was drawn from photo {photo!r}, which is not in '
              f'{photo_root / class_dir.name}. Copy the photo folder of the '
              'same Sketchy release.')
        key = f'{class_dir.name}/{path.stem}'
        yield key, {'image': _check_image(path), 'id': key,
                    'class_name': class_dir.name,
                    'photo_id': f'{class_dir.name}/{photo}'}


def build(manual_dir: str, tfds_data_dir: str | None = None) -> Sketchy:
  """Prepares (once) and returns the builder reading `manual_dir`."""
  if not manual_dir or not os.path.isdir(manual_dir):
    raise FileNotFoundError(
        f'Sketchy manual dir {manual_dir!r} does not exist. Set '
        '--config.data.manual_dir to the folder holding photo/ and sketch/ '
        '(see sbir_jax/datasets/sketchy.py), e.g. ../shared/data/sketchy_zs_subset '
        '(all 125 classes, 25 sketches each: variant `subset` of '
        'configs/zs_sketchy.py) or ../shared/data/sketchy_airplane (one class).')
  builder = Sketchy(data_dir=tfds_data_dir)
  source = os.path.abspath(manual_dir)
  marker = epath.Path(builder.data_dir) / 'manual_dir.txt'
  if marker.exists() and marker.read_text() != source:
    # TFDS would silently reuse data prepared from other files.
    raise SketchyError(
        f'The Sketchy data in {builder.data_dir} was prepared from '
        f'{marker.read_text()}, not {source}. Use another '
        '--config.data.tfds_data_dir, or delete that folder to prepare again.')
  builder = preparation.prepare(functools.partial(Sketchy, data_dir=tfds_data_dir),
                                manual_dir, 'Point --config.data.manual_dir at it.')
  if jax.process_index() == 0 and not marker.exists():
    marker.write_text(source)
  return builder


def read_unseen_classes(split_file: str) -> list[str]:
  """The unseen classes of a split file (one class a line)."""
  if not os.path.isfile(split_file):
    raise FileNotFoundError(
        f'Zero-shot split file {split_file!r} not found. It ships with the '
        'shared data (zeroshot_splits/zeroshot_classes_sketchy.txt, from '
        'sounakdey/doodle2search); set config.data.split_file to it.')
  with open(split_file) as f:
    classes = [line.strip() for line in f if line.strip()]
  if not classes:
    raise SketchyError(f'Split file {split_file} lists no class.')
  return classes


def zero_shot_split(present_classes, unseen: list[str],
                    source: str) -> tuple[list[str], list[str]]:
  """(seen, unseen) classes: seen = every present class not listed as unseen.

  Raises SketchyError naming any unseen class missing from the data, or if no
  seen class is left to train on.
  """
  present = sorted(set(present_classes))
  missing = [c for c in unseen if c not in present]
  if missing:
    raise SketchyError(
        f'The zero-shot split lists {len(missing)} class(es) missing from '
        f'{source}: {missing}. Add their photo/ and sketch/ folders, or use a '
        'split file (config.data.split_file) that matches the data.')
  seen = [c for c in present if c not in set(unseen)]
  if not seen:
    raise SketchyError(f'Every class in {source} is unseen; no class is left '
                       'to train on.')
  return seen, list(unseen)


def validation_classes(seen: list[str], fraction: float, seed: int
                       ) -> tuple[list[str], list[str]]:
  """(train, val) classes: `fraction` of the seen classes held out as
  pseudo-unseen ones, chosen by `seed` alone. The zero-shot task and the
  seen-class trunk fine-tuning (fg_sources 'sketchy_seen') share it, so a
  fine-tuned trunk never trains on the zero-shot validation classes."""
  kept, held = validation.hold_out(len(seen), fraction, seed)
  if not len(held) or not len(kept):
    raise SketchyError(
        f'config.data.val_class_fraction={fraction} of {len(seen)} seen classes '
        'leaves no validation class or no training class; choose a fraction '
        'that holds out at least one class and keeps one (default 0.15).')
  return [seen[i] for i in kept], [seen[i] for i in held]


def class_splits(sketch_labels, data) -> dict[str, list[str]]:
  """{'train', 'val', 'test'} classes of the zero-shot split of `data`
  (split_file, val_class_fraction, val_split_seed, manual_dir)."""
  unseen = read_unseen_classes(data.split_file)
  seen, unseen = zero_shot_split(sketch_labels, unseen, data.manual_dir)
  train, val = validation_classes(seen, data.val_class_fraction, data.val_split_seed)
  return {'train': train, 'val': val, 'test': unseen}


def paired_photos(sketches, photos, source: str, what: str):
  """(the photos `sketches` were drawn from, as an ImageSet in file order;
  (N,) index of each sketch's photo in it). Raises SketchyError naming the
  missing photos if a sketch's photo is absent; `what` names the sketches."""
  drawn = photos.select(np.isin(photos.ids, sketches.photo_ids))
  row = {k: i for i, k in enumerate(drawn.ids.tolist())}
  unpaired = sorted(set(sketches.photo_ids.tolist()) - set(row))
  if unpaired:
    raise SketchyError(
        f'{len(unpaired)} {what} sketch(es) of {source} were drawn from photos '
        f'missing from its photo/ folder, e.g. {unpaired[:3]}: pairs need them. '
        'Copy the photo folder of the same Sketchy release.')
  return drawn, np.array([row[p] for p in sketches.photo_ids.tolist()], np.int32)


def check_gallery(gallery_classes, unseen: list[str], source: str) -> None:
  """Every unseen class needs at least one photo in the gallery."""
  have = set(np.asarray(gallery_classes).tolist())
  empty = [c for c in unseen if c not in have]
  if empty:
    raise SketchyError(
        f'The gallery ({source}) has no photo of unseen class(es) {empty}: '
        'their sketches could never retrieve a relevant photo. Add those '
        'photos, or drop the classes from the split file.')


def image_set(builder: Sketchy, split: str):
  """One split as an ImageSet: ids and classes now, images when read."""
  import tensorflow as tf  # Only the reader needs TF.
  from sbir_jax import image_sets

  def records(decode: bool):
    decoders = None if decode else {'image': tfds.decode.SkipDecoding()}
    return builder.as_dataset(split=split, shuffle_files=False, decoders=decoders,
                              read_config=tfds.ReadConfig(interleave_cycle_length=1))

  meta = tfds.as_numpy(records(False).map(
      lambda x: (x['id'], x['class_name'], x['photo_id'])).batch(4096))
  ids, labels, photo_ids = [], [], []
  for i, c, p in meta:
    ids.extend(s.decode() for s in i)
    labels.extend(s.decode() for s in c)
    photo_ids.extend(s.decode() for s in p)
  ids = np.array(ids)

  def read(indices, size, batch):
    indices = np.asarray(indices)
    if np.any(np.diff(indices) <= 0):
      raise ValueError('The Sketchy reader needs increasing indices.')
    wanted = np.zeros(len(ids), bool)
    wanted[indices] = True
    ds = records(False).enumerate().filter(lambda n, _: tf.constant(wanted)[n])

    def decode(_, x):
      image = tf.io.decode_image(x['image'], channels=3, expand_animations=False)
      image = tf.image.resize(image, (size, size), antialias=True)
      return x['id'], tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)

    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE).batch(batch)
    start = 0
    for batch_ids, images in tfds.as_numpy(ds):
      expected = ids[indices[start:start + len(batch_ids)]]
      got = np.array([s.decode() for s in batch_ids])
      if not np.array_equal(got, expected):  # TFDS read order changed: refuse.
        raise RuntimeError(f'Sketchy {split}: read {got[:3]} where {expected[:3]} '
                           'was expected; delete the prepared TFDS data and rerun.')
      start += len(batch_ids)
      yield images

  has_photo = split == 'sketch'
  return image_sets.ImageSet(f'sketchy_{split}', ids, np.array(labels), read,
                             np.array(photo_ids) if has_photo else None,
                             'sketch' if split == 'sketch' else 'photo')
