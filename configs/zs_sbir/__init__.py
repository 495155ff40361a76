"""Zero-shot SBIR (CVAE / CAAE) configs: common.py holds the shared config and variants."""
