"""Tiny config: the 7,442-parameter CNN ('tiny' in nets/cnn.py), 15 epochs (issue 7).

Command:

  python scripts/seeds.py --config=configs/tiny.py --seeds=0,1,2,3,4 --root=workdirs/tiny \
      -- --config.data_dir=../shared/mnist

Target: < 8,000 parameters, >= 99.4 % on each of seeds 0-4 within 15 epochs with the last
3 epochs all >= 99.4 %. Met on the 2-core AMD EPYC CPU: final 99.45 / 99.43 / 99.50 / 99.42 /
99.46 % on seeds 0-4, lowest of any seed's last 3 epochs 99.42 % (docs/runs/tiny). What each change
from the GAP recipe did in probes on seeds 3 and 4 (the two weakest of the first sweep):
docs/experiments.md.
"""

import ml_collections

from configs import gap


def get_config() -> ml_collections.ConfigDict:
  """The GAP recipe, re-tuned for 7,442 parameters and 15 epochs."""
  c = gap.get_config()
  c.arch = 'tiny'  # 8/16 channels instead of 16/32: 7,442 parameters.
  c.num_epochs = 15  # The budget.
  c.batch_size = (
    64  # Twice the updates per epoch (probe: seeds 3/4 final 99.54/99.43 vs 99.27/99.38).
  )
  c.weight_decay = 5e-5  # A smaller net needs less regularisation (1e-4: 99.38 % on seed 0).
  c.max_degrees = (
    0.0  # Shifts only: rotations cost this small net accuracy (probe: docs/experiments.md).
  )
  c.ema_decay = 0.999  # Score a moving average of the weights: steadier between epochs.
  return c
