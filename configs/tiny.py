"""Tiny config: the 7,442-parameter CNN ('tiny' in nets/cnn.py), 15 epochs.

Command:

  python scripts/seeds.py --config=configs/tiny.py --seeds=0,1,2,3,4 --root=workdirs/tiny \
      -- --config.data_dir=../shared/mnist

Target (issue 7): < 8,000 parameters, >= 99.4 % on each of seeds 0-4 within 15 epochs with
the last 3 epochs all >= 99.4 %. NOT reached yet. This config, seeds 0-4 (the command above,
2-core AMD EPYC CPU, ~2.5 min per seed): best 99.46 / 99.44 / 99.44 / 99.29 / 99.38 %, final
99.44 / 99.42 / 99.44 / 99.27 / 99.38 %: 3 of 5 seeds reach 99.4 %. A better recipe is open work.
"""

import ml_collections

from configs import mnist


def get_config() -> ml_collections.ConfigDict:
  """The default config with the tiny architecture, lighter regularisation and 15 epochs."""
  c = mnist.get_config()
  c.arch = 'tiny'  # 8/16 channels instead of 16/32: 7,442 parameters.
  c.num_epochs = 15  # The budget.
  c.weight_decay = 5e-5  # A smaller net needs less regularisation (1e-4: 99.38 % on seed 0).
  c.max_degrees = 5.0  # Gentler rotations than the default's 7 degrees, for the same reason.
  return c
