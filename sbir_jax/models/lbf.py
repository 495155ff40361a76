"""LBF: composed query retrieval with locally bounded features (Hosseinzadeh &
Wang, CVPR 2020; `../shared/papers/PAPERS.md` section 3).

Image -> K locally bounded entities. Here an entity is a cell of the image
backbone's feature map, average-pooled to a rows x cols grid (the paper uses
K Faster R-CNN regions): e_i its visual feature, p_i = Linear([x, y, w, h])
its normalised box, c_i = Linear(avg(e_i, p_i)). VEP: self-attention layers
over {c_i}. TEP: word + positional embeddings, self-attention layers. Fusion:
cross-modal attention in both directions (entities attend to words, words to
entities), then the query f(I, M) = head(mean of the attended entities +
Linear(mean of the attended words)) and the target g(I_t) = head(mean of its
VEP entities), with one `head` Linear for both (our choice: f and g share a
space, so the residual cross-attention starts f near the reference image's
embedding, as TIRG's gated residual does; separate heads collapsed under the
soft triplet loss, whose negatives include same-side features). Both are
L2-normalised and scaled (learnable, from 4.0) as in TIRG.

"big" / "small" are the paper's K = 36 / 18 entities: grids 6x6 and 3x6 here
(`ENTITY_GRIDS`), both exact.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from sbir_jax.models import attention
from sbir_jax.models import composed_encoders as enc
from sbir_jax.models import text

ENTITY_GRIDS = {'big': (6, 6), 'small': (3, 6)}  # (rows, cols): K = 36, 18.


class Lbf(nn.Module):
  vocab_size: int
  dim: int = 256
  num_heads: int = 4
  vep_layers: int = 2
  tep_layers: int = 2
  cross_layers: int = 1
  entity_rows: int = 6
  entity_cols: int = 6
  max_text_length: int = 16
  backbone: str = 'small_cnn'
  cnn_width: int = 64

  def setup(self):
    self.cnn = enc.make_image_backbone(self.backbone, self.cnn_width)
    self.visual_fc = nn.Dense(self.dim)  # e_i
    self.position_fc = nn.Dense(self.dim)  # p_i
    self.entity_fc = nn.Dense(self.dim)  # c_i = Linear(avg(e_i, p_i))
    self.vep = [attention.SelfAttentionLayer(self.num_heads, self.dim)
                for _ in range(self.vep_layers)]
    self.word_embedding = nn.Embed(self.vocab_size, self.dim)
    self.word_position = nn.Embed(self.max_text_length, self.dim)
    self.tep = [attention.SelfAttentionLayer(self.num_heads, self.dim)
                for _ in range(self.tep_layers)]
    self.entities_to_words = [attention.CrossAttentionLayer(self.num_heads, self.dim)
                              for _ in range(self.cross_layers)]
    self.words_to_entities = [attention.CrossAttentionLayer(self.num_heads, self.dim)
                              for _ in range(self.cross_layers)]
    self.words_fc = nn.Dense(self.dim)
    self.head = nn.Dense(self.dim)  # Shared by f and g: one embedding space.
    self.normalize = enc.ScaledL2Normalize()

  @property
  def num_entities(self) -> int:
    return self.entity_rows * self.entity_cols

  def entities(self, images_BxHxWx3: jax.Array) -> jax.Array:
    """V(I): (B, K, dim), the output of the last VEP layer."""
    map_BxHxWxC = self.cnn(images_BxHxWx3)
    cells_BxKxC = enc.adaptive_average_pool(map_BxHxWxC, self.entity_rows,
                                            self.entity_cols)
    boxes_Kx4 = jnp.asarray(enc.cell_boxes(self.entity_rows, self.entity_cols))
    e_BxKxD = self.visual_fc(cells_BxKxC)
    p_1xKxD = self.position_fc(boxes_Kx4)[None]
    c_BxKxD = self.entity_fc((e_BxKxD + p_1xKxD) / 2.0)
    for layer in self.vep:
      c_BxKxD = layer(c_BxKxD)
    return c_BxKxD

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

  def compose(self, images_BxHxWx3: jax.Array, tokens_BxL: jax.Array) -> jax.Array:
    """f(I, M): (B, dim), normalised and scaled."""
    v_BxKxD = self.entities(images_BxHxWx3)
    w_BxLxD, mask_BxL = self.words(tokens_BxL)
    for to_words, to_entities in zip(self.entities_to_words, self.words_to_entities):
      # Linguistically attended visual features, visually attended words.
      v_BxKxD, w_BxLxD = (to_words(v_BxKxD, w_BxLxD, mask_BxL),
                          to_entities(w_BxLxD, v_BxKxD))
    joint_BxD = (attention.masked_mean(v_BxKxD)
                 + self.words_fc(attention.masked_mean(w_BxLxD, mask_BxL)))
    return self.normalize(self.head(joint_BxD))

  def embed_target(self, images_BxHxWx3: jax.Array) -> jax.Array:
    """g(I_t): (B, dim), normalised and scaled."""
    return self.normalize(self.head(jnp.mean(self.entities(images_BxHxWx3), axis=1)))

  def __call__(self, images, tokens, targets):
    return self.compose(images, tokens), self.embed_target(targets)
