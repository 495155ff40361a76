"""Sketch recognition: Sketch-a-Net pre-training on class-labelled sketches."""
from sbir_jax.tasks.sketch_classification.task import SketchClassificationTask as Task
