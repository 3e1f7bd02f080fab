"""CPU driving-loop experiment: train.train_steps with the K steps traced in a Python loop.

Same signature, semantics and results as train.train_steps with unroll=True, but without
`lax.scan`. On XLA:CPU a scan body that is not unrolled (and a scan of length 1, which JAX
lowers as a one-trip while loop) keeps the weight-gradient convolutions in a layout XLA:CPU
only runs with its slow generic loop emitter (`dim_labels=f01b_i01o->01bf`); tracing the steps
directly gives the fast library (YNNPACK) convolutions for every K, and compiles faster than an
unrolled scan of the same K.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp


def train_steps_loop(
  state,
  sums: dict[str, jax.Array],
  train_images: jax.Array,
  train_labels: jax.Array,
  batch_indices: jax.Array,
  rng: jax.Array,
  *,
  step_fn: Callable,
  batch_sharding=None,
  guard: bool = True,
):
  """train.train_steps's body, once per row of `batch_indices`, in a Python loop.

  guard=False drops the per-step `jnp.where` over the whole state (only for measuring its cost:
  without it a non-finite step is not held back).
  """
  for i in range(batch_indices.shape[0]):
    idx = batch_indices[i]
    images, labels = train_images[idx], train_labels[idx]
    if batch_sharding is not None:
      images = jax.lax.with_sharding_constraint(images, batch_sharding)
      labels = jax.lax.with_sharding_constraint(labels, batch_sharding)
    new_state, m = step_fn(state, images, labels, jax.random.fold_in(rng, state.step))
    ok = m['finite'] & (sums['first_bad_step'] < 0)
    if guard:
      state_next = jax.tree_util.tree_map(functools.partial(jnp.where, ok), new_state, state)
    else:
      state_next = new_state
    sums = {
      'loss_sum': sums['loss_sum'] + jnp.where(ok, m['loss_sum'], 0.0),
      'correct': sums['correct'] + jnp.where(ok, m['correct'], 0),
      'count': sums['count'] + jnp.where(ok, m['count'], 0),
      'first_bad_step': jnp.where(
        (sums['first_bad_step'] < 0) & ~m['finite'], state.step, sums['first_bad_step']
      ),
    }
    state = state_next
  return state, sums
