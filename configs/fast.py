"""Fast config: the fewest train steps to >= 99.4 % (for seconds of training on a GPU).

Command:

  python -m scripts.seeds --config=configs/fast.py --seeds=0,1,2,3,4,5,6,7,8,9 \
      --root=workdirs/fast -- --config.data_dir=../shared/mnist

On a GPU a step of this small net costs about the same at batch 64 or 256 (the chip is far
from full), so time to a target accuracy follows the number of steps, not of images. The default
config's net and recipe (spatial head, dropout 0.1, shifts only, EMA) at batch 256 with the
peak learning rate doubled: 234 steps per epoch instead of 937, and an EMA of ~200 steps
(0.995) so the averaged weights keep up with an epoch that short.

Result (one NVIDIA H200, `SOLO=1 OUT=... bash scripts/gpu_check.sh fast`, docs/gpu/): every
seed 0-4 first at >= 99.4 % after epoch 3-5, in 1.21-1.86 s of training (compile, 4.6-6.1 s,
apart; 0.22 s per epoch after the first); final 99.57 / 99.54 / 99.52 / 99.51 / 99.52 %. The
GAP config (configs/gap.py) on the same GPU: 4.0 s to 99.4 % (seed 0; epoch 10 of 12).
Probe (seed 0, 2-core AMD EPYC CPU): 98.81 / 99.20 / 99.33 / 99.45 % after epochs 1-4, final
99.50 %; without the EMA 99.17 % after epoch 5 and 99.47 % final.
"""

import ml_collections

from configs import mnist


def get_config() -> ml_collections.ConfigDict:
  """The default config's net at batch 256 for 10 epochs, with a shorter EMA."""
  c = mnist.get_config()
  c.batch_size = 256  # A quarter of the default's steps per epoch.
  c.learning_rate = 0.2  # Twice the default peak for 4x the batch (sqrt scaling).
  c.ema_decay = 0.995  # ~200-step average: about one epoch here, as 0.999 is at batch 64.
  c.num_epochs = 10
  return c
