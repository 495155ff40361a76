"""DSSA on Shoe V1 from its raw RGB photos (edge maps by our extractor, or RGB).

Same shoes and annotations as configs/shoes.py; the photos come from the RGB
release (`lyd911/Deep_SBIR_tf`). Variants: see configs/fg_sbir_common.py.
"""
from configs import fg_sbir_common


def get_config(arg=None):
  return fg_sbir_common.get_config('shoes', arg, source='qmul_v1_rgb')
