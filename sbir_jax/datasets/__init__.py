"""TFDS builders. Importing a module registers its builder with TFDS."""
