"""Mixed precision: the compute dtype of activations and matmuls.

`config.compute_dtype` names it: 'float32' (default) or 'bfloat16', the usual
choice on TPU and recent GPUs. The models take it as flax's `dtype=` (inputs
and parameters are cast to it inside each layer) while their parameters stay
float32 (`param_dtype`), and so do the optimizer state, BatchNorm statistics,
the embeddings the losses see, the learnable energies (HOLEF) and every loss:
a model casts its outputs with `to_float32` before any loss or energy.

'float32' maps to `None`, flax's own default ("promote inputs and
parameters"), so a float32 run is the exact program it was before this
option existed (the golden trajectories check it bit for bit).

Each backend allows the dtypes XLA runs fast there; anything else is refused
with the backend named (float16 on CPU is emulated and slow).
"""
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections

# backend -> compute dtypes XLA runs well there. bfloat16 on CPU is allowed
# for tests and debugging (correct, not faster); float16 only on GPU (TPUs
# have no float16 matrix units).
ALLOWED = {
    'cpu': ('float32', 'bfloat16'),
    'gpu': ('float32', 'bfloat16', 'float16'),
    'cuda': ('float32', 'bfloat16', 'float16'),
    'rocm': ('float32', 'bfloat16', 'float16'),
    'tpu': ('float32', 'bfloat16'),
}
DEFAULT = 'float32'


def allowed(backend: Optional[str] = None) -> tuple[str, ...]:
  """The compute dtypes of `backend` (default: JAX's default backend)."""
  return ALLOWED.get(backend or jax.default_backend(), (DEFAULT,))


def check(name: str, backend: Optional[str] = None) -> str:
  """`name` if the backend allows it; else a ValueError naming the backend."""
  backend = backend or jax.default_backend()
  ok = allowed(backend)
  if name not in ok:
    raise ValueError(
        f'config.compute_dtype={name!r} is not allowed on the {backend} backend '
        f'(allowed there: {", ".join(ok)}). Use --config.compute_dtype='
        f'{"bfloat16" if "bfloat16" in ok else DEFAULT}, or run on a backend that '
        'allows it.')
  return name


def compute_dtype(config: ml_collections.ConfigDict) -> Optional[Any]:
  """The flax `dtype=` of the models for config.compute_dtype: None for
  float32 (flax's default), else the jnp dtype. Checked against the backend."""
  name = check(config.get('compute_dtype', DEFAULT))
  return None if name == DEFAULT else jnp.dtype(name)


def to_float32(tree: Any) -> Any:
  """Every floating leaf of `tree` as float32 (a no-op on float32 leaves):
  what losses and energies compute in, whatever the compute dtype."""
  def cast(x):
    return x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x
  return jax.tree.map(cast, tree)
