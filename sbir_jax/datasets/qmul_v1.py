"""TFDS builder for the QMUL FG-SBIR V1 benchmarks: Shoe V1, Chair V1, Handbag.

The data is the one the DSSA paper trains and tests on: MATLAB files with
uint8 (N, 256, 256) arrays under key `data`, sketch i matching photo i, photos
stored as edge maps. Shoe and Chair also carry human triplet annotations
(`<name>_annotation.json`: per sketch, [more similar, less similar] photo
index pairs within the split).

Files come from the authors' public repository (downloaded and checksummed),
or from a manual dir laid out as `<manual_dir>/<name>/<name>_*.mat`.
"""
import json
from typing import Any, Iterator

import numpy as np
import scipy.io
import tensorflow_datasets as tfds
from etils import epath

_REPO_URL = ('https://raw.githubusercontent.com/yuqian1023/Deep_SBIR_tf/'
             '7cad9b22f04deb1dbdeebd469e0d86c5ef67edc1/data')
IMAGE_SIZE = 256
# Handbag ships no triplet annotation of its own (the upstream
# handbags_annotation.json is a byte copy of the shoes file).
_ANNOTATED = {'shoes': True, 'chairs': True, 'handbags': False}


class QmulV1Error(ValueError):
  """A QMUL V1 file is missing or malformed."""


def _file_names(name: str) -> dict[str, str]:
  files = {f'{kind}_{split}': f'{name}_{kind}_db_{split}.mat'
           for kind in ('sketch', 'edge') for split in ('train', 'test')}
  if _ANNOTATED[name]:
    files['annotation'] = f'{name}_annotation.json'
  return files


def load_mat_images(path: epath.PathLike) -> np.ndarray:
  """Reads the (N, 256, 256) uint8 array under key `data` of a QMUL .mat file."""
  path = epath.Path(path)
  try:
    with path.open('rb') as f:
      content = scipy.io.loadmat(f)
  except Exception as e:  # scipy raises several types for a corrupt file.
    raise QmulV1Error(f'{path} is not a readable MATLAB file ({e}); download it '
                      'again from the QMUL V1 release.') from e
  if 'data' not in content:
    keys = sorted(k for k in content if not k.startswith('__'))
    raise QmulV1Error(f'{path} has no key "data" (it has {keys}); it is not a '
                      'QMUL V1 sketch/edge file.')
  data = content['data']
  if data.ndim != 3 or data.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
    raise QmulV1Error(f'{path}: "data" has shape {data.shape}, expected '
                      f'(N, {IMAGE_SIZE}, {IMAGE_SIZE}) grey images.')
  return data.astype(np.uint8)


class QmulV1(tfds.core.GeneratorBasedBuilder):
  """QMUL V1 FG-SBIR: sketch / edge-map pairs with triplet annotations."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name=name, description=f'QMUL {name} V1')
      for name in ('shoes', 'chairs', 'handbags')
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Optional. Put the QMUL V1 files in `<manual_dir>/<name>/`, e.g.
  `shoes/shoes_sketch_db_train.mat`, `shoes/shoes_edge_db_test.mat`,
  `shoes/shoes_annotation.json` (from the Deep_SBIR_tf repository, `data/`).
  Without a manual dir the files are downloaded.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    image = tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 1))
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'sketch': image,
            'photo': image,
            'instance_id': np.int32,
            # [more similar, less similar] photo indices within the split.
            'triplets': tfds.features.Tensor(shape=(None, 2), dtype=np.int32),
        }),
        supervised_keys=None,
        homepage='http://sketchx.eecs.qmul.ac.uk/downloads/',
    )

  def _locate_files(self, dl_manager) -> dict[str, epath.Path]:
    name = self.builder_config.name
    files = _file_names(name)
    try:
      root = dl_manager.manual_dir / name
    except AssertionError:  # No manual dir given: fetch from the release.
      urls = {k: f'{_REPO_URL}/{name}/{v}' for k, v in files.items()}
      return {k: epath.Path(v) for k, v in dl_manager.download(urls).items()}
    missing = [v for v in files.values() if not (root / v).exists()]
    if missing:
      raise QmulV1Error(
          f'{root} lacks {missing}. Point config.data.manual_dir at the folder '
          f'holding `{name}/` (e.g. ../shared/data/qmul_v1, or SBIR_JAX_DATA), '
          'or unset it to download the files.')
    return {k: root / v for k, v in files.items()}

  def _split_generators(self, dl_manager):
    paths = self._locate_files(dl_manager)
    annotation = None
    if 'annotation' in paths:
      annotation = json.loads(paths['annotation'].read_text())
    return {split: self._generate_examples(paths, split, annotation)
            for split in ('train', 'test')}

  def _generate_examples(self, paths, split: str,
                         annotation: Any) -> Iterator[tuple[int, dict]]:
    sketches = load_mat_images(paths[f'sketch_{split}'])
    photos = load_mat_images(paths[f'edge_{split}'])
    if len(sketches) != len(photos):
      raise QmulV1Error(f'{split}: {len(sketches)} sketches but {len(photos)} '
                        'photos; sketch i must match photo i.')
    triplets = annotation[split]['triplets'] if annotation else None
    if triplets is not None and len(triplets) != len(sketches):
      raise QmulV1Error(f'{split}: annotation has {len(triplets)} entries for '
                        f'{len(sketches)} sketches.')
    for i, (sketch, photo) in enumerate(zip(sketches, photos)):
      pairs = np.asarray(triplets[i] if triplets else np.zeros((0, 2)),
                         np.int32).reshape(-1, 2)
      yield i, {'sketch': sketch[..., None], 'photo': photo[..., None],
                'instance_id': i, 'triplets': pairs}
