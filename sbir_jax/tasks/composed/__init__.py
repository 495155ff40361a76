"""Composed query retrieval (LBF, CVPR 2020; TIRG and simple baselines): data, model, loss, Recall@K."""
from sbir_jax.tasks.composed.task import ComposedTask as Task
