"""Zero-shot SBIR (ECCV 2018): CVAE / CAAE on fixed features, the parameter-free baselines."""
from sbir_jax.tasks.zs_sbir.task import ZsSbirTask as Task
