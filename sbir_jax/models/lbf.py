"""LBF: composed query retrieval with locally bounded features (Hosseinzadeh &
Wang, CVPR 2020; `../shared/papers/PAPERS.md` section 3).

Image -> K locally bounded entities, each a visual feature e_i and its
normalised box [x, y, w, h], p_i = Linear(box), c_i = Linear(avg(e_i, p_i)).
Where the entities come from (`entities_from`):
  grid             the cells of the image backbone's feature map, average-
                   pooled to a rows x cols grid (default; our stand-in for
                   the paper's detector regions, which need a detector);
  boxes            the backbone map average-pooled inside given boxes per
                   image (a detector's, or a CSS-style scene's object boxes);
  region_features  precomputed per-region features with their boxes (e.g.
                   Faster R-CNN features in an .npz): no image backbone.
The last two take a dict input (`image` or `features`, `boxes`, `box_mask`)
and ignore padded boxes everywhere (attention keys, pooling).
VEP: self-attention layers over {c_i}. TEP: word + positional embeddings,
self-attention layers. Fusion: cross-modal attention in both directions
(entities attend to words, words to entities), then the query f(I, M) =
head(mean of the attended entities + Linear(mean of the attended words)) and
the target g(I_t) = head(mean of its VEP entities): the same entity encoder
and VEP for reference and target images, and one `head` Linear for both (our
choice: f and g share a space, so the residual cross-attention starts f near
the reference image's embedding, as TIRG's gated residual does; separate heads
collapsed under the soft triplet loss, whose negatives include same-side
features). Both are L2-normalised and scaled (learnable, from 4.0) as in TIRG.

"big" / "small" are the paper's K = 36 / 18 entities: grids 6x6 and 3x6 here
(`ENTITY_GRIDS`), both exact; with given boxes, at most K boxes per image.
"""
from typing import Any, Optional, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from sbir_jax.models import attention
from sbir_jax.models import composed_encoders as enc
from sbir_jax.models import text

ENTITY_GRIDS = {'big': (6, 6), 'small': (3, 6)}  # (rows, cols): K = 36, 18.
ENTITY_SOURCES = ('grid', 'boxes', 'region_features')
# An image: uint8 pixels (grid), or a dict of regions (boxes, region_features).
ImageInput = Union[jax.Array, dict]


class Lbf(nn.Module):
  vocab_size: int
  dim: int = 256
  num_heads: int = 4
  vep_layers: int = 2
  tep_layers: int = 2
  cross_layers: int = 1
  entity_rows: int = 6
  entity_cols: int = 6
  entities_from: str = 'grid'
  max_text_length: int = 16
  backbone: str = 'small_cnn'
  cnn_width: int = 64
  # Compute dtype (core/precision.py; None = float32); parameters stay
  # float32, and so do f and g (ScaledL2Normalize casts them).
  dtype: Optional[Any] = None

  def setup(self):
    if self.entities_from not in ENTITY_SOURCES:
      raise ValueError(f'entities_from={self.entities_from!r}; use one of '
                       f'{ENTITY_SOURCES}.')
    if self.entities_from != 'region_features':
      self.cnn = enc.make_image_backbone(self.backbone, self.cnn_width, self.dtype)
    dense = lambda: nn.Dense(self.dim, dtype=self.dtype)
    self.visual_fc = dense()  # e_i
    self.position_fc = dense()  # p_i
    self.entity_fc = dense()  # c_i = Linear(avg(e_i, p_i))
    self.vep = [attention.SelfAttentionLayer(self.num_heads, self.dim, self.dtype)
                for _ in range(self.vep_layers)]
    self.word_embedding = nn.Embed(self.vocab_size, self.dim, dtype=self.dtype)
    self.word_position = nn.Embed(self.max_text_length, self.dim, dtype=self.dtype)
    self.tep = [attention.SelfAttentionLayer(self.num_heads, self.dim, self.dtype)
                for _ in range(self.tep_layers)]
    self.entities_to_words = [attention.CrossAttentionLayer(self.num_heads, self.dim,
                                                            self.dtype)
                              for _ in range(self.cross_layers)]
    self.words_to_entities = [attention.CrossAttentionLayer(self.num_heads, self.dim,
                                                            self.dtype)
                              for _ in range(self.cross_layers)]
    self.words_fc = dense()
    self.head = dense()  # Shared by f and g: one embedding space.
    self.normalize = enc.ScaledL2Normalize()

  @property
  def num_entities(self) -> int:
    return self.entity_rows * self.entity_cols

  def _regions(self, images: ImageInput
               ) -> tuple[jax.Array, jax.Array, Optional[jax.Array]]:
    """(visual features (B, K, C), boxes (B, K, 4) or (1, K, 4), mask or None)."""
    if self.entities_from == 'grid':
      if isinstance(images, dict):
        raise ValueError('entities_from=grid takes images, not a dict of regions.')
      boxes_1xKx4 = jnp.asarray(enc.cell_boxes(self.entity_rows, self.entity_cols))[None]
      map_BxHxWxC = self.cnn(images)
      return enc.box_average_pool(map_BxHxWxC, boxes_1xKx4), boxes_1xKx4, None
    needed = 'features' if self.entities_from == 'region_features' else 'image'
    if not isinstance(images, dict) or not {needed, 'boxes', 'box_mask'} <= set(images):
      raise ValueError(f'entities_from={self.entities_from} takes a dict with '
                       f"{needed!r}, 'boxes' and 'box_mask'.")
    boxes_BxKx4, mask_BxK = images['boxes'], images['box_mask']
    if needed == 'features':
      return images['features'], boxes_BxKx4, mask_BxK
    return (enc.box_average_pool(self.cnn(images['image']), boxes_BxKx4), boxes_BxKx4,
            mask_BxK)

  def entities(self, images: ImageInput) -> tuple[jax.Array, Optional[jax.Array]]:
    """V(I): (B, K, dim), the output of the last VEP layer, and the mask of
    real entities (B, K) (None: all real)."""
    visual_BxKxC, boxes, mask_BxK = self._regions(images)
    e_BxKxD = self.visual_fc(visual_BxKxC)
    p_xKxD = self.position_fc(boxes)
    c_BxKxD = self.entity_fc((e_BxKxD + p_xKxD) / 2.0)
    for layer in self.vep:
      c_BxKxD = layer(c_BxKxD, mask_BxK)
    return c_BxKxD, mask_BxK

  def words(self, tokens_BxL: jax.Array) -> tuple[jax.Array, jax.Array]:
    """TEP output (B, L, dim) and the mask of real words (B, L)."""
    length = tokens_BxL.shape[1]
    if length > self.max_text_length:
      raise ValueError(f'Texts of {length} tokens exceed max_text_length='
                       f'{self.max_text_length}.')
    mask_BxL = tokens_BxL != text.PAD_ID
    w_BxLxD = (self.word_embedding(tokens_BxL)
               + self.word_position(jnp.arange(length))[None])
    for layer in self.tep:
      w_BxLxD = layer(w_BxLxD, mask_BxL)
    return w_BxLxD, mask_BxL

  def compose(self, images: ImageInput, tokens_BxL: jax.Array) -> jax.Array:
    """f(I, M): (B, dim), normalised and scaled."""
    v_BxKxD, entity_mask_BxK = self.entities(images)
    w_BxLxD, word_mask_BxL = self.words(tokens_BxL)
    for to_words, to_entities in zip(self.entities_to_words, self.words_to_entities):
      # Linguistically attended visual features, visually attended words.
      v_BxKxD, w_BxLxD = (to_words(v_BxKxD, w_BxLxD, word_mask_BxL),
                          to_entities(w_BxLxD, v_BxKxD, entity_mask_BxK))
    joint_BxD = (attention.masked_mean(v_BxKxD, entity_mask_BxK)
                 + self.words_fc(attention.masked_mean(w_BxLxD, word_mask_BxL)))
    return self.normalize(self.head(joint_BxD))

  def embed_target(self, images: ImageInput) -> jax.Array:
    """g(I_t): (B, dim), normalised and scaled."""
    v_BxKxD, mask_BxK = self.entities(images)
    return self.normalize(self.head(attention.masked_mean(v_BxKxD, mask_BxK)))

  def __call__(self, images, tokens, targets):
    return self.compose(images, tokens), self.embed_target(targets)
