"""sbir_jax: sketch-based and composed-query image retrieval in JAX/Flax."""
