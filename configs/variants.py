"""The one variant mechanism: `configs/shoes.py:cpu,no_shortcut` applies the
entries `cpu` then `no_shortcut` of the family's table, in that order.

A table maps a variant name to a spec: a dict of dotted-path overrides
(`{'model.attention': False, 'loss.energy': 'euclidean'}`), or a function
`(config) -> None` for the few variants that compute values or add keys.
"""
from typing import Any, Callable, Mapping, Union

import ml_collections

Spec = Union[Mapping[str, Any], Callable[[ml_collections.ConfigDict], None]]


def prefixed(prefix: str, values: Mapping[str, Any]) -> dict[str, Any]:
  """{'load_size': 144} -> {'data.load_size': 144} for prefix 'data'."""
  return {f'{prefix}.{key}': value for key, value in values.items()}


def set_path(config: ml_collections.ConfigDict, path: str, value: Any) -> None:
  """config.<path> = value for an existing field (a FieldReference follows)."""
  *parents, key = path.split('.')
  node = config
  for part in parents:
    node = node[part]
  # Dict specs only change existing fields: a typo raises, never adds a key.
  if key not in node:
    raise KeyError(f'Variant override {path!r}: no such field {key!r} in the '
                   'config; fix the table, or use a function spec to add keys.')
  node[key] = value


def apply(config: ml_collections.ConfigDict, arg: str | None,
          table: Mapping[str, Spec], where: str) -> None:
  """Applies the comma-separated variants of `arg` from `table`, in order;
  `where` (the file holding the table) goes into the unknown-name error."""
  for name in filter(None, (part.strip() for part in (arg or '').split(','))):
    if name not in table:
      raise ValueError(f'Unknown config variant {name!r} (variants of {where}). '
                       f'Known: {", ".join(table)}.')
    spec = table[name]
    if callable(spec):
      spec(config)
    else:
      for path, value in spec.items():
        set_path(config, path, value)


def load_config(config_arg: str) -> ml_collections.ConfigDict:
  """The config of '<file.py>[:variants]', as `--config=` reads it."""
  import importlib.util
  import os
  path, _, arg = config_arg.partition(':')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'Config file {path!r} (of {config_arg!r}) not found; '
                            'give a path such as configs/shoes.py[:variants].')
  spec = importlib.util.spec_from_file_location(
      'config_' + os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg or None)
