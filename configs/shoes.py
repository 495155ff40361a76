"""DSSA on QMUL-Shoes V1. Variants: see configs/fg_sbir_common.py."""
from configs import fg_sbir_common


def get_config(arg=None):
  return fg_sbir_common.get_config('shoes', arg)
