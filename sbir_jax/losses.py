"""Loss terms shared by the tasks."""
import jax
import jax.numpy as jnp


def triplet_hinge(positive_energy_B: jax.Array, negative_energy_B: jax.Array,
                  margin: float) -> jax.Array:
  """max(0, margin + D(s, p+) - D(s, p-)), averaged over the batch."""
  return jnp.mean(jax.nn.relu(margin + positive_energy_B - negative_energy_B))


def _squared_distances(x_NxD: jax.Array) -> jax.Array:
  sq_N = jnp.sum(x_NxD * x_NxD, axis=1)
  d_NxN = sq_N[:, None] + sq_N[None, :] - 2.0 * x_NxD @ x_NxD.T
  return jnp.maximum(d_NxN, 0.0)


def soft_triplet(query_BxD: jax.Array, target_BxD: jax.Array, rng: jax.Array,
                 num_negatives: int = 3) -> jax.Array:
  """TIRG's soft triplet loss, mean of log(1 + exp(d(a, p) - d(a, n))).

  The 2B features [queries; targets] form B classes (query i and target i).
  Every feature is an anchor; its positive is the other member of its class;
  `num_negatives` negatives are drawn at random (from `rng`) among the other
  2B - 2 features (TIRG: 3 per anchor). d is the squared Euclidean distance.
  """
  b = query_BxD.shape[0]
  if b < 2:
    raise ValueError('The soft triplet loss needs a batch of at least 2 pairs.')
  x_NxD = jnp.concatenate([query_BxD, target_BxD])
  d_NxN = _squared_distances(x_NxD)
  index_N = jnp.arange(2 * b)
  label_N = index_N % b
  positive_N = d_NxN[index_N, (index_N + b) % (2 * b)]
  is_negative_NxN = label_N[:, None] != label_N[None, :]
  # A random choice of negatives per anchor: the top of random keys.
  keys_NxN = jnp.where(is_negative_NxN, jax.random.uniform(rng, d_NxN.shape), -1.0)
  num = min(num_negatives, 2 * b - 2)
  _, chosen_NxM = jax.lax.top_k(keys_NxN, num)
  negative_NxM = jnp.take_along_axis(d_NxN, chosen_NxM, axis=1)
  return jnp.mean(jax.nn.softplus(positive_N[:, None] - negative_NxM))


def lbf_soft_triplet(query_BxD: jax.Array, target_BxD: jax.Array) -> jax.Array:
  """The LBF paper's soft triplet loss (Hosseinzadeh & Wang, CVPR 2020):
  each composed query against candidate images only, the batch's other
  targets, sum over them of log(1 + exp(sim(q, c) - sim(q, t))), with sim the
  dot product (the similarity the protocol ranks by); mean over queries.

  Unlike TIRG's form (`soft_triplet`) no query is an anchor of another query,
  and no feature of its own side is a negative.
  """
  b = query_BxD.shape[0]
  if b < 2:
    raise ValueError('The soft triplet loss needs a batch of at least 2 pairs.')
  sims_BxB = query_BxD @ target_BxD.T
  margins_BxB = sims_BxB - jnp.diagonal(sims_BxB)[:, None]
  others_BxB = 1.0 - jnp.eye(b, dtype=sims_BxB.dtype)
  return jnp.mean(jnp.sum(jax.nn.softplus(margins_BxB) * others_BxB, axis=1))


def batch_classification(query_BxD: jax.Array, target_BxD: jax.Array) -> jax.Array:
  """Softmax over the batch's targets by dot product; query i's class is i."""
  logits_BxB = query_BxD @ target_BxD.T
  log_probs_BxB = jax.nn.log_softmax(logits_BxB, axis=1)
  return -jnp.mean(jnp.diagonal(log_probs_BxB))


def batch_negatives_hinge(energy_BxN: jax.Array, positive_energy_B: jax.Array,
                          valid_negative_BxN: jax.Array, margin: float) -> jax.Array:
  """Triplet hinge of each anchor against every valid negative photo in the
  batch, averaged over the valid (anchor, negative) pairs."""
  hinge_BxN = jax.nn.relu(margin + positive_energy_B[:, None] - energy_BxN)
  valid = valid_negative_BxN.astype(hinge_BxN.dtype)
  return jnp.sum(hinge_BxN * valid) / jnp.maximum(jnp.sum(valid), 1.0)


def hardest_negative_hinge(energy_BxN: jax.Array, positive_energy_B: jax.Array,
                           valid_negative_BxN: jax.Array, margin: float) -> jax.Array:
  """Triplet hinge of each anchor against its hardest valid negative in the
  batch (lowest energy; "batch hard", Hermans et al. 2017), averaged over the
  anchors that have one. Unlike the mean over all pairs, the easy negatives
  that already clear the margin do not dilute the gradient."""
  hardest_B = jnp.min(jnp.where(valid_negative_BxN, energy_BxN, jnp.inf), axis=1)
  has_negative_B = jnp.any(valid_negative_BxN, axis=1)
  hinge_B = jnp.where(has_negative_B,
                      jax.nn.relu(margin + positive_energy_B - hardest_B), 0.0)
  return jnp.sum(hinge_B) / jnp.maximum(jnp.sum(has_negative_B), 1)
