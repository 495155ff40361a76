"""Fine-grained SBIR (DSSA, ICCV 2017): triplet training, HOLEF energies, 10-view acc@K, retrieval."""
from sbir_jax.tasks.fg_sbir.task import FgSbirTask as Task
