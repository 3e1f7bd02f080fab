"""Tiny6 config: the tiny recipe on the 6,202-parameter 'tiny6h' net (issue 7's push-down).

Command:

  python scripts/seeds.py --config=configs/tiny6.py --seeds=0,1,2,3,4 --root=workdirs/tiny6 \
      -- --config.data_dir=../shared/mnist

The fewest parameters we found that still hold the tiny bar (every seed >= 99.4 % with its last
3 of 15 epochs all >= 99.4 %), under the published single-run record of 6,260 parameters
(99.42 %, mean of the last 3 epochs). The net: tiny's 8/16 channels with 12 in the second 28x28
conv, and a spatial head (a 4-channel VALID conv to 5x5, a dense layer on its 100 values)
instead of GAP. Result (2-core AMD EPYC CPU, docs/runs/tiny6): final 99.47 / 99.43 / 99.49 /
99.43 / 99.42 % on seeds 0-4, lowest of any seed's last 3 epochs 99.40 %. Smaller nets that
did not hold (5,806 and 6,122 parameters) and the other probes: docs/experiments.md.
"""

import ml_collections

from configs import tiny


def get_config() -> ml_collections.ConfigDict:
  """configs/tiny.py on the 6,202-parameter spatial-head net."""
  c = tiny.get_config()
  c.arch = 'tiny6h'
  return c
