"""Mid config: the tiny recipe on a 7,786-parameter spatial-head net with dropout, 20 epochs.

Command:

  python -m scripts.seeds --config=configs/mid.py --seeds=0,1,2,3,4,5,6,7,8,9 \
      --root=workdirs/mid -- --config.data_dir=../shared/mnist

Target: < 8,000 parameters, mean final test accuracy >= 99.5 % over seeds 0-9. Result (2-core
Intel Xeon CPU, docs/runs/mid): mean final 99.503 %, met by 3 test predictions in 100,000;
every seed >= 99.4 % with its last 3 epochs all >= 99.4 % (lowest 99.41 %). At 15 epochs the
ten seeds gave 99.483 % on the same Xeon and 99.499 % on an AMD EPYC (docs/experiments.md).
The net is tiny6's with an 8-channel head conv (a dense layer on 200 values) and dropout 0.1
before the classifier, as the default has: on seed 8, the seed where tiny and tiny6 miss
99.4 %, the same net ended at 99.38 % without dropout and 99.43 % with it.
"""

import ml_collections

from configs import tiny


def get_config() -> ml_collections.ConfigDict:
  """configs/tiny.py on the 7,786-parameter 'mid' net, with dropout before its classifier."""
  c = tiny.get_config()
  c.arch = 'mid'
  c.dropout_rate = 0.1
  c.num_epochs = 20  # The mission's budget: +0.020 % on the ten-seed mean over 15 epochs.
  return c
