"""Default config: 19,290 parameters, >= 99.4 % on every seed with a margin, in 15 epochs.

Command (what `make train` runs; MNIST is downloaded once unless --config.data_dir is set):

  python train.py --config=configs/mnist.py --workdir=workdirs/mnist_default

The 'spatial' net (the GAP net's convolutions, then a dense head on the 5x5x16 map with
dropout 0.1 before it) at batch 64 for 15 epochs, shifts only, scored on an exponential moving
average of the weights. Seeds 0-9 (scripts/seeds.py, 2-core AMD EPYC CPU, docs/runs/mnist,
about 8 minutes a seed): every seed's last 3 epochs >= 99.4 %, the table and its margin in the
README. What each change from configs/gap.py did: docs/experiments.md.
"""

import ml_collections

from configs import gap


def get_config() -> ml_collections.ConfigDict:
  """The spatial-head net with dropout, at batch 64 for 15 epochs, scored on the EMA."""
  c = gap.get_config()
  c.arch = 'spatial'  # Dense head on the 5x5 map: mean 99.56 % vs 99.47 % with GAP (probe).
  c.dropout_rate = 0.1  # Before the 4,010-param head: mean 99.61 % vs 99.56 % without.
  c.num_epochs = 15
  c.batch_size = 64  # Twice the steps per epoch: a probe on the tiny net gained on both seeds.
  c.max_degrees = 0.0  # Shifts only, as the tiny config (rotations cost the tiny net accuracy).
  c.ema_decay = 0.999  # Averages over ~1,000 steps (about one epoch at batch 64).
  return c
