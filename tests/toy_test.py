"""Tests for nets/toy.py: the course's values, and hand gradients == jax.grad."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized
from hypothesis import given, settings
from hypothesis import strategies as st

import backprop_check
from nets import toy

N_RANDOM = 4096  # random (inputs, targets, weights) cases per precision, checked in one vmap call


def _course(dtype):
  return (
    toy.course_params(dtype),
    jnp.asarray(toy.COURSE_INPUTS, dtype),
    jnp.asarray(toy.COURSE_TARGETS, dtype),
  )


def _random_cases(key, n, dtype):
  """n random cases: inputs in [-1, 1], targets in [0, 1], weights in [-3, 3]."""
  k_x, k_t, k_w = jax.random.split(key, 3)
  inputs = jax.random.uniform(k_x, (n, 2), dtype, -1.0, 1.0)
  targets = jax.random.uniform(k_t, (n, 2), dtype, 0.0, 1.0)
  w = jax.random.uniform(k_w, (n, 8), dtype, -3.0, 3.0)
  return {name: w[:, i] for i, name in enumerate(toy.WEIGHT_NAMES)}, inputs, targets


def _slipped_gradients(params, inputs, targets):
  """The classic spreadsheet slip: a_h1·(1 − a_h1) where a_h2·(1 − a_h2) belongs (w3, w4)."""
  grads = toy.hand_gradients(params, inputs, targets)
  f = toy.forward(params, inputs, targets)
  wrong_factor = f['a_h1'] * (1 - f['a_h1']) / (f['a_h2'] * (1 - f['a_h2']))
  return grads | {'w3': grads['w3'] * wrong_factor, 'w4': grads['w4'] * wrong_factor}


def _swapped_gradients(params, inputs, targets):
  """Two formulas swapped: ∂E/∂w5 computed as ∂E/∂w6 and the other way round."""
  grads = toy.hand_gradients(params, inputs, targets)
  return grads | {'w5': grads['w6'], 'w6': grads['w5']}


class ToyTest(chex.TestCase):
  def setUp(self):
    super().setUp()
    # A silent broadcast (e.g. (2,) against (2, 1)) would still give numbers; make it fail.
    self.enter_context(jax.numpy_rank_promotion('raise'))

  def test_course_forward_values(self):
    with jax.enable_x64(True):
      f = toy.forward(*_course(jnp.float64))
      self.assertEqual(f['E_total'].dtype, jnp.float64)
      # Golden value from the course sheet. If this fails, suspect the forward pass, not the number.
      np.testing.assert_allclose(f['E_total'], toy.COURSE_E_TOTAL, rtol=1e-15)
      np.testing.assert_allclose(f['h1'], 0.15 * 0.05 + 0.2 * 0.1, rtol=1e-15)
      np.testing.assert_allclose(f['h2'], 0.25 * 0.05 + 0.3 * 0.1, rtol=1e-15)
      np.testing.assert_allclose(f['a_h1'], 1 / (1 + np.exp(-0.0275)), rtol=1e-15)
      np.testing.assert_allclose(f['E_total'], f['E1'] + f['E2'], rtol=0)
      self.assertEqual(tuple(f), toy.INTERMEDIATE_NAMES)
      self.assertEqual(toy.loss(*_course(jnp.float64)), f['E_total'])

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters('float32', 'float64')
  def test_hand_equals_autodiff_at_course_values(self, precision):
    rtol, atol = backprop_check.GRAD_TOLERANCES[precision]
    with jax.enable_x64(precision == 'float64'):
      args = _course(jnp.dtype(precision))
      hand = self.variant(toy.hand_gradients)(*args)
      auto = self.variant(toy.autodiff_gradients)(*args)
      chex.assert_trees_all_equal_structs(hand, auto)
      chex.assert_trees_all_equal_dtypes(hand, auto)
      chex.assert_trees_all_close(auto, hand, rtol=rtol, atol=atol)
      self.assertEqual(hand['w1'].dtype, jnp.dtype(precision))

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters('float32', 'float64')
  def test_hand_equals_autodiff_on_random_cases(self, precision):
    rtol, atol = backprop_check.GRAD_TOLERANCES[precision]
    with jax.enable_x64(precision == 'float64'):
      cases = _random_cases(jax.random.key(0), N_RANDOM, jnp.dtype(precision))
      hand = self.variant(jax.vmap(toy.hand_gradients))(*cases)
      auto = self.variant(jax.vmap(toy.autodiff_gradients))(*cases)
      chex.assert_shape(list(hand.values()), (N_RANDOM,))
      chex.assert_trees_all_close(auto, hand, rtol=rtol, atol=atol)

  @settings(max_examples=200, deadline=None)
  @given(
    st.lists(st.floats(-3, 3), min_size=8, max_size=8),
    st.lists(st.floats(-1, 1), min_size=2, max_size=2),
    st.lists(st.floats(0, 1), min_size=2, max_size=2),
  )
  def test_hand_equals_autodiff_hypothesis(self, weights, inputs, targets):
    rtol, atol = backprop_check.GRAD_TOLERANCES['float64']
    with jax.enable_x64(True):
      params = {w: jnp.float64(v) for w, v in zip(toy.WEIGHT_NAMES, weights, strict=True)}
      args = (params, jnp.asarray(inputs, jnp.float64), jnp.asarray(targets, jnp.float64))
      chex.assert_trees_all_close(_jit_autodiff(*args), _jit_hand(*args), rtol=rtol, atol=atol)

  @parameterized.named_parameters(
    ('classic_w3_w4_slip', _slipped_gradients, "'w3'"),
    ('w5_w6_swapped', _swapped_gradients, "'w5'"),
  )
  def test_broken_hand_gradients_fail_naming_the_weight(self, broken, weight):
    rtol, atol = backprop_check.GRAD_TOLERANCES['float64']
    with jax.enable_x64(True):
      args = _course(jnp.float64)
      with self.assertRaisesRegex(AssertionError, weight):
        chex.assert_trees_all_close(toy.autodiff_gradients(*args), broken(*args), rtol, atol)

  def test_update_is_simultaneous(self):
    with jax.enable_x64(True):
      params, inputs, targets = _course(jnp.float64)
      grads = toy.hand_gradients(params, inputs, targets)
      new = toy.sgd_update(params, grads, 0.5)
      # Every weight moves by its gradient at the *old* weights (none sees an updated one).
      for w in toy.WEIGHT_NAMES:
        self.assertEqual(float(new[w]), float(params[w]) - 0.5 * float(grads[w]))
      self.assertEqual(set(new), set(toy.WEIGHT_NAMES))

  def test_layers_round_trip(self):
    params = toy.course_params()
    layers = toy.to_layers(params)
    chex.assert_shape([layers[0]['w'], layers[1]['w']], (2, 2))
    chex.assert_trees_all_equal(toy.from_layers(layers), params)
    # h1 = w1·i1 + w2·i2 is column 0 of the hidden layer.
    np.testing.assert_array_equal(layers[0]['w'][:, 0], [params['w1'], params['w2']])


_jit_hand = jax.jit(toy.hand_gradients)
_jit_autodiff = jax.jit(toy.autodiff_gradients)


if __name__ == '__main__':
  absltest.main()
