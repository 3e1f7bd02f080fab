"""A fully-connected sigmoid network of any depth and widths, with backprop written by hand.

Layers are a list of dicts `{'w': (fan_in, fan_out)}` or `{'w': ..., 'b': (fan_out,)}`, the
layout of flax's Dense. With a_0 = x (shape B×n_0) and σ the logistic, layer l computes
  z_l = a_{l-1} @ w_l (+ b_l),   a_l = σ(z_l),
and the loss is the course's squared error, summed over outputs and over the batch:
  E = Σ_batch Σ_k ½(t_k − a_L,k)².
For the 2-2-2 net with one example this is exactly `nets.toy.loss`.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp

Layers = Sequence[dict[str, jax.Array]]


def init_layers(
  key: jax.Array, widths: Sequence[int], use_bias: bool = True, dtype=jnp.float32
) -> list[dict[str, jax.Array]]:
  """Random layers for widths [n_0, n_1, ..., n_L] (normal weights, std 1/sqrt(fan_in))."""
  layers = []
  for fan_in, fan_out in zip(widths[:-1], widths[1:], strict=True):
    key, w_key, b_key = jax.random.split(key, 3)
    layer = {'w': jax.random.normal(w_key, (fan_in, fan_out), dtype) / jnp.sqrt(fan_in)}
    if use_bias:
      layer['b'] = 0.1 * jax.random.normal(b_key, (fan_out,), dtype)
    layers.append(layer)
  return layers


def _pre_activation(layer: dict[str, jax.Array], a: jax.Array) -> jax.Array:
  z = a @ layer['w']
  if 'b' in layer:
    z = z + layer['b'][None, :]  # Explicit broadcast: tests run with rank promotion 'raise'.
  return z


def forward(layers: Layers, x: jax.Array) -> list[jax.Array]:
  """Activations [a_0 = x, a_1, ..., a_L] for a batch x of shape (B, n_0)."""
  activations = [x]
  for layer in layers:
    activations.append(jax.nn.sigmoid(_pre_activation(layer, activations[-1])))
  return activations


def loss(layers: Layers, x: jax.Array, t: jax.Array) -> jax.Array:
  """E = Σ_batch Σ_k ½(t_k − a_L,k)²."""
  return jnp.sum(0.5 * (t - forward(layers, x)[-1]) ** 2)


def hand_gradients(layers: Layers, x: jax.Array, t: jax.Array) -> list[dict[str, jax.Array]]:
  """∂E/∂w_l and ∂E/∂b_l by the delta rule (no jax autodiff); same structure as `layers`.

  δ_l = ∂E/∂z_l (shape B×n_l, one row per example), one equation per layer:
    output:  δ_L = (a_L − t) ⊙ a_L ⊙ (1 − a_L)
             because ∂E/∂a_L = a_L − t and σ'(z) = σ(z)(1 − σ(z)) = a ⊙ (1 − a);
    hidden:  δ_l = (δ_{l+1} @ w_{l+1}ᵀ) ⊙ a_l ⊙ (1 − a_l)
             because z_{l+1} = a_l @ w_{l+1}, so ∂E/∂a_l = δ_{l+1} @ w_{l+1}ᵀ (every path from
             a unit to the next layer adds up, which is what the matrix product sums);
    weights: ∂E/∂w_l = a_{l-1}ᵀ @ δ_l   (sums the per-example outer products over the batch);
    biases:  ∂E/∂b_l = Σ_batch δ_l.
  For the 2-2-2 net, δ_2 holds the course's (a_o − t)·a_o·(1 − a_o) and δ_1 its
  [δ_o1·w5 + δ_o2·w7]·a_h1·(1 − a_h1), so these are `nets.toy.hand_gradients`, vectorised.
  """
  activations = forward(layers, x)
  a_out = activations[-1]
  delta = (a_out - t) * a_out * (1 - a_out)
  grads = [None] * len(layers)
  for l in reversed(range(len(layers))):
    a_prev = activations[l]
    grads[l] = {'w': a_prev.T @ delta}
    if 'b' in layers[l]:
      grads[l]['b'] = jnp.sum(delta, axis=0)
    if l > 0:
      delta = (delta @ layers[l]['w'].T) * a_prev * (1 - a_prev)
  return grads


def autodiff_gradients(layers: Layers, x: jax.Array, t: jax.Array) -> list[dict[str, jax.Array]]:
  """The same gradients by jax.grad, the witness for `hand_gradients`."""
  return jax.grad(loss)(list(layers), x, t)
