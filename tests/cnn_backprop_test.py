"""Tests for nets/cnn_backprop.py: the hand gradients equal jax.grad of train.py's real loss.

The witness is cnn_check.autodiff_loss_and_gradients (jax.grad of train.train_step's loss_fn on
the Flax model); tolerances and their derivation: cnn_check.TOLERANCES.
"""

import functools
import inspect
import os
import re
import subprocess
import sys
import tempfile

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized
from hypothesis import given, settings
from hypothesis import strategies as st

import cnn_check
import preflight
import train
from errors import ConfigError
from nets import cnn
from nets import cnn_backprop as cb
from tests import testutil

CONFIG_NETS = ('gap', 'spatial', 'tiny', 'tiny6', 'tiny4', 'mid')


def batch(shape, n, dtype, seed=0):
  """n random images in [0, 1) and labels 0..9."""
  images = jax.random.uniform(jax.random.key(seed), (n, *shape), dtype)
  return images, jax.random.randint(jax.random.key(seed + 1), (n,), 0, 10)


def variables_of(model, dtype, image_shape=(28, 28, 1), seed=0):
  """Fresh Flax variables, with running statistics moved off their init (0 and 1) so that the
  running-average update is checked on values that are not trivial."""
  v = cnn.init(model, jax.random.key(seed), image_shape)
  stats = jax.tree.map(lambda a: a + 0.25, v['batch_stats'])
  return jax.tree.map(lambda a: a.astype(dtype), {'params': v['params'], 'batch_stats': stats})


def assert_hand_equals_autodiff(model, n=3, dtype=jnp.float64, smoothing=0.1, image_shape=None):
  """chex: hand == jax.grad (whole pytrees) and the same loss, logits and batch_stats."""
  image_shape = image_shape or (28, 28, 1)
  precision = jnp.dtype(dtype).name
  rtol = cnn_check.TOLERANCES[precision]
  variables = variables_of(model, dtype, image_shape)
  images, labels = batch(image_shape, n, dtype)
  args = (model, variables, images, labels, jax.random.key(7), smoothing)
  (loss_h, (logits_h, stats_h)), hand = cb.loss_and_gradients(*args)
  (loss_a, (logits_a, stats_a)), auto = cnn_check.autodiff_loss_and_gradients(*args)
  chex.assert_trees_all_equal_shapes_and_dtypes(hand, variables['params'])
  chex.assert_trees_all_close((loss_h, logits_h, stats_h), (loss_a, logits_a, stats_a), rtol=rtol)
  scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(auto))
  chex.assert_trees_all_close(hand, auto, rtol=rtol, atol=rtol * scale)
  return cnn_check.compare(hand, auto, precision, model.layers)


class ConfigNetsTest(parameterized.TestCase):
  @parameterized.parameters(*CONFIG_NETS)
  def test_float64_odd_batch_dropout_and_smoothing(self, arch):
    with jax.enable_x64(True):
      rows = assert_hand_equals_autodiff(cnn.build(arch, 0.1), n=3)
    self.assertEqual(
      len(rows), len(jax.tree.leaves(variables_of(cnn.build(arch), jnp.float32)['params']))
    )

  @parameterized.parameters((1, 0.0), (64, 0.0), (64, 0.2))
  def test_float64_batch_sizes_smoothing_on_and_off(self, n, smoothing):
    with jax.enable_x64(True):
      assert_hand_equals_autodiff(cnn.build('mid', 0.5), n=n, smoothing=smoothing)

  def test_float32_to_the_derived_tolerance(self):
    rows = assert_hand_equals_autodiff(cnn.build('spatial', 0.1), n=64, dtype=jnp.float32)
    self.assertIsNone(cnn_check.first_disagreement(rows))


def spec_strategy():
  """Random layer specs on an 8x8 image: 1-4 conv/pool stages, a gap or flatten head, maybe
  dropout, the dense classifier. Conv maps stay >= 2x2 (a batch of one still has a spread)."""
  conv = st.builds(
    lambda c, k, v: f'c{c}' + ('k1' if k == 1 else '') + ('v' if v and k == 3 else ''),
    st.integers(1, 4), st.sampled_from([1, 3]), st.booleans(),
  )  # fmt: skip
  body = st.lists(st.one_of(conv, st.just('pool')), min_size=1, max_size=4)
  return st.tuples(body, st.sampled_from(['gap', 'flatten']), st.booleans())


def fits(tokens, size=8):
  """Whether every stage of `tokens` sees a map of at least 2x2."""
  for t in tokens:
    if size < 2:
      return False
    size = size // 2 if t == 'pool' else size - 2 * t.endswith('v')
  return size >= 1


class RandomSpecsTest(parameterized.TestCase):
  @settings(max_examples=6, deadline=None, derandomize=True)
  @given(spec_strategy(), st.integers(1, 5), st.sampled_from([0.0, 0.3]))
  def test_random_specs_float64(self, parts, n, smoothing):
    body, head, dropout = parts
    if not fits(body):
      body = ['c2']
    spec = '-'.join([*body, head, *(['dropout'] if dropout else []), 'dense'])
    with jax.enable_x64(True):
      assert_hand_equals_autodiff(
        cnn.build(spec, 0.5), n=n, smoothing=smoothing, image_shape=(8, 8, 1)
      )


class NoConvNetTest(parameterized.TestCase):
  @parameterized.parameters('flatten-dense', 'pool-flatten-dropout-dense', 'gap-dense')
  def test_a_net_with_no_batchnorm_agrees_and_keeps_empty_stats(self, spec):
    model = cnn.build(spec, 0.5)
    self.assertEqual(cnn.init(model, jax.random.key(0), (8, 8, 1))['batch_stats'], {})
    with jax.enable_x64(True):
      assert_hand_equals_autodiff(model, n=3, image_shape=(8, 8, 1))


class LayerRulesTest(absltest.TestCase):
  def test_max_pool_ties_share_the_gradient_as_jax_grad_of_the_reshape_max(self):
    x = jnp.array([[1.0, 1.0, 0.0, 2.0], [1.0, 0.0, 2.0, 2.0], [3, 3, 3, 3], [3, 3, 3, 3.0]])
    x = x[None, :, :, None]
    dy = jnp.array([[4.0, 6.0], [8.0, 12.0]])[None, :, :, None]
    hand = cb.max_pool_backward(x, cb.max_pool_forward(x, 2), dy, 2)
    auto = jax.grad(lambda x: jnp.sum(cnn.max_pool(x, 2) * dy))(x)
    np.testing.assert_array_equal(hand, auto)
    # Three 1s share 4, three 2s share 6, four 3s share 8 and 12.
    np.testing.assert_allclose(
      hand[0, :2, :, 0], [[4 / 3, 4 / 3, 0, 2], [4 / 3, 0, 2, 2]], rtol=1e-6
    )
    np.testing.assert_array_equal(hand[0, 2:, :, 0], [[2, 2, 3, 3], [2, 2, 3, 3]])

  def test_max_pool_drops_a_ragged_edge_with_zero_gradient(self):
    x = jax.random.normal(jax.random.key(0), (2, 5, 5, 3))
    dy = jax.random.normal(jax.random.key(1), (2, 2, 2, 3))
    hand = cb.max_pool_backward(x, cb.max_pool_forward(x, 2), dy, 2)
    auto = jax.grad(lambda x: jnp.sum(cnn.max_pool(x, 2) * dy))(x)
    np.testing.assert_array_equal(hand, auto)

  def test_relu_at_zero_has_zero_gradient(self):
    x = jnp.array([-1.0, 0.0, 2.0])
    np.testing.assert_array_equal(cb.relu_backward(x, jnp.ones(3)), [0.0, 0.0, 1.0])

  def test_no_autodiff_in_the_module(self):
    source = inspect.getsource(cb)
    banned = r'jax\.(grad|vjp|jvp|linearize|value_and_grad|jacrev|jacfwd|custom_vjp)'
    self.assertIsNone(re.search(banned, source))
    self.assertIsNone(re.search(r'\b(transpose|linear_transpose|backward_pass)\(', source))


def _broken_relu(x, dy):
  """The ReLU backward with its mask forgotten: every dy passes."""
  del x
  return dy


def _broken_pool(x, y, dy, k):
  """The max-pool backward spreading dy over the whole window, as if it were an average."""
  del y
  b, h, w, c = x.shape
  share = jnp.repeat(jnp.repeat(dy / (k * k), k, axis=1), k, axis=2)
  return jnp.pad(share, ((0, 0), (0, h - share.shape[1]), (0, w - share.shape[2]), (0, 0)))


class WrongRuleTest(parameterized.TestCase):
  """A wrong rule fails the check, and the parameter it names is next to that rule."""

  @parameterized.parameters(
    ('relu_backward', _broken_relu, 'BatchNorm_5'),  # tiny's last conv block
    ('max_pool_backward', _broken_pool, 'BatchNorm_4'),  # the block before tiny's last pool
    ('dropout_backward', lambda keep, rate, dy: dy, 'BatchNorm_5'),  # the head's input block
  )
  def test_wrong_rule_fails_and_is_named(self, rule, broken, named):
    model = cnn.build('c4-c4-pool-c4k1-c4-c4-pool-c4v-dropout-flatten-dense', 0.5)
    with jax.enable_x64(True):
      assert_hand_equals_autodiff(model)  # Right before the rule is broken.
      with absltest.mock.patch.object(cb, rule, broken):
        with self.assertRaises(AssertionError):
          assert_hand_equals_autodiff(model)
        variables = variables_of(model, jnp.float64)
        images, labels = batch((28, 28, 1), 3, jnp.float64)
        rows = cnn_check.check_batch(
          model, variables, images, labels, jax.random.key(7), 0.0, 'float64'
        )
    bad = cnn_check.first_disagreement(rows)
    self.assertEqual(bad.path.split('/')[0], named)
    self.assertIn(f'{named}/', cnn_check.format_rows(rows, 'float64').splitlines()[-1])


class ErrorsTest(absltest.TestCase):
  def test_an_unknown_layer_kind_is_named_before_anything_runs(self):
    layers = (cnn.conv(4), cnn.Layer('upsample'), cnn.GAP, cnn.HEAD)
    with self.assertRaisesRegex(ConfigError, r"layer 1 \(.*'upsample'.*\) has no hand backward"):
      cb.forward(cnn.CNN(layers=layers), {'params': {}, 'batch_stats': {}}, None, None)

  def test_config_gradients_is_validated(self):
    config = testutil.tiny_config('')
    config.gradients = 'symbolic'
    with self.assertRaisesRegex(ConfigError, "config.gradients='symbolic' must be 'autodiff'"):
      preflight.validate_config(config)


class TrainStepTest(absltest.TestCase):
  def test_train_step_with_hand_gradients_takes_autodiffs_step(self):
    """train.train_step(gradients='hand'): the same new params, batch_stats and metrics."""
    config = testutil.tiny_config('', arch='c4-pool-c4v-dropout-flatten-dense', dropout_rate=0.2)
    config.label_smoothing = 0.1
    state = train.create_train_state(jax.random.key(0), config, 10)
    images = jax.random.randint(jax.random.key(1), (8, 28, 28), 0, 256).astype(jnp.uint8)
    labels = jax.random.randint(jax.random.key(2), (8,), 0, 10)
    step = functools.partial(train.train_step, label_smoothing=0.1, jitter=dict(max_shift=2.0))
    outs = {
      g: jax.jit(functools.partial(step, gradients=g))(state, images, labels, jax.random.key(3))
      for g in ('hand', 'autodiff')
    }
    (hand, m_hand), (auto, m_auto) = outs['hand'], outs['autodiff']
    rtol = cnn_check.TOLERANCES['float32']
    chex.assert_trees_all_close(
      (hand.params, hand.batch_stats), (auto.params, auto.batch_stats), rtol=rtol, atol=rtol
    )
    self.assertEqual(int(m_hand['correct']), int(m_auto['correct']))
    np.testing.assert_allclose(m_hand['loss_sum'], m_auto['loss_sum'], rtol=rtol)


class CnnCheckCommandTest(absltest.TestCase):
  """`python backprop_check.py --cnn`: the table, the last line, the exit status."""

  def run_command(self, *args):
    with tempfile.TemporaryDirectory() as tmp:
      data = testutil.write_idx_dir(tmp, 16, 8)
      return subprocess.run(
        [sys.executable, 'backprop_check.py', '--cnn', *args, f'--config.data_dir={data}'],
        cwd=testutil.REPO_ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, 'JAX_PLATFORMS': 'cpu'},
      )  # fmt: skip

  def test_a_spec_agrees_in_float32_and_a_bad_flag_is_one_error_line(self):
    spec = 'c4-pool-c4k1-c4v-gap-dense'
    done = self.run_command('--config=configs/tiny.py', f'--config.arch={spec}', '--cnn_batch=5',
                            '--precision=float32')  # fmt: skip
    self.assertEqual(done.returncode, 0, done.stderr)
    lines = done.stdout.strip().splitlines()
    self.assertEqual(lines[-1], 'all 11 parameters agree (float32, rtol 0.0001)')
    self.assertRegex(done.stdout, r'Conv_1/kernel +1x1x4x4 +\d\.\d{3}e[-+]\d+ +\d\.\d{3}e')
    bad = self.run_command('--config.gradients=symbolic')
    self.assertEqual(bad.returncode, 1)
    self.assertRegex(bad.stderr.strip().splitlines()[-1], r"error: config.gradients='symbolic'")


if __name__ == '__main__':
  absltest.main()
