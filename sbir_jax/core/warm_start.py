"""Warm start: initialise a new run from another run's checkpoint.

`config.init_from` names a workdir (its best checkpoint on validation, else
its latest) or `<workdir>:<step>`. Only parameters whose path and shape match
the new model are copied (e.g. Sketch-a-Net's trunk and fc6 from the sketch
classifier into DSSA); the rest keep their fresh initialisation. Freezing
(`config.frozen`) is the optimizer's job: see `core/optim.py`. The best
checkpoint is found by the selection value each checkpoint carries
(`checkpointing.py`), whatever metric the source task selected on.
"""
import os
from typing import Any

import flax.traverse_util
import jax
import numpy as np
from absl import logging

from sbir_jax.core import checkpointing


def parse_source(init_from: str) -> tuple[str, str]:
  """'<workdir>' -> (workdir, 'best'); '<workdir>:<step>' -> (workdir, step)."""
  workdir, sep, step = init_from.rpartition(':')
  if sep and step.isdigit():
    return workdir, step
  return init_from, 'best'


def load_params(init_from: str) -> dict:
  """The params of the checkpoint `init_from` names, as host numpy arrays."""
  workdir, which = parse_source(init_from)
  if not os.path.isdir(os.path.join(workdir, 'checkpoints')):
    raise checkpointing.CheckpointError(
        f'config.init_from={init_from!r}: {workdir} holds no checkpoints/ folder. '
        'Train that run first (e.g. python -m sbir_jax.main '
        '--config=configs/sketch_pretrain.py:cpu), or fix the path.')
  manager = checkpointing.make_manager(workdir, read_only=True)
  if which == 'best' and checkpointing.best_step(manager) is None:
    which = 'latest'  # A run without validation has no best.
  step = checkpointing.resolve_step(manager, which if which in ('best', 'latest') else int(which))
  state = checkpointing.load_on_one_device(workdir, step)
  logging.info('init_from: %s step %d', workdir, step)
  return jax.tree.map(np.asarray, state['params'])


def merge_matching(params: Any, loaded: dict) -> tuple[Any, list[str], list[str]]:
  """(params with matching leaves replaced by `loaded`'s, copied, kept fresh)."""
  flat = flax.traverse_util.flatten_dict(params, sep='/')
  source = flax.traverse_util.flatten_dict(loaded, sep='/')
  copied, fresh, merged = [], [], {}
  for name, value in flat.items():
    other = source.get(name)
    if other is not None and other.shape == value.shape:
      merged[name] = other.astype(value.dtype)
      copied.append(name)
    else:
      merged[name] = value
      fresh.append(name)
  return flax.traverse_util.unflatten_dict(merged, sep='/'), copied, fresh


def unmatched_shared_modules(params: Any, loaded: dict, copied: list[str]) -> list[str]:
  """Top-level modules both models have of which nothing was copied: the two
  differ there (e.g. a Sketch-a-Net `trunk` against an EfficientNet one)."""
  top = lambda tree: set(tree) if isinstance(tree, dict) else set()
  got = {name.split('/', 1)[0] for name in copied}
  return sorted((top(params) & top(loaded)) - got)


def warm_start(params: Any, init_from: str, sharding: jax.sharding.Sharding) -> tuple[Any, dict]:
  """`params` with every matching array of `init_from`, placed on `sharding`.

  Returns the params and a summary for results.json. Raises if nothing
  matches, which means the source is some other model or input size, and if
  a module both models have gets nothing (a head copied onto another trunk
  would otherwise train on in silence, its trunk never initialised).
  """
  host_params = jax.tree.map(np.asarray, jax.device_get(params))
  loaded = load_params(init_from)
  merged, copied, fresh = merge_matching(host_params, loaded)
  if not copied:
    raise ValueError(
        f'config.init_from={init_from!r} shares no parameter (same name and '
        'shape) with this model. Pre-train with the same input size '
        '(config.data.crop_size) and width, or point init_from at a matching run.')
  unmatched = unmatched_shared_modules(host_params, loaded, copied)
  if unmatched:
    raise ValueError(
        f'config.init_from={init_from!r} would copy {copied} but no parameter of '
        f'{unmatched}, which both models have with other names or shapes (e.g. '
        'another trunk, config.model.trunk, or input size): point init_from at a '
        'run of the same architecture, or leave it empty.')
  logging.info('init_from copied %d arrays: %s; kept fresh: %s',
               len(copied), copied, fresh)
  placed = jax.tree.map(
      lambda x: jax.make_array_from_callback(x.shape, sharding, lambda index: x[index]),
      merged)
  return placed, {'init_from': init_from, 'init_from_copied': copied,
                  'init_from_fresh': fresh}
