"""Restricted unpickling of plain data pickles, and the unpickler it is built on.

A pickle can name any importable callable and call it while loading, so a
downloaded pickle can run code. The unpicklers here resolve only the globals
on an explicit allow-list (each mapped to our own function or a harmless
type) and raise `UnsafePickleError` naming anything else, before it is called.

`load_plain_pickle` reads dicts, lists, tuples, str, numbers and numpy
arrays (e.g. the QMUL-Chair-V2 `ChairV2_Coordinate` file). Torch state
dicts are read by `torch_state_dict.py` with the same unpickler.
"""
import io
import os
import pickle
from typing import Any, Callable, Mapping, Optional, Union

import numpy as np

try:  # numpy >= 2 moved the internals to numpy._core.
  from numpy._core import multiarray as _np_multiarray
except ImportError:  # pragma: no cover
  from numpy.core import multiarray as _np_multiarray


class UnsafePickleError(ValueError):
  """The pickle names a global (callable or class) that is not allowed."""


class RestrictedUnpickler(pickle.Unpickler):
  """An Unpickler whose only reachable globals are those in `allowed`."""

  def __init__(self, file: io.BufferedIOBase,
               allowed: Mapping[tuple[str, str], Any],
               persistent_load: Optional[Callable[[Any], Any]] = None):
    super().__init__(file)
    self._allowed = allowed
    self._persistent_load = persistent_load

  def find_class(self, module: str, name: str) -> Any:
    # Every global (GLOBAL, STACK_GLOBAL, INST, EXT*) is resolved here, so
    # refusing here means nothing outside the allow-list is ever imported.
    try:
      return self._allowed[(module, name)]
    except KeyError:
      raise UnsafePickleError(
          f'Refusing to unpickle global {module}.{name}: it is not on the '
          'allow-list of this restricted unpickler (the file may be '
          'malicious, or of a kind this loader does not support).') from None

  def persistent_load(self, pid: Any) -> Any:
    if self._persistent_load is None:
      raise UnsafePickleError(
          f'Refusing persistent id {pid!r}: not allowed in this pickle.')
    return self._persistent_load(pid)


def _latin1_encode(text: str, encoding: str = 'latin1') -> bytes:
  # Protocol-2 pickles written by Python 3 store bytes as
  # _codecs.encode(str, 'latin1'); allow exactly that, no other codec.
  if encoding not in ('latin1', 'latin-1'):
    raise UnsafePickleError(f'Refusing _codecs.encode with encoding {encoding!r}.')
  return text.encode('latin1')


def numpy_globals() -> dict[tuple[str, str], Any]:
  reconstruct = _np_multiarray._reconstruct
  scalar = _np_multiarray.scalar
  out = {
      ('numpy', 'ndarray'): np.ndarray,
      ('numpy', 'dtype'): np.dtype,
      ('_codecs', 'encode'): _latin1_encode,
  }
  # numpy 1.x pickles say numpy.core, numpy 2.x say numpy._core.
  for core in ('numpy.core', 'numpy._core'):
    out[(f'{core}.multiarray', '_reconstruct')] = reconstruct
    out[(f'{core}.multiarray', 'scalar')] = scalar
    out[(f'{core}.numeric', '_frombuffer')] = _frombuffer
  return out


def _frombuffer(buf: Any, dtype: np.dtype, shape: tuple[int, ...],
                order: str) -> np.ndarray:
  # Pickle protocol 5 arrays; copy so the result owns writable memory.
  array = np.frombuffer(buf, dtype=dtype).reshape(shape, order=order)
  return array.copy(order='K')


_PLAIN_ALLOWED = {**numpy_globals(), ('builtins', 'complex'): complex}


def load_plain_pickle(path_or_bytes: Union[str, os.PathLike, bytes]) -> Any:
  """Unpickles data made of dicts, lists, tuples, str, numbers, numpy arrays.

  Args:
    path_or_bytes: a file path, or the pickle's bytes.

  Returns:
    The unpickled object.

  Raises:
    UnsafePickleError: the pickle names any other global (e.g. os.system);
      nothing it names is imported or called.
  """
  if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
    data = bytes(path_or_bytes)
  else:
    with open(path_or_bytes, 'rb') as f:
      data = f.read()
  return RestrictedUnpickler(io.BytesIO(data), _PLAIN_ALLOWED).load()
