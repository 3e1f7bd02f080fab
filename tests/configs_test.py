"""Every config in configs/ loads, passes validation, and keeps its parameter budget."""

import glob
import importlib.util
import os

import jax
from absl.testing import absltest, parameterized

import preflight
import train
from nets import cnn
from tests import cnn_test, testutil

CONFIG_DIR = os.path.join(testutil.REPO_ROOT, 'configs')

# Parameter budgets: tiny and mid under 8,000, tiny6 under the published 6,260-parameter record,
# tiny4 under 4,000, every config under 20,000; tiny, tiny6 and the default train for at most 15
# epochs (the budget of their bars), mid and tiny4 for the mission's 20.
BUDGETS = {'tiny.py': 8_000, 'mid.py': 8_000, 'tiny6.py': 6_260, 'tiny4.py': 4_000}
DEFAULT_BUDGET = 20_000
EPOCH_BUDGETS = {'tiny.py': 15, 'mid.py': 20, 'tiny6.py': 15, 'mnist.py': 15, 'tiny4.py': 20}


def _configs():
  paths = sorted(glob.glob(os.path.join(CONFIG_DIR, '*.py')))
  return [(os.path.basename(p), p) for p in paths if not p.endswith('__init__.py')]


def _load(path):
  spec = importlib.util.spec_from_file_location('config_under_test', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)  # As --config=PATH loads it.
  return module.get_config()


class ConfigsTest(parameterized.TestCase):
  def test_the_quick_tier_covers_every_net_a_config_trains(self):
    self.assertEqual({_load(p).arch for _, p in _configs()}, set(cnn_test.CONFIG_NETS))

  def test_the_issue_configs_exist(self):
    self.assertContainsSubset({'mnist.py', 'tiny.py', 'gap.py'}, {n for n, _ in _configs()})

  @parameterized.named_parameters(_configs())
  def test_loads_validates_and_keeps_its_budget(self, path):
    config = _load(path)
    preflight.validate_config(config)  # Raises ConfigError on any out-of-range field.
    params = cnn.param_count(cnn.build(config.arch, config.dropout_rate))
    name = os.path.basename(path)
    self.assertLess(params, BUDGETS.get(name, DEFAULT_BUDGET), f'{name}: {params} params')
    self.assertLessEqual(config.num_epochs, EPOCH_BUDGETS.get(name, config.num_epochs))
    # The state the trainer builds has exactly the counted parameters.
    state = jax.eval_shape(lambda c=config: train.create_train_state(jax.random.key(0), c, 10))
    self.assertEqual(cnn.count_params(state.params), params)


if __name__ == '__main__':
  absltest.main()
