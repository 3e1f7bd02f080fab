"""Best config: the most accurate recipe under 20,000 parameters within 15 epochs (issue 7).

Command:

  python scripts/seeds.py --config=configs/best.py --seeds=0,1,2,3,4 --root=workdirs/best \
      -- --config.data_dir=../shared/mnist

The 'spatial' net (19,290 parameters: the default's convolutions, then a dense head on the
5x5x16 map instead of GAP, with dropout 0.1 before it) on the tiny recipe: 15 epochs at
batch 64, shifts only, scored on an exponential moving average of the weights.
Result (2-core AMD EPYC CPU, docs/runs/best): final 99.64 / 99.56 / 99.63 / 99.61 / 99.60 % on
seeds 0-4, mean 99.61 %: issue 7's 99.6 % mean is reached, by a margin of less than one test
image per seed. On seeds 5-9 the mean was 99.58 % (ten seeds: 99.596 %), so expect ~99.6 %, not
more (probes: docs/experiments.md).
"""

import ml_collections

from configs import mnist


def get_config() -> ml_collections.ConfigDict:
  """The spatial-head net with dropout, at batch 64 for 15 epochs, scored on the EMA."""
  c = mnist.get_config()
  c.arch = 'spatial'  # Dense head on the 5x5 map: mean 99.56 % vs 99.47 % with GAP (probe).
  c.dropout_rate = 0.1  # Before the 4,010-param head: mean 99.61 % vs 99.56 % without.
  c.num_epochs = 15  # The budget.
  c.batch_size = 64  # Twice the steps per epoch: a probe on the tiny net gained on both seeds.
  c.max_degrees = 0.0  # Shifts only, as the tiny config (rotations cost the tiny net accuracy).
  c.ema_decay = 0.999  # Averages over ~1,000 steps (about one epoch at batch 64).
  return c
