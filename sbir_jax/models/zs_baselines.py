"""Baselines of the ZS-SBIR paper's table (Yelamarthi et al., ECCV 2018, Table 3).

- `Regression`: sketch feature -> photo feature MLP trained with MSE (the
  paper's direct-regression baseline); trained by the same trainer.
- Untrained features: rank photos by the cosine between raw sketch and photo
  features (the paper's "baseline VGG"); no parameters (tasks/zs_sbir/baselines.py).
- ESZSL (Romera-Paredes & Torr, ICML 2015) and SAE (Kodirov et al., CVPR
  2017), closed form in numpy, using class word vectors. The paper does not
  say how it turned these zero-shot classifiers into retrieval; here each
  domain (sketch, photo) gets its own linear map into the word-vector space,
  fitted on the seen classes, and the gallery is ranked by the cosine between
  the projected sketch and the projected photos.
"""
from typing import Any, Optional, Sequence

import flax.linen as nn
import numpy as np

from sbir_jax.models import zs_cvae


class Regression(nn.Module):
  """x_sketch -> hidden ReLU layers -> x_img (ReLU, as photo features are >= 0)."""
  feature_dim: int
  hidden_dims: Sequence[int] = (2048,)
  dtype: Optional[Any] = None  # Compute dtype; the output is float32.

  @nn.compact
  def __call__(self, sketch_BxD):
    return zs_cvae.Mlp(self.hidden_dims, self.feature_dim, dtype=self.dtype)(sketch_BxD)


def eszsl_projection(x_NxD: np.ndarray, labels_N: np.ndarray,
                     semantic_CxA: np.ndarray, gamma: float,
                     lam: float) -> np.ndarray:
  """ESZSL's V (D, A): V = (X X^T + g I)^-1 X Y S (S^T S + l I)^-1.

  Y is the (N, C) one-hot label matrix in {-1, 1} as in the paper and labels
  index rows of `semantic_CxA`. A feature x maps to the semantic space as x V.
  """
  x = np.asarray(x_NxD, np.float64).T  # (D, N)
  s = np.asarray(semantic_CxA, np.float64)  # (C, A)
  y = -np.ones((x.shape[1], s.shape[0]))
  y[np.arange(x.shape[1]), labels_N] = 1.0
  left = np.linalg.solve(x @ x.T + gamma * np.eye(x.shape[0]), x @ y @ s)
  return left @ np.linalg.inv(s.T @ s + lam * np.eye(s.shape[1]))


def sae_projection(x_NxD: np.ndarray, labels_N: np.ndarray,
                   semantic_CxA: np.ndarray, lam: float) -> np.ndarray:
  """SAE's encoder W^T (D, A): W solves S S^T W + l W X X^T = (1 + l) S X^T.

  S holds each example's class vector (A, N); a feature x maps to x W^T.
  """
  x = np.asarray(x_NxD, np.float64).T  # (D, N)
  s = np.asarray(semantic_CxA, np.float64)[labels_N].T  # (A, N)
  return solve_symmetric_sylvester(s @ s.T, lam * (x @ x.T), (1 + lam) * s @ x.T).T


def solve_symmetric_sylvester(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
  """W with a W + W b = c, for symmetric PSD a and b, by eigendecomposition.

  As fast as two `eigh` calls (scipy's general Schur-based solver took 40 s
  at D = 1280 here). Where both eigenvalues are 0, c has no component either
  (c = (1 + l) S X^T lies in their ranges), and W's is set to 0.
  """
  ea, ua = np.linalg.eigh(a)
  eb, ub = np.linalg.eigh(b)
  denom = ea[:, None] + eb[None, :]
  rotated = ua.T @ c @ ub
  scale = max(float(np.abs(denom).max()), 1e-300)
  safe = np.abs(denom) > 1e-12 * scale
  w = np.divide(rotated, denom, out=np.zeros_like(rotated), where=safe)
  return ua @ w @ ub.T
