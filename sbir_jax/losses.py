"""Loss terms shared by the tasks."""
import jax
import jax.numpy as jnp


def triplet_hinge(positive_energy_B: jax.Array, negative_energy_B: jax.Array,
                  margin: float) -> jax.Array:
  """max(0, margin + D(s, p+) - D(s, p-)), averaged over the batch."""
  return jnp.mean(jax.nn.relu(margin + positive_energy_B - negative_energy_B))
