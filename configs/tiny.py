"""Tiny config: the 7,442-parameter CNN ('tiny' in nets/cnn.py), 15 epochs.

Command:

  python -m scripts.seeds --config=configs/tiny.py --seeds=0,1,2,3,4,5,6,7,8,9 \
      --root=workdirs/tiny -- --config.data_dir=../shared/mnist

Target: < 8,000 parameters, >= 99.4 % on each of seeds 0-9 within 15 epochs with the last
3 epochs all >= 99.4 %. Met on seeds 0-4, not on 0-9 (2-core AMD EPYC CPU, docs/runs/tiny):
seed 8 ends at 99.36 % and seed 5's last three epochs dip to 99.36 %; ten-seed mean final
99.44 %. What each change from the GAP recipe did in probes on seeds 3 and 4:
docs/experiments.md.
"""

import ml_collections

from configs import gap


def get_config() -> ml_collections.ConfigDict:
  """The GAP recipe, re-tuned for 7,442 parameters and 15 epochs."""
  c = gap.get_config()
  c.arch = 'tiny'  # 8/16 channels instead of 16/32: 7,442 parameters.
  c.num_epochs = 15  # The tiny bar's budget.
  c.batch_size = (
    64  # Twice the updates per epoch (probe: seeds 3/4 final 99.54/99.43 vs 99.27/99.38).
  )
  c.weight_decay = 5e-5  # A smaller net needs less regularisation (1e-4: 99.38 % on seed 0).
  c.max_degrees = (
    0.0  # Shifts only: rotations cost this small net accuracy (probe: docs/experiments.md).
  )
  c.ema_decay = 0.999  # Score a moving average of the weights: steadier between epochs.
  return c
