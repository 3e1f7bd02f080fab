"""The CNN's gradients by hand: a forward and a backward for every layer kind of nets/cnn.py.

Each `*_forward` returns its output and what its backward needs; each `*_backward` takes the
gradient of the loss with respect to that output (`dy`) and returns the gradient with respect
to its input (`dx`) and to its parameters: the chain rule written out, one layer at a time.
No autodiff is used anywhere in this module (no grad, vjp, jvp, linearize, custom rules, and
no transpose rule called on a primitive); `lax.conv_general_dilated` serves as the
correlation primitive, forward and in both convolution gradients. The derivations, and a worked
example on a 4x4 image: docs/cnn_backprop.md. The check against autodiff: cnn_check.py and
tests/cnn_backprop_test.py.

`loss_and_gradients(model, variables, images, labels, rng, label_smoothing)` runs the network
described by the same `nets.cnn.Layer` list that builds the Flax net and returns
`(loss, (logits, new batch_stats)), grads`: what autodiff of train.train_step's loss_fn (with
its aux) gives, `grads` keyed and shaped exactly as the Flax params.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax import lax

from errors import ConfigError
from nets import cnn

BN_EPSILON = 1e-5  # nn.BatchNorm's default epsilon, which nets/cnn.py keeps.
KINDS = ('conv', 'pool', 'gap', 'flatten', 'dropout', 'dense')  # Those with a hand backward.
_NHWC = ('NHWC', 'HWIO', 'NHWC')  # nn.Conv's layout: images NHWC, kernels HWIO.


# ----------------------------------------------------------------------------- convolution


def _pads(kernel: int, padding: str) -> tuple[int, int]:
  """(before, after) zero padding of one spatial axis at stride 1, as lax resolves the name
  (SAME: K - 1 in all, the odd pixel after; VALID: none)."""
  return lax.padtype_to_pads((kernel,), (kernel,), (1,), padding)[0]


def conv_forward(x: jax.Array, kernel: jax.Array, padding: str) -> jax.Array:
  """y[n,i,j,o] = sum_{a,b,c} xpad[n, i+a, j+b, c] * kernel[a,b,c,o] (a correlation, no bias)."""
  return lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=_NHWC)


def conv_backward(
  x: jax.Array, kernel: jax.Array, padding: str, dy: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """(dx, dkernel) of `conv_forward` at stride 1, with p = (before, after) padding per axis:

  dkernel[a,b,c,o] = sum_{n,i,j} xpad[n, i+a, j+b, c] * dy[n,i,j,o]
    a correlation of x (padded by p) with dy over the batch: the batch axis plays the part of
    the input channels and x's channels that of the batch, so the output is [K, K, C, O];
  dx[n,u,v,c] = sum_{a,b,o} dypad[n, u+a, v+b, o] * kernel[K-1-a, K-1-b, c, o]
    a full correlation of dy, padded by (K-1-before, K-1-after), with the kernel flipped in
    both spatial axes and its in/out channels swapped (O -> C).
  """
  k = kernel.shape[0]
  p = _pads(k, padding)
  dkernel = lax.conv_general_dilated(
    x, dy, (1, 1), (p, p), dimension_numbers=('CHWN', 'IHWO', 'HWNC')
  )
  back = (k - 1 - p[0], k - 1 - p[1])
  flipped = kernel[::-1, ::-1, :, :]
  dx = lax.conv_general_dilated(
    dy, flipped, (1, 1), (back, back), dimension_numbers=('NHWC', 'HWOI', 'NHWC')
  )
  return dx, dkernel


# ----------------------------------------------------------------------------- BatchNorm


def batchnorm_forward(
  x: jax.Array, scale: jax.Array, bias: jax.Array
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Training mode, over the batch and both spatial axes, as nn.BatchNorm computes it:

    m = mean(x), q = mean(x^2), v = max(0, q - m^2), r = (v + eps)^(-1/2),
    y = (x - m) * (r * scale) + bias.

  Returns y and the cache (x, m, u = q - m^2, v, r) the backward and the running averages use.
  """
  axes = (0, 1, 2)
  m = x.mean(axes)
  u = lax.square(x).mean(axes) - lax.square(m)
  v = jnp.maximum(0.0, u)
  r = lax.rsqrt(v + BN_EPSILON)
  y = (x - m) * (r * scale) + bias
  return y, {'x': x, 'mean': m, 'u': u, 'var': v, 'r': r}


def batchnorm_backward(
  cache: dict[str, jax.Array], scale: jax.Array, dy: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(dx, dscale, dbias) of `batchnorm_forward`, the chain rule through m, q, u, v and r:

    dbias = sum dy;  dmul = sum dy * (x - m);  dscale = dmul * r;  dr = dmul * scale
    dv = dr * (-1/2) (v + eps)^(-3/2);  du = dv * [u > 0] (1/2 at u = 0, as max's gradient)
    dq = du;  dm = -sum(dy) * r * scale - 2 m du
    dx = dy * r * scale + dq * 2 x / N + dm / N       (N = batch x height x width)

  With u > 0 this is the textbook dx = r*scale/N * (N dy - sum dy - xhat sum(dy xhat)),
  xhat = (x - m) r: dq 2x/N - 2m du/N = du 2(x - m)/N.
  """
  axes = (0, 1, 2)
  x, m, u, v, r = cache['x'], cache['mean'], cache['u'], cache['var'], cache['r']
  n = x.shape[0] * x.shape[1] * x.shape[2]
  dbias = dy.sum(axes)
  dmul = (dy * (x - m)).sum(axes)
  dscale = dmul * r
  dr = dmul * scale
  dv = dr * -0.5 * r / (v + BN_EPSILON)
  du = dv * jnp.where(u > 0, 1.0, jnp.where(u == 0, 0.5, 0.0))
  dm = -dbias * (r * scale) - 2.0 * m * du
  dx = dy * (r * scale) + du * (2.0 / n) * x + dm / n
  return dx, dscale, dbias


def batchnorm_running_update(
  stats: dict[str, jax.Array], cache: dict[str, jax.Array], momentum: float
) -> dict[str, jax.Array]:
  """nn.BatchNorm's running averages: new = momentum * old + (1 - momentum) * batch value."""
  return {
    'mean': momentum * stats['mean'] + (1 - momentum) * cache['mean'],
    'var': momentum * stats['var'] + (1 - momentum) * cache['var'],
  }


# ----------------------------------------------------------------------------- the rest


def relu_forward(x: jax.Array) -> jax.Array:
  return jnp.maximum(x, 0)


def relu_backward(x: jax.Array, dy: jax.Array) -> jax.Array:
  """dx = dy where x > 0, else 0 (at x = 0 as well, as jax.nn.relu's derivative)."""
  return jnp.where(x > 0, dy, jnp.zeros_like(dy))


def max_pool_forward(x: jax.Array, k: int) -> jax.Array:
  return cnn.max_pool(x, k)


def max_pool_backward(x: jax.Array, y: jax.Array, dy: jax.Array, k: int) -> jax.Array:
  """dx: each window's dy goes to the inputs equal to its max, shared equally among ties (a
  window of two equal maxima gives each dy / 2), which is how the gradient of nets/cnn.py's
  reshape-and-max splits it; a ragged edge the pool dropped gets 0."""
  b, h, w, c = x.shape
  hk, wk = h // k * k, w // k * k
  windows = x[:, :hk, :wk, :].reshape(b, hk // k, k, wk // k, k, c)
  is_max = windows == y[:, :, None, :, None, :]
  count = is_max.sum(axis=(2, 4)).astype(dy.dtype)
  share = (dy / count)[:, :, None, :, None, :]
  dx = jnp.where(is_max, share, jnp.zeros_like(share)).reshape(b, hk, wk, c)
  return jnp.pad(dx, ((0, 0), (0, h - hk), (0, w - wk), (0, 0)))


def gap_backward(x_shape: Sequence[int], dy: jax.Array) -> jax.Array:
  """y = mean over H x W, so each of the H*W inputs gets dy / (H*W)."""
  b, h, w, c = x_shape
  return jnp.broadcast_to((dy / (h * w))[:, None, None, :], (b, h, w, c))


def dropout_forward(x: jax.Array, keep: jax.Array, rate: float) -> jax.Array:
  """nn.Dropout: x / (1 - rate) where the mask keeps it, else 0 (the mask the forward drew)."""
  return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def dropout_backward(keep: jax.Array, rate: float, dy: jax.Array) -> jax.Array:
  return jnp.where(keep, dy / (1.0 - rate), jnp.zeros_like(dy))


def dense_forward(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
  return x @ kernel + bias


def dense_backward(
  x: jax.Array, kernel: jax.Array, dy: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """y = x W + b: (dx, dW, db) = (dy W^T, x^T dy, sum over the batch of dy)."""
  return dy @ kernel.T, x.T @ dy, dy.sum(0)


def cross_entropy_forward(
  logits: jax.Array, labels: jax.Array, label_smoothing: float
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Batch-mean softmax cross-entropy against t = (1 - a) onehot + a / K, as train.py's loss:
  L = -(1/B) sum_n sum_k t[n,k] log softmax(z)[n,k]."""
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
  log_p = jax.nn.log_softmax(logits)
  loss = -(targets * log_p).sum(-1).mean()
  return loss, {'p': jnp.exp(log_p), 'targets': targets}


def cross_entropy_backward(cache: dict[str, jax.Array]) -> jax.Array:
  """dL/dz[n,k] = (p[n,k] * sum_j t[n,j] - t[n,k]) / B (sum_j t = 1: the familiar p - t)."""
  p, t = cache['p'], cache['targets']
  return (p * t.sum(-1, keepdims=True) - t) / p.shape[0]


# ----------------------------------------------------------------------------- the network


def check_layers(layers: Sequence[cnn.Layer]) -> None:
  """ConfigError naming the first layer whose kind has no hand backward here."""
  for i, layer in enumerate(layers):
    if layer.kind not in KINDS:
      raise ConfigError(
        f'layer {i} ({layer}) has no hand backward: nets/cnn_backprop.py knows {", ".join(KINDS)}'
        '; use --config.gradients=autodiff for this net, or write its forward and backward.'
      )


class _Mask(nn.Module):
  """The CNN's dropout layer `index` alone, under the name the CNN gives it (Dropout_<index>):
  flax derives a layer's rng from its name, so this draws the mask the CNN's forward draws
  from the same 'dropout' rng. Applied to ones, it returns keep / (1 - rate)."""

  shape: tuple[int, ...]
  rate: float
  index: int

  @nn.compact
  def __call__(self):
    drop = nn.Dropout(self.rate, deterministic=False, name=f'Dropout_{self.index}')
    return drop(jnp.ones(self.shape))


def dropout_mask(shape: tuple[int, ...], rate: float, index: int, rng: jax.Array | None):
  """The keep mask of the CNN's dropout layer `index` on an input of `shape` (all kept at 0)."""
  if rate == 0:
    return jnp.ones(shape, bool)
  return _Mask(tuple(shape), rate, index).apply({}, rngs={'dropout': rng}) > 0


def _name(counts: dict[str, int], module: str) -> str:
  """The next Flax name of a `module` submodule: Conv_0, Conv_1, ..., as nn.compact numbers them."""
  counts[module] = counts.get(module, -1) + 1
  return f'{module}_{counts[module]}'


def param_names(layers: Sequence[cnn.Layer]) -> list[str]:
  """The Flax names of the layers' parameter modules in forward order (Conv_0, BatchNorm_0,
  Conv_1, ..., Dense_0): the backward meets them in the reverse order."""
  counts, names = {}, []
  for layer in layers:
    if layer.kind == 'conv':
      names += [_name(counts, 'Conv'), _name(counts, 'BatchNorm')]
    elif layer.kind == 'dense':
      names.append(_name(counts, 'Dense'))
  return names


def forward(
  model: cnn.CNN, variables: dict[str, Any], images: jax.Array, rng: jax.Array | None
) -> tuple[jax.Array, dict[str, Any], list[tuple]]:
  """The training-mode forward of `model`'s layers: (logits, new batch_stats, tape), the tape
  one entry per layer with what its backward needs."""
  check_layers(model.layers)
  params, stats = variables['params'], variables['batch_stats']
  new_stats, tape, counts, x = {}, [], {}, images
  for layer in model.layers:
    if layer.kind == 'conv':
      conv, bn = _name(counts, 'Conv'), _name(counts, 'BatchNorm')
      z = conv_forward(x, params[conv]['kernel'], layer.padding)
      a, cache = batchnorm_forward(z, params[bn]['scale'], params[bn]['bias'])
      new_stats[bn] = batchnorm_running_update(stats[bn], cache, model.bn_momentum)
      tape.append((conv, bn, x, cache, a))
      x = relu_forward(a)
    elif layer.kind == 'pool':
      y = max_pool_forward(x, layer.kernel)
      tape.append((x, y))
      x = y
    elif layer.kind in ('gap', 'flatten'):
      tape.append(x.shape)
      x = x.mean((1, 2)) if layer.kind == 'gap' else x.reshape(x.shape[0], -1)
    elif layer.kind == 'dropout':
      index = int(_name(counts, 'Dropout').split('_')[1])
      keep = dropout_mask(x.shape, model.dropout_rate, index, rng)
      tape.append(keep)
      x = dropout_forward(x, keep, model.dropout_rate)
    else:  # 'dense' (check_layers allows nothing else)
      dense = _name(counts, 'Dense')
      tape.append((dense, x))
      x = dense_forward(x, params[dense]['kernel'], params[dense]['bias'])
  return x, new_stats, tape


def backward(
  model: cnn.CNN, params: dict[str, Any], tape: list[tuple], dlogits: jax.Array
) -> dict[str, Any]:
  """The gradient of every parameter, from dL/dlogits back through the tape, last layer first;
  a pytree with exactly the keys and shapes of `params`."""
  grads, dx = {}, dlogits
  for layer, saved in zip(reversed(model.layers), reversed(tape), strict=True):
    if layer.kind == 'conv':
      conv, bn, x, cache, a = saved
      da = relu_backward(a, dx)
      dz, dscale, dbias = batchnorm_backward(cache, params[bn]['scale'], da)
      grads[bn] = {'scale': dscale, 'bias': dbias}
      dx, grads[conv] = conv_backward(x, params[conv]['kernel'], layer.padding, dz)
      grads[conv] = {'kernel': grads[conv]}
    elif layer.kind == 'pool':
      dx = max_pool_backward(*saved, dx, layer.kernel)
    elif layer.kind == 'gap':
      dx = gap_backward(saved, dx)
    elif layer.kind == 'flatten':
      dx = dx.reshape(saved)
    elif layer.kind == 'dropout':
      dx = dropout_backward(saved, model.dropout_rate, dx)
    else:
      dense, x = saved
      dx, dkernel, dbias = dense_backward(x, params[dense]['kernel'], dx)
      grads[dense] = {'kernel': dkernel, 'bias': dbias}
  return {name: grads[name] for name in params}


def loss_and_gradients(
  model: cnn.CNN,
  variables: dict[str, Any],
  images: jax.Array,
  labels: jax.Array,
  rng: jax.Array | None = None,
  label_smoothing: float = 0.0,
) -> tuple[tuple[jax.Array, tuple[jax.Array, dict[str, Any]]], dict[str, Any]]:
  """((loss, (logits, new batch_stats)), grads) of train.py's loss, all by hand: the value
  train.train_step otherwise gets from autodiff of its loss_fn."""
  logits, new_stats, tape = forward(model, variables, images, rng)
  loss, cache = cross_entropy_forward(logits, labels, label_smoothing)
  grads = backward(model, variables['params'], tape, cross_entropy_backward(cache))
  return (loss, (logits, new_stats)), grads


def value_and_grad(state: Any, images, labels, rng, label_smoothing: float) -> Callable:
  """params -> `loss_and_gradients(...)` for train.train_step's `state` (its batch_stats, and
  the model its apply_fn, functools.partial(cnn.apply, model), is bound to)."""
  model = state.apply_fn.args[0]
  return lambda params: loss_and_gradients(
    model,
    {'params': params, 'batch_stats': state.batch_stats},
    images,
    labels,
    rng,
    label_smoothing,
  )
