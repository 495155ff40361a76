"""Re-exports configs/fg_sbir/common.py under its old name, for existing callers."""
from configs.fg_sbir.common import (  # noqa: F401
    CPU_INPUTS, DATA_ENV, TINY_INPUTS, TINY_WIDTHS, VARIANTS, default_data_root,
    default_manual_dir, get_config)
