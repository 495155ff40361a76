"""Re-exports configs/zs_sbir/common.py under its old name, for existing callers."""
from configs.zs_sbir.common import (  # noqa: F401
    MODELS, PAPER_FEATURE_DIM, VARIANTS, base_config, data_path, scale_widths)
