"""DSSA on Shoe V1 from its raw RGB photos (edge maps by our extractor, or RGB).

Same shoes and annotations as configs/shoes.py; the photos come from the RGB
release (`lyd911/Deep_SBIR_tf`). Variants: VARIANTS of configs/fg_sbir/common.py.
"""
import ml_collections

from configs.fg_sbir import common

VARIANTS = common.VARIANTS


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return common.get_config('shoes', arg, source='qmul_v1_rgb')
