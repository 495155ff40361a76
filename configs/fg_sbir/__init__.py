"""FG-SBIR (DSSA) configs: common.py holds the config and its variants."""
