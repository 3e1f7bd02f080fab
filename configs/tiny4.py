"""Tiny4 config: the tiny recipe on the 3,978-parameter 'tiny4' net, 20 epochs.

Command:

  python -m scripts.seeds --config=configs/tiny4.py --seeds=8,9,5,7,6,0,1,2,3,4 \
      --root=workdirs/tiny4 -- --config.data_dir=../shared/mnist

Target: < 4,000 parameters, >= 99.4 % in each of the last 3 of at most 20 epochs on every one
of seeds 0-9. Result: NOT met (AMD EPYC, 2 cores, 2026-12-07, docs/runs/tiny4): mean final
99.34 % (std 0.03), every seed ends in 99.27-99.38 %, 3/10 touch 99.4 % and none holds it.
The probes around it: docs/experiments.md.
"""

import ml_collections

from configs import tiny


def get_config() -> ml_collections.ConfigDict:
  """configs/tiny.py on the 3,978-parameter 'tiny4' net, for 20 epochs."""
  c = tiny.get_config()
  c.arch = 'tiny4'
  c.num_epochs = 20  # The mission's budget.
  # The 3,762-parameter anchor's augmentation (shift and zoom ±9 %, rotation ±7°, brightness
  # and contrast ±20 %): on seeds 8, 9 and 5, mean final 99.34 % against 99.30 % with shifts only.
  c.max_degrees = 7.0
  c.max_shift = 2.5
  c.max_scale = 0.09
  c.max_brightness = 0.2
  c.max_contrast = 0.2
  return c
