"""DSSA on QMUL-Chair-V2 (stroke sketches, RGB photos as edge maps by default).

Several sketches per photo: train 300 photos / 952 sketches, test 100 / 323,
no triplet annotation (true-match triplets). `--config.data.photo_input=rgb`
keeps the RGB photos (for a model with an RGB photo tower). Variants:
VARIANTS of configs/fg_sbir/common.py.
"""
import ml_collections

from configs.fg_sbir import common

VARIANTS = common.VARIANTS


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return common.get_config('chairv2', arg, source='qmul_chair_v2')
