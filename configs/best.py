"""Best config: the most accurate recipe under 20,000 parameters within 15 epochs (issue 7).

Command:

  python scripts/seeds.py --config=configs/best.py --seeds=0,1,2,3,4 --root=workdirs/best \
      -- --config.data_dir=../shared/mnist

The default net (17,946 parameters) trained for 15 epochs at batch 64 (twice the updates of
the default's batch 128), evaluated with an exponential moving average of its weights.
Result (2-core AMD EPYC CPU, docs/runs/best): final 99.52 / 99.51 / 99.39 / 99.47 / 99.44 % on
seeds 0-4, mean 99.47 %: issue 7's 99.6 % mean is NOT reached (probes: docs/experiments.md).
"""

import ml_collections

from configs import mnist


def get_config() -> ml_collections.ConfigDict:
  """The default config at batch 64 for 15 epochs, scored on the weights' moving average."""
  c = mnist.get_config()
  c.num_epochs = 15  # The budget.
  c.batch_size = 64  # Twice the steps per epoch: a probe on the tiny net gained on both seeds.
  c.max_degrees = 0.0  # Shifts only, as the tiny config (rotations cost the tiny net accuracy).
  c.ema_decay = 0.999  # Averages over ~1,000 steps (about one epoch at batch 64).
  return c
