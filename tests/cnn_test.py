"""Tests for nets/cnn.py: parameter count, shapes, summary table, the pure apply function."""

import functools
import os
import re

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized

from nets import cnn

# Asserted on purpose: a change to an architecture must update its count here (and the docs).
EXPECTED_PARAMS = {
  'gap': 17_946,
  'spatial': 19_290,
  'tiny': 7_442,
  'tiny6': 6_202,
  'mid': 7_786,
  'tiny4': 3_978,
}
CONFIG_NETS = tuple(EXPECTED_PARAMS)
EXPERIMENTS = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'docs', 'experiments.md')


def assert_output_shapes(arch: str) -> None:
  """Logits [5, 10] in training and evaluation, BatchNorm statistics of unchanged shapes."""
  model = cnn.build(arch)
  variables = cnn.init(model, jax.random.key(0))
  images = jnp.zeros((5, 28, 28, 1))
  logits, stats = cnn.apply(model, variables, images, train=True, rng=jax.random.key(1))
  chex.assert_shape(logits, (5, 10))
  chex.assert_trees_all_equal_shapes(stats, variables['batch_stats'])
  logits, _ = cnn.apply(model, variables, images, train=False)
  chex.assert_shape(logits, (5, 10))


def assert_initialised_count(arch: str) -> None:
  """The initialised parameters number exactly what eval_shape counted."""
  variables = cnn.init(cnn.build(arch), jax.random.key(0))
  assert cnn.count_params(variables['params']) == EXPECTED_PARAMS[arch], arch


class CnnTest(parameterized.TestCase):
  @parameterized.named_parameters((name, name) for name in EXPECTED_PARAMS)
  def test_param_count(self, arch):
    model = cnn.build(arch)
    self.assertEqual(cnn.param_count(model), EXPECTED_PARAMS[arch])
    self.assertLess(cnn.param_count(model), 20_000)

  def test_init_is_one_program_with_flax_eager_values(self):
    model, rng = cnn.build('spatial', 0.1), jax.random.key(7)
    lowerings = []

    def listen(event, duration, **kwargs):
      if event == '/jax/core/compile/jaxpr_to_mlir_module_duration':
        lowerings.append(event)

    jax.monitoring.register_event_duration_secs_listener(listen)
    self.addCleanup(jax.monitoring.unregister_event_duration_listener, listen)
    variables = cnn.init(model, rng, image_shape=(20, 20, 1))  # A shape no other test uses.
    self.assertLess(len(lowerings), 5)  # Flax's eager init lowers one per operation (~70).
    eager = model.init({'params': rng}, jnp.zeros((1, 20, 20, 1)), train=False)
    chex.assert_trees_all_equal(variables, eager)  # Bit for bit.

  def test_every_architecture_has_an_expected_count(self):
    self.assertEqual(set(cnn.ARCHITECTURES), set(EXPECTED_PARAMS))

  @parameterized.named_parameters((name, name) for name in CONFIG_NETS)
  def test_spec_round_trip(self, arch):
    spec = cnn.to_spec(cnn.ARCHITECTURES[arch])
    self.assertEqual(cnn.parse(spec), cnn.ARCHITECTURES[arch])
    self.assertEqual(cnn.param_count(cnn.build(spec)), EXPECTED_PARAMS[arch])

  def test_spec_tokens(self):
    self.assertEqual(
      cnn.parse('c8k1-c4v-pool-gap-flatten-dropout-dense'),
      (
        cnn.conv(8, 1),
        cnn.conv(4, 3, 'VALID'),
        cnn.POOL,
        cnn.GAP,
        cnn.FLATTEN,
        cnn.DROPOUT,
        cnn.HEAD,
      ),
    )

  def test_depthwise_tokens(self):
    layers = cnn.parse('c8-dw-c16k1-dwk5v-gap-dense')
    self.assertEqual(layers[1:4], (cnn.dwconv(), cnn.conv(16, 1), cnn.dwconv(5, 'VALID')))
    self.assertEqual(cnn.to_spec(layers), 'c8-dw-c16k1-dwk5v-gap-dense')

  def test_depthwise_conv_keeps_each_channel_apart(self):
    """One KxK kernel per channel (plus its BatchNorm scale and shift), and an output channel
    that reads its own input channel only: what makes 'dw-c<N>k1' a separable conv."""
    model = cnn.build('c6-dw-gap-dense')
    rows = cnn.summary(model)
    self.assertEqual(rows[1]['params'], 6 * 9 + 2 * 6)
    self.assertEqual(rows[1]['output'], (28, 28, 6))
    self.assertEqual(rows[1]['receptive_field'], 5)
    layer = cnn.CNN(layers=(cnn.dwconv(),))
    x = jax.random.normal(jax.random.key(1), (1, 28, 28, 6))
    variables = layer.init(jax.random.key(0), x, train=False)
    chex.assert_shape(variables['params']['DepthwiseConv_0']['kernel'], (3, 3, 1, 6))
    y = layer.apply(variables, x, train=False)
    y_moved = layer.apply(variables, x.at[..., 2].multiply(-3.0), train=False)
    changed = jnp.abs(y_moved - y).max(axis=(0, 1, 2)) > 0
    self.assertEqual(changed.tolist(), [False, False, True, False, False, False])

  @parameterized.parameters((3, 'SAME'), (3, 'VALID'), (4, 'SAME'), (5, 'VALID'))
  def test_depthwise_conv_equals_flax_grouped_conv(self, kernel, padding):
    x = jax.random.normal(jax.random.key(2), (2, 11, 9, 5))
    ours = cnn.DepthwiseConv(kernel, padding)
    variables = ours.init(jax.random.key(3), x)
    flax_conv = nn.Conv(5, (kernel, kernel), padding=padding, feature_group_count=5, use_bias=False)
    chex.assert_trees_all_equal_shapes(variables, flax_conv.init(jax.random.key(3), x))
    chex.assert_trees_all_close(
      ours.apply(variables, x), flax_conv.apply(variables, x), rtol=1e-5, atol=1e-5
    )
    grads = [
      jax.grad(lambda v, m=m: jnp.sum(jnp.sin(m.apply(v, x))))(variables) for m in (ours, flax_conv)
    ]
    chex.assert_trees_all_close(*grads, rtol=1e-4, atol=1e-4)

  @parameterized.parameters(
    ('c8-c16x-gap-dense', "'c16x'"),  # An unknown token is named.
    ('c8-gap', 'must end with its only dense layer'),
    ('c8-dense-dense', 'must end with its only dense layer'),
    ('tiny7', 'unknown architecture'),  # A name that is not in ARCHITECTURES.
  )
  def test_bad_spec_says_what_is_wrong(self, arch, message):
    with self.assertRaisesRegex(ValueError, re.escape(message)):
      cnn.build(arch)

  def test_probe_specs_in_the_experiments_doc_have_their_stated_counts(self):
    """Every `--config.arch=SPEC` row of docs/experiments.md builds, with the count it states."""
    with open(EXPERIMENTS) as f:
      rows = [line for line in f if line.startswith('|') and '--config.arch=' in line]
    self.assertGreaterEqual(len(rows), 5)
    for row in rows:
      spec = re.search(r'--config\.arch=([\w-]+)', row).group(1)
      with self.subTest(spec=spec):
        params = cnn.param_count(cnn.build(spec))
        stated = re.search(r'\((?:`\w+`, )?(\d,\d{3})', row)
        if stated:
          self.assertEqual(params, int(stated.group(1).replace(',', '')))

  def test_summary_matches_model(self):
    model = cnn.build('gap')
    rows = cnn.summary(model)
    self.assertLen(rows, len(model.layers))
    self.assertEqual(sum(r['params'] for r in rows), cnn.param_count(model))
    self.assertEqual(rows[-1]['output'], (10,))
    self.assertEqual(rows[1]['output'], (28, 28, 32))
    rf = [r['receptive_field'] for r in rows]
    self.assertEqual(rf, sorted(rf))  # Never shrinks.
    self.assertEqual(rf[:2], [3, 5])  # Two stacked 3x3 convs see 5x5.
    self.assertGreaterEqual(rf[-1], 28)  # The GAP head sees the whole digit.
    table = cnn.format_summary(rows)
    self.assertIn('| total | | 17,946 | |', table)

  @parameterized.named_parameters(('best', 'spatial', 16), ('tiny6', 'tiny6', 4))
  def test_spatial_head_reads_every_position_of_the_5x5_map(self, arch, channels):
    model = cnn.build(arch)
    rows = cnn.summary(model)
    flat = next(r for r in rows if 'flatten' in r['layer'])
    self.assertEqual(flat['output'], (5 * 5 * channels,))
    params = jax.eval_shape(lambda: cnn.init(model, jax.random.key(0)))['params']
    dense = params['Dense_0']['kernel']
    chex.assert_shape(dense, (5 * 5 * channels, 10))  # One weight per position and channel.
    self.assertEqual(rows[-1]['receptive_field'], 40)  # The head sees the whole map.

  def test_max_pool_matches_flax(self):
    x = jax.random.normal(jax.random.key(0), (3, 15, 14, 4))  # 15: a ragged edge, dropped.
    np.testing.assert_array_equal(cnn.max_pool(x, 2), nn.max_pool(x, (2, 2), strides=(2, 2)))
    # Without ties the gradients agree too (the one-hot of each window's maximum).
    grad_ours = jax.grad(lambda x: jnp.sum(cnn.max_pool(x, 2) ** 2))(x)
    grad_flax = jax.grad(lambda x: jnp.sum(nn.max_pool(x, (2, 2), strides=(2, 2)) ** 2))(x)
    np.testing.assert_allclose(grad_ours, grad_flax, rtol=1e-6)

  def test_unknown_architecture(self):
    with self.assertRaisesRegex(ValueError, 'unknown architecture'):
      cnn.build('nope')


class EveryNetCompilesTest(parameterized.TestCase):
  """Each config net initialised and run for real (slow tier: a compile each)."""

  @parameterized.named_parameters((name, name) for name in CONFIG_NETS)
  def test_initialised_params_are_the_counted_ones(self, arch):
    assert_initialised_count(arch)

  @parameterized.named_parameters((name, name) for name in CONFIG_NETS)
  def test_output_shapes(self, arch):
    assert_output_shapes(arch)

  def test_train_mode_updates_batch_stats_and_eval_is_deterministic(self):
    model = cnn.build('tiny')  # The smallest net: one compile of each mode, nothing eager.
    variables = jax.jit(functools.partial(cnn.init, model))(jax.random.key(0))
    images = jax.random.normal(jax.random.key(2), (8, 28, 28, 1))
    apply = jax.jit(functools.partial(cnn.apply, model), static_argnames='train')
    _, stats = apply(variables, images, train=True)
    leaves_old = jax.tree_util.tree_leaves(variables['batch_stats'])
    leaves_new = jax.tree_util.tree_leaves(stats)
    self.assertTrue(any(not np.allclose(a, b) for a, b in zip(leaves_old, leaves_new, strict=True)))
    a, _ = apply(variables, images, train=False)
    b, _ = apply(variables, images, train=False)
    np.testing.assert_array_equal(a, b)


if __name__ == '__main__':
  absltest.main()
