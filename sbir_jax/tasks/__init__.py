"""One package per task; each exposes a `Task` class with the contract of
`sbir_jax/core/task.py`, found from `config.task` by module path (no registry).

  fg_sbir                fine-grained SBIR (DSSA), its input pipeline and retrieval
  zs_sbir                zero-shot SBIR (CVAE / CAAE), fixed features, baselines
  composed               composed query retrieval (LBF, TIRG, baselines)
  sketch_classification  Sketch-a-Net pre-training
"""
