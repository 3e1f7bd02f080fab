"""Tests for nets/mlp.py: the delta rule == jax.grad on any shape, and == the 2-2-2 formulas."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized

import backprop_check
from nets import mlp, toy


def _batch(key, batch, widths, dtype):
  k_x, k_t = jax.random.split(key)
  x = jax.random.uniform(k_x, (batch, widths[0]), dtype, -1.0, 1.0)
  t = jax.random.uniform(k_t, (batch, widths[-1]), dtype, 0.0, 1.0)
  return x, t


class MlpTest(chex.TestCase):
  def setUp(self):
    super().setUp()
    self.enter_context(jax.numpy_rank_promotion('raise'))

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.product(
    (
      dict(widths=(2, 2, 2), use_bias=False),
      dict(widths=(3, 1), use_bias=True),
      dict(widths=(4, 7, 6, 3), use_bias=True),
    ),
    precision=['float32', 'float64'],
  )
  def test_delta_rule_equals_autodiff(self, widths, use_bias, precision):
    rtol, atol = backprop_check.GRAD_TOLERANCES[precision]
    with jax.enable_x64(precision == 'float64'):
      dtype = jnp.dtype(precision)
      k_init, k_data = jax.random.split(jax.random.key(len(widths) * 10 + widths[0]))
      layers = mlp.init_layers(k_init, widths, use_bias, dtype)
      x, t = _batch(k_data, 16, widths, dtype)
      hand = self.variant(mlp.hand_gradients)(layers, x, t)
      auto = self.variant(mlp.autodiff_gradients)(layers, x, t)
      chex.assert_trees_all_equal_shapes_and_dtypes(hand, layers)
      chex.assert_trees_all_close(auto, hand, rtol=rtol, atol=atol)

  @chex.variants(with_jit=True, without_jit=True)
  def test_toy_formulas_agree_with_delta_rule(self):
    """The 2-2-2 hand formulas, the delta rule and the losses agree on 1024 random cases."""
    rtol, atol = backprop_check.GRAD_TOLERANCES['float64']
    with jax.enable_x64(True):
      k_x, k_t, k_w = jax.random.split(jax.random.key(1), 3)
      n = 1024
      x = jax.random.uniform(k_x, (n, 2), jnp.float64, -1.0, 1.0)
      t = jax.random.uniform(k_t, (n, 2), jnp.float64, 0.0, 1.0)
      w = jax.random.uniform(k_w, (n, 8), jnp.float64, -3.0, 3.0)
      params = {name: w[:, i] for i, name in enumerate(toy.WEIGHT_NAMES)}

      def via_delta_rule(params, x, t):
        layers = toy.to_layers(params)
        grads = mlp.hand_gradients(layers, x[None, :], t[None, :])
        return toy.from_layers(grads), mlp.loss(layers, x[None, :], t[None, :])

      def via_toy(params, x, t):
        return toy.hand_gradients(params, x, t), toy.loss(params, x, t)

      delta_rule = self.variant(jax.vmap(via_delta_rule))(params, x, t)
      by_hand = self.variant(jax.vmap(via_toy))(params, x, t)
      chex.assert_trees_all_close(delta_rule, by_hand, rtol=rtol, atol=atol)

  def test_course_loss(self):
    with jax.enable_x64(True):
      layers = toy.to_layers(toy.course_params(jnp.float64))
      x = jnp.asarray([toy.COURSE_INPUTS], jnp.float64)
      t = jnp.asarray([toy.COURSE_TARGETS], jnp.float64)
      np.testing.assert_allclose(mlp.loss(layers, x, t), toy.COURSE_E_TOTAL, rtol=1e-15)


class RandomShapesTest(absltest.TestCase):
  """Slow tier: a compile per random shape."""

  def test_delta_rule_on_random_shapes(self):
    """25 random architectures (depth 1-4, widths 1-9, batch 1-8), float64."""
    rtol, atol = backprop_check.GRAD_TOLERANCES['float64']
    rng = np.random.default_rng(0)

    @jax.jit  # One compile per shape, both gradients in it: eager mode would compile every op.
    def both_gradients(layers, x, t):
      return mlp.autodiff_gradients(layers, x, t), mlp.hand_gradients(layers, x, t)

    with jax.enable_x64(True):
      for case in range(25):
        widths = tuple(int(n) for n in rng.integers(1, 10, size=rng.integers(2, 6)))
        batch = int(rng.integers(1, 9))
        use_bias = bool(case % 2)
        layers = [
          {'w': rng.normal(size=(n_in, n_out)) / np.sqrt(n_in)}
          | ({'b': rng.normal(size=n_out)} if use_bias else {})
          for n_in, n_out in zip(widths[:-1], widths[1:], strict=True)
        ]
        x = rng.uniform(-1, 1, size=(batch, widths[0]))
        t = rng.uniform(0, 1, size=(batch, widths[-1]))
        auto, hand = both_gradients(layers, x, t)
        chex.assert_trees_all_close(
          auto, hand, rtol=rtol, atol=atol, custom_message=f'widths={widths}, batch={batch}'
        )
        chex.assert_trees_all_equal_shapes(hand, layers)


if __name__ == '__main__':
  absltest.main()
