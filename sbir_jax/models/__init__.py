"""Flax linen models: Sketch-a-Net, DSSA and the learnable retrieval energies."""
