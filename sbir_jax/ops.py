"""Small array helpers shared by evaluators and tasks (numpy or jax alike)."""
import jax.numpy as jnp
import numpy as np


def l2_normalize(x, axis: int = -1, eps: float = 1e-12):
  """x / max(||x||, eps) along `axis`; numpy in, numpy out (jax likewise).

  Models normalise inside their layers (`models/dssa.l2_normalize`, whose
  rsqrt form has the gradient they train with); this one is for features
  and scores outside a model.
  """
  xp = np if isinstance(x, np.ndarray) else jnp
  return x / xp.maximum(xp.linalg.norm(x, axis=axis, keepdims=True), eps)
