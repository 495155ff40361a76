"""One golden trajectory in CI (the rest: python -m tests.golden.trajectories check).

The Shoe V1 `tiny` DSSA run must reproduce, step by step, the losses and the
val/test metrics recorded before the trainer redesign (tests/golden/).
"""
import json

from tests import helpers
from tests.golden import trajectories


def test_shoes_tiny_matches_its_golden_trajectory():
  helpers.require_data('qmul_v1')
  golden = json.load(open(trajectories.GOLDEN))['shoes_tiny']
  now = trajectories.run('shoes_tiny')
  assert trajectories.compare('shoes_tiny', golden, now) == []
