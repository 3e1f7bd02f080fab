"""optim.py: the one-cycle schedule and its held SWA tail, the moving and the equal weight
averages (the train step that uses them: tests/train_test.py)."""

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

import optim
from configs import mnist


class ScheduleTest(absltest.TestCase):
  def test_swa_learning_rate_is_held_from_its_epoch_on(self):
    config = mnist.get_config()
    config.num_epochs, config.swa_from_epoch, config.swa_learning_rate = 10, 8, 0.013
    held = optim.make_schedule(config, steps_per_epoch=100)
    config.swa_learning_rate = 0.0
    onecycle = optim.make_schedule(config, steps_per_epoch=100)
    for step in (0, 250, 699):  # Epochs 1-7: the one-cycle unchanged.
      np.testing.assert_allclose(held(step), onecycle(step), rtol=1e-6)
    for step in (700, 850, 999):  # Epochs 8-10: the held rate, where the one-cycle decays.
      np.testing.assert_allclose(held(step), 0.013, rtol=1e-6)
    self.assertLess(float(onecycle(999)), 1e-3)


class OptimizerTest(absltest.TestCase):
  def test_first_update_is_nesterov_sgd_on_the_decayed_weights(self):
    config = mnist.get_config()
    tx = optim.make_optimizer(config, steps_per_epoch=100)
    params = {'w': jnp.asarray(2.0)}
    updates, _ = tx.update({'w': jnp.asarray(0.5)}, tx.init(params), params)
    lr = float(optim.make_schedule(config, 100)(0))
    grad = 0.5 + config.weight_decay * 2.0  # The decay is added to the gradient.
    # Nesterov's first step: the velocity is the gradient, and the step is g + momentum * v.
    np.testing.assert_allclose(updates['w'], -lr * (1 + config.momentum) * grad, rtol=1e-6)


class AverageTest(absltest.TestCase):
  def test_update_is_the_capped_moving_average(self):
    ema, new = {'w': jnp.asarray(10.0)}, {'w': jnp.asarray(0.0)}
    # Late in training the decay itself applies: 0.9 * 10 + 0.1 * 0.
    np.testing.assert_allclose(optim.ema_update(ema, new, jnp.asarray(10**6), 0.9)['w'], 9.0)
    # At step 0 the cap (1 + 0) / (10 + 0) = 0.1 applies: 0.1 * 10 + 0.9 * 0.
    np.testing.assert_allclose(optim.ema_update(ema, new, jnp.asarray(0), 0.999)['w'], 1.0)

  def test_swa_average_is_the_equal_mean_of_the_weights_from_its_first_step(self):
    ws = [3.0, -1.0, 4.0, 1.5, 9.0, -2.6]
    update = jax.jit(optim.ema_update, static_argnums=(3, 4))
    ema, expected = {'w': jnp.asarray(100.0)}, 100.0
    for step, w in enumerate(ws):
      ema = update(ema, {'w': jnp.asarray(w)}, jnp.asarray(step), 0.9, 2)
      if step < 2:  # Before swa_from_step: the capped moving average.
        d = min(0.9, (1 + step) / (10 + step))
        expected = d * expected + (1 - d) * w
      else:  # From step 2 on: the mean of the weights after steps 2, 3, ..., `step`.
        expected = np.mean(ws[2 : step + 1])
      np.testing.assert_allclose(ema['w'], expected, rtol=1e-6)
    # From step 0: the plain mean of every step's weights, the initial ones forgotten.
    ema = {'w': jnp.asarray(100.0)}
    for step, w in enumerate(ws):
      ema = update(ema, {'w': jnp.asarray(w)}, jnp.asarray(step), 0.9, 0)
    np.testing.assert_allclose(ema['w'], np.mean(ws), rtol=1e-6)


if __name__ == '__main__':
  absltest.main()
