"""Retrieval metrics, computed on the host from energy / score matrices."""
