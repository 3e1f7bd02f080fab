"""The optimiser's parts: SGD with Nesterov momentum and weight decay, its one-cycle learning
rate (with SWA's held tail), and the averaged weights evaluation can use (EMA, SWA).

Pure functions of the config; train.py builds the train state and step from them.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax


def make_optimizer(
  config: ml_collections.ConfigDict, steps_per_epoch: int
) -> optax.GradientTransformation:
  """SGD + Nesterov momentum + weight decay (added to the gradient) on make_schedule's rate."""
  return optax.chain(
    optax.add_decayed_weights(config.weight_decay),
    optax.sgd(make_schedule(config, steps_per_epoch), momentum=config.momentum, nesterov=True),
  )


def make_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
  """One-cycle: linear warm-up to the peak, then cosine decay to ~0 at the last step.

  With config.swa_learning_rate > 0 the rate is held at that value from the first step of
  epoch config.swa_from_epoch on (SWA's constant tail), the one-cycle until then.
  """
  total = config.num_epochs * steps_per_epoch
  onecycle = optax.cosine_onecycle_schedule(
    transition_steps=total,
    peak_value=config.learning_rate,
    pct_start=max(config.warmup_fraction, 1 / total),
  )
  if not config.swa_learning_rate:
    return onecycle
  tail = optax.constant_schedule(config.swa_learning_rate)
  return optax.join_schedules([onecycle, tail], [swa_start_step(config, steps_per_epoch)])


def swa_start_step(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int | None:
  """The first step of epoch config.swa_from_epoch (None when SWA is off)."""
  return (config.swa_from_epoch - 1) * steps_per_epoch if config.swa_from_epoch else None


def ema_update(
  ema: Any, new: Any, step: jax.Array, decay: float, swa_from_step: int | None = None
) -> Any:
  """ema <- d * ema + (1 - d) * new, with d = min(decay, (1 + step) / (10 + step)).

  The step-dependent cap (as in tf.train.ExponentialMovingAverage's num_updates) lets the
  average follow the fast early changes instead of remembering the random initialisation.
  With `swa_from_step` set, d = n / (n + 1) from that step on (n = step - swa_from_step): the
  average is then the equal mean of the weights after each of those steps (SWA).
  """
  d = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
  if swa_from_step is not None:
    n = (step - swa_from_step).astype(jnp.float32)
    d = jnp.where(n >= 0, n / (n + 1.0), d)
  return jax.tree_util.tree_map(lambda e, n: d * e + (1.0 - d) * n, ema, new)
