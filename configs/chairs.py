"""DSSA on QMUL-Chairs V1. Variants: VARIANTS of configs/fg_sbir/common.py."""
import ml_collections

from configs.fg_sbir import common

VARIANTS = common.VARIANTS


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return common.get_config('chairs', arg)
