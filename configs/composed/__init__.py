"""Composed query retrieval configs (LBF, TIRG): common.py holds the shared config."""
