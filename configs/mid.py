"""Mid config: the tiny recipe on a 7,786-parameter spatial-head net with dropout, 15 epochs.

Command:

  python scripts/seeds.py --config=configs/mid.py --seeds=0,1,2,3,4,5,6,7,8,9 \
      --root=workdirs/mid -- --config.data_dir=../shared/mnist

Target: < 8,000 parameters, mean final test accuracy >= 99.5 % over seeds 0-9. Result (2-core
AMD EPYC CPU, docs/runs/mid): every seed >= 99.4 % with its last 3 epochs all >= 99.4 % (lowest
99.40 %), the tiny bar that tiny and tiny6 miss; mean final 99.499 %, 0.001 % (one prediction
in 100,000) short of 99.5 %. On an Intel Xeon the same ten seeds gave a mean of 99.483 % and
seed 9's last 3 epochs dipped to 99.37 % (docs/experiments.md): no margin on either bar. The
net is tiny6's with an 8-channel head conv (a dense layer on 200 values) and dropout 0.1 before the
classifier, as the default has: on seed 8, the seed where tiny and tiny6 miss 99.4 %, the same
net ended at 99.38 % without dropout and 99.43 % with it (docs/experiments.md).
"""

import ml_collections

from configs import tiny


def get_config() -> ml_collections.ConfigDict:
  """configs/tiny.py on the 7,786-parameter 'mid' net, with dropout before its classifier."""
  c = tiny.get_config()
  c.arch = 'mid'
  c.dropout_rate = 0.1
  return c
