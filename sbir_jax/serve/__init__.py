"""Search by drawing: a web page and JSON API over `sbir_jax.inference` (`--mode=serve`)."""
