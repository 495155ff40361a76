"""Modification texts: a word vocabulary (host side) and TIRG's LSTM encoder.

The vocabulary is built from the training texts, as TIRG's `SimpleVocab`:
lower-case, punctuation dropped, split on white space. Id 0 pads, id 1 is the
unknown token: words never seen in training (e.g. at test time) map to it and
never crash. An empty text is an error (there is nothing to compose with).
"""
import string
from typing import Any, Iterable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

PAD_ID, UNK_ID = 0, 1
_PUNCTUATION = str.maketrans('', '', string.punctuation)


class EmptyTextError(ValueError):
  """A modification text with no words."""


def tokenize(text: str) -> list[str]:
  return str(text).lower().translate(_PUNCTUATION).split()


class Vocabulary:
  """word <-> id; ids 0 (padding) and 1 (unknown) are reserved."""

  def __init__(self, texts: Iterable[str]):
    words = sorted({w for t in texts for w in tokenize(t)})
    self.words = ['<pad>', '<unk>'] + words
    self.ids = {w: i for i, w in enumerate(self.words)}

  def __len__(self) -> int:
    return len(self.words)

  def encode(self, texts: Sequence[str], max_length: int) -> np.ndarray:
    """(N, max_length) int32 ids, padded with 0; longer texts are cut."""
    out = np.full((len(texts), max_length), PAD_ID, np.int32)
    for row, text in enumerate(texts):
      words = tokenize(text)
      if not words:
        raise EmptyTextError(
            f'Modification text {text!r} (row {row}) has no words; a composed '
            'query needs a text such as "add red circle to top-left".')
      ids = [self.ids.get(w, UNK_ID) for w in words[:max_length]]
      out[row, :len(ids)] = ids
    return out


def lengths(tokens_BxL: jax.Array) -> jax.Array:
  return jnp.sum(tokens_BxL != PAD_ID, axis=1).astype(jnp.int32)


class LstmTextEncoder(nn.Module):
  """TIRG's text model: word embedding -> LSTM -> output at the last word ->
  Linear (TIRG's 0.1 dropout before it is left out: no dropout rng here)."""
  vocab_size: int
  dim: int
  dtype: Optional[Any] = None  # Compute dtype (core/precision.py); params float32.

  @nn.compact
  def __call__(self, tokens_BxL: jax.Array) -> jax.Array:
    x_BxLxD = nn.Embed(self.vocab_size, self.dim, dtype=self.dtype,
                       name='embedding')(tokens_BxL)
    # The LSTM's gates in the compute dtype; its carry (c, h) stays float32
    # (flax's initial carry), so a long text accumulates no bfloat16 rounding.
    carry, _ = nn.RNN(nn.OptimizedLSTMCell(self.dim, dtype=self.dtype), return_carry=True,
                      name='lstm')(x_BxLxD, seq_lengths=lengths(tokens_BxL))
    _, hidden_BxD = carry  # (c, h) at each text's last word.
    return nn.Dense(self.dim, dtype=self.dtype, name='fc_output')(hidden_BxD)
