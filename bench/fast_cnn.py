"""Variants of nets.cnn.CNN for CPU speed experiments; same parameters, same math.

`FastCNN` subclasses nets.cnn.CNN and changes only how a layer is computed, so its variables
have the same names and shapes as the original and `train.train_step` runs it unchanged
(through `TrainState.apply_fn`).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from nets import cnn


def max_pool_reshape(x: jax.Array, k: int) -> jax.Array:
  """k x k max-pool, stride k, VALID, as a reshape and a max over the two window axes.

  Same forward values as nn.max_pool. Its gradient is elementwise (an equality mask) instead of
  XLA's select-and-scatter, which XLA:CPU expands into a variadic reduce-window carrying four
  full-size iota index arrays plus a scatter: about half of the train step on CPU. Ties
  within a window share the gradient instead of going to one element; after a ReLU the only
  ties are zeros, whose gradient the ReLU sets to 0 anyway.
  """
  b, h, w, c = x.shape
  h, w = h // k * k, w // k * k  # VALID: drop a ragged edge, as nn.max_pool does.
  x = x[:, :h, :w, :].reshape(b, h // k, k, w // k, k, c)
  return jnp.max(x, axis=(2, 4))


class FastCNN(cnn.CNN):
  """nets.cnn.CNN with the pooling of `max_pool_reshape`."""

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    for layer in self.layers:
      if layer.kind == 'conv':
        x = nn.Conv(
          layer.features, (layer.kernel, layer.kernel), padding=layer.padding, use_bias=False
        )(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum)(x)
        x = nn.relu(x)
      elif layer.kind == 'pool':
        x = max_pool_reshape(x, layer.kernel)
      elif layer.kind == 'gap':
        x = jnp.mean(x, axis=(1, 2))
      elif layer.kind == 'dropout':
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
      elif layer.kind == 'dense':
        x = nn.Dense(layer.features)(x)
      else:
        raise ValueError(f'unknown layer kind {layer.kind!r}')
    return x


def build(arch: str, dropout_rate: float = 0.0) -> FastCNN:
  return FastCNN(layers=cnn.ARCHITECTURES[arch], dropout_rate=dropout_rate)
