"""Warp config: the default 19,290-parameter net and recipe, plus rotation, zoom, elastic jitter.

Command:

  python -m scripts.seeds --config=configs/warp.py --seeds=0,1,2,3,4,5,6,7,8,9 \
      --root=workdirs/warp -- --config.data_dir=../shared/mnist

configs/mnist.py with three more kinds of jitter, drawn per image on the device inside the
jitted step (augment.py): rotation within +-7 degrees and zoom within +-9 % (the 3,762-parameter
anchor's ranges), and an elastic warp of alpha 12 px (sigma 4). On seeds 4/1/6 it raised the
default's mean final from 99.560 % to 99.597 % with every late epoch >= 99.57 %. Over seeds 0-9
(AMD EPYC, 2 cores, 2026-12-07, docs/runs/warp) it does not beat the default: mean final
99.57 % against 99.58 %, lowest late epoch 99.44 % (seed 8) against 99.49 %; every seed holds
99.4 % through its last 3 epochs. The 99.65 % bar under 20,000 parameters is not met.
"""

import ml_collections

from configs import mnist


def get_config() -> ml_collections.ConfigDict:
  """configs/mnist.py with rotation +-7 deg, zoom +-9 % and elastic alpha 12."""
  c = mnist.get_config()
  c.max_degrees = 7.0
  c.max_scale = 0.09
  c.elastic_alpha = 12.0  # Simard's alpha 34 ended near 99.26 % on seeds 4 and 6 (too much).
  return c
