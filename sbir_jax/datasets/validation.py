"""Validation carved from training data: the one rule every task uses."""
import numpy as np


def hold_out(num_items: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(kept, held out): sorted indices of `num_items`, round(fraction * n) of
  them held out, chosen by a permutation seeded with `seed` (stable across
  runs, independent of the training seed)."""
  order = np.random.default_rng(seed).permutation(num_items)
  num_held = int(round(num_items * fraction))
  return np.sort(order[num_held:]), np.sort(order[:num_held])
