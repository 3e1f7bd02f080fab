"""A small MNIST CNN: conv-BN-ReLU blocks, 1x1 transitions, max-pooling, a GAP head.

An architecture is a tuple of `Layer` specs: a name in `ARCHITECTURES` (the nets configs/
trains) or a spec string such as 'c8-c16-pool-c16v-gap-dense' (`parse`), so that the network,
its parameter count and its receptive-field table all come from one description.

`apply(model, variables, images, train=..., rng=...)` is the pure function the trainer calls;
`summary(model)` returns the per-layer table (output shape, parameters, receptive field).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Layer:
  """One stage of the network.

  kind: 'conv' (conv -> BatchNorm -> ReLU), 'dwconv' (the same, depthwise: each channel its
  own kernel, as many channels out as in), 'pool' (2x2 max-pool), 'gap' (global average
  pool), 'flatten' (keep the map's layout: a spatial head), 'dropout', or 'dense' (the final
  linear classifier, with bias).
  """

  kind: str
  features: int = 0  # output channels ('conv') or classes ('dense')
  kernel: int = 3  # square kernel size for 'conv' and 'dwconv'
  padding: str = 'SAME'  # 'SAME' keeps the spatial size; 'VALID' shrinks it by kernel - 1


def conv(features: int, kernel: int = 3, padding: str = 'SAME') -> Layer:
  return Layer('conv', features, kernel, padding)


def dwconv(kernel: int = 3, padding: str = 'SAME') -> Layer:
  return Layer('dwconv', 0, kernel, padding)


POOL = Layer('pool', kernel=2)
GAP = Layer('gap')
FLATTEN = Layer('flatten')
DROPOUT = Layer('dropout')
HEAD = Layer('dense', 10)


def spatial_head(channels: int) -> tuple[Layer, ...]:
  """A VALID 3x3 conv from the 7x7 map to 5x5 x `channels`, flattened into the classifier."""
  return (conv(channels, 3, 'VALID'), FLATTEN, HEAD)


# The default net up to its last 7x7 map (after the second 1x1 squeeze): 'gap' and
# 'spatial' differ only in the head.
_DEFAULT_BODY = (conv(16), conv(32), POOL, conv(16, 1), conv(16), conv(32), POOL, conv(16, 1))

# The nets configs/ trains, by name. Any other net is written as a layer spec (see `parse`);
# docs/experiments.md gives each probe it ran that way. Parameter counts: tests/cnn_test.py.
ARCHITECTURES: dict[str, tuple[Layer, ...]] = {
  # GAP (17,946 params, configs/gap.py): widen to 32 channels at 28x28 and 14x14, squeeze back
  # to 16 with 1x1 convs after each pool, and end on a 5x5 map before a global average pool
  # (receptive field 40 > 28).
  'gap': (*_DEFAULT_BODY, conv(32, 3, 'VALID'), GAP, HEAD),
  # Spatial (19,290 params, configs/mnist.py, configs/fast.py): the GAP net up to the last 7x7
  # map, then a 16-channel VALID conv to 5x5 and a dense head on all 400 values instead of GAP:
  # the classifier sees where a stroke is.
  'spatial': (*_DEFAULT_BODY, conv(16, 3, 'VALID'), FLATTEN, DROPOUT, HEAD),
  # Tiny (7,442 params, configs/tiny.py): the GAP net's plan at half the width (8/16 channels).
  'tiny': (
    conv(8),
    conv(16),
    POOL,
    conv(8, 1),
    conv(16),
    conv(16),
    POOL,
    conv(16, 3, 'VALID'),
    GAP,
    HEAD,
  ),
  # Tiny6 (6,202 params, configs/tiny6.py): tiny with 12 channels in its second conv and a
  # spatial head on a 4-channel 5x5 map (dense on 100 values) instead of GAP.
  'tiny6': (conv(8), conv(12), POOL, conv(8, 1), conv(16), conv(16), POOL, *spatial_head(4)),
  # Mid (7,786 params, configs/mid.py): tiny6 with an 8-channel head conv (dense on 200 values)
  # and dropout before the classifier.
  'mid': (
    conv(8),
    conv(12),
    POOL,
    conv(8, 1),
    conv(16),
    conv(16),
    POOL,
    conv(8, 3, 'VALID'),
    FLATTEN,
    DROPOUT,
    HEAD,
  ),
  # Tiny4 (3,978 params, configs/tiny4.py): 8 channels in both 28x28 convs, 12 in both 14x14
  # ones, no 1x1 transition, and a spatial head on a 3-channel 5x5 map (dense on 75 values).
  'tiny4': (conv(8), conv(8), POOL, conv(12), conv(12), POOL, *spatial_head(3)),
}

# Layer-spec tokens: c<N> (3x3 conv-BN-ReLU, N channels), c<N>k<K> (KxK), c<N>v (3x3 VALID),
# dw (3x3 depthwise conv-BN-ReLU; dwk<K>, dwv likewise), pool, gap, flatten, dropout, dense
# (the 10-class classifier). A depthwise-separable conv is 'dw-c<N>k1'.
_CONV = re.compile(r'c(\d+)(?:k(\d+))?(v?)')
_DWCONV = re.compile(r'dw(?:k(\d+))?(v?)')
_WORDS = {'pool': POOL, 'gap': GAP, 'flatten': FLATTEN, 'dropout': DROPOUT, 'dense': HEAD}
SPEC_HELP = (
  'a layer spec such as c8-c16-pool-c8k1-c16-c16-pool-c16v-gap-dense (c<N>: 3x3 conv, N '
  'channels; dw: 3x3 depthwise conv; k<K>: KxK kernel; v: VALID padding; pool, gap, flatten, '
  'dropout, dense)'
)


def parse(spec: str) -> tuple[Layer, ...]:
  """The layers of a spec such as 'c8-c16-pool-c16v-gap-dense'; ValueError says what is wrong."""
  layers = []
  for token in spec.split('-'):
    match, depthwise = _CONV.fullmatch(token), _DWCONV.fullmatch(token)
    if match:
      features, kernel, valid = match.groups()
      layers.append(conv(int(features), int(kernel or 3), 'VALID' if valid else 'SAME'))
    elif depthwise:
      kernel, valid = depthwise.groups()
      layers.append(dwconv(int(kernel or 3), 'VALID' if valid else 'SAME'))
    elif token in _WORDS:
      layers.append(_WORDS[token])
    else:
      raise ValueError(f'{token!r} in {spec!r} is not a layer; expected {SPEC_HELP}.')
  if not layers or layers[-1] != HEAD or HEAD in layers[:-1]:
    raise ValueError(f'{spec!r} must end with its only dense layer; expected {SPEC_HELP}.')
  return tuple(layers)


def to_spec(layers: Sequence[Layer]) -> str:
  """The spec string `parse` reads back as `layers`."""
  words = {v: k for k, v in _WORDS.items()}
  return '-'.join(
    words[lay]
    if lay in words
    else (f'c{lay.features}' if lay.kind == 'conv' else 'dw')
    + (f'k{lay.kernel}' if lay.kernel != 3 else '')
    + ('v' if lay.padding == 'VALID' else '')
    for lay in layers
  )


def layers_of(arch: str) -> tuple[Layer, ...]:
  """The layers of an `ARCHITECTURES` name or of a layer spec."""
  if arch in ARCHITECTURES:
    return ARCHITECTURES[arch]
  if '-' not in arch:
    raise ValueError(
      f'unknown architecture {arch!r}: use one of {sorted(ARCHITECTURES)} or {SPEC_HELP}.'
    )
  return parse(arch)


def max_pool(x: jax.Array, k: int) -> jax.Array:
  """k x k max-pool, stride k, VALID, as a reshape and a max over the two window axes.

  Same forward values as `nn.max_pool`, but its gradient is an elementwise mask instead of
  select-and-scatter, which XLA:CPU expands into a reduce-window with four full-size index
  arrays plus a scatter: about half of the CPU train step, and the training step runs 1.8x
  faster this way (bench/README.md). Ties within a window share the gradient instead of one
  element taking it; after a ReLU the only ties are zeros, whose gradient the ReLU zeroes.
  """
  b, h, w, c = x.shape
  h, w = h // k * k, w // k * k  # VALID: drop a ragged edge, as nn.max_pool does.
  return x[:, :h, :w, :].reshape(b, h // k, k, w // k, k, c).max(axis=(2, 4))


class DepthwiseConv(nn.Module):
  """A KxK depthwise convolution without bias, with nn.Conv(C, feature_group_count=C)'s kernel
  layout [K, K, 1, C] and initialiser, computed as K*K shifted multiply-adds: the same values
  (tests/cnn_test.py) in 4.6-12x less time per layer than XLA:CPU's grouped convolution
  (`python -m bench.depthwise`, bench/README.md)."""

  kernel: int = 3
  padding: str = 'SAME'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel
    w = self.param('kernel', nn.initializers.lecun_normal(), (k, k, 1, x.shape[-1]))
    if self.padding == 'SAME':  # As lax pads for SAME: the odd pixel, if any, at the end.
      lo = (k - 1) // 2
      x = jnp.pad(x, ((0, 0), (lo, k - 1 - lo), (lo, k - 1 - lo), (0, 0)))
    h, wd = x.shape[1] - k + 1, x.shape[2] - k + 1
    return sum(x[:, i : i + h, j : j + wd, :] * w[i, j, 0] for i in range(k) for j in range(k))


class CNN(nn.Module):
  """The network described by `layers`; BatchNorm layers keep running stats in 'batch_stats'."""

  layers: Sequence[Layer]
  dropout_rate: float = 0.0
  bn_momentum: float = 0.9

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    for layer in self.layers:
      if layer.kind in ('conv', 'dwconv'):  # No bias: the BatchNorm shift after replaces it.
        if layer.kind == 'conv':
          window = (layer.kernel, layer.kernel)
          x = nn.Conv(layer.features, window, padding=layer.padding, use_bias=False)(x)
        else:
          x = DepthwiseConv(layer.kernel, layer.padding)(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum)(x)
        x = nn.relu(x)
      elif layer.kind == 'pool':
        x = max_pool(x, layer.kernel)
      elif layer.kind == 'gap':
        x = jnp.mean(x, axis=(1, 2))
      elif layer.kind == 'flatten':
        x = x.reshape(x.shape[0], -1)
      elif layer.kind == 'dropout':
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
      elif layer.kind == 'dense':
        x = nn.Dense(layer.features)(x)
      else:
        raise ValueError(f'unknown layer kind {layer.kind!r}')
    return x


def build(arch: str, dropout_rate: float = 0.0) -> CNN:
  """Returns the CNN for an `ARCHITECTURES` name or a layer spec."""
  return CNN(layers=layers_of(arch), dropout_rate=dropout_rate)


def init(model: CNN, rng: jax.Array, image_shape=(28, 28, 1)) -> dict[str, Any]:
  """Returns the variables {'params', 'batch_stats'} for a batch of one image.

  One compiled program per model and shape (the same values as flax's eager init, which
  compiles and runs ~100 small programs, one per operation: 2-3x the seconds on a CPU).
  """
  return _init(model, rng, tuple(image_shape))


@functools.partial(jax.jit, static_argnums=(0, 2))
def _init(model: CNN, rng: jax.Array, image_shape: tuple[int, ...]) -> dict[str, Any]:
  variables = model.init({'params': rng}, jnp.zeros((1, *image_shape), jnp.float32), train=False)
  # A net with no conv (so no BatchNorm), e.g. 'flatten-dense', has no running statistics:
  # an empty collection keeps the {'params', 'batch_stats'} shape every caller expects.
  return {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}


def apply(
  model: CNN,
  variables: dict[str, Any],
  images: jax.Array,
  *,
  train: bool,
  rng: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, Any]]:
  """The pure forward pass: (variables, images, train, rng) -> (logits, new batch_stats).

  In training BatchNorm uses batch statistics and returns updated running averages; in
  evaluation it uses the running averages and returns them unchanged.
  """
  rngs = {'dropout': rng} if rng is not None else {}
  if train:
    logits, updates = model.apply(variables, images, train=True, rngs=rngs, mutable=['batch_stats'])
    return logits, updates.get('batch_stats', {})
  return model.apply(variables, images, train=False), variables['batch_stats']


def count_params(params: Any) -> int:
  """Number of trainable scalars in a params pytree (arrays or ShapeDtypeStructs)."""
  return int(sum(np.prod(p.shape) for p in jax.tree_util.tree_leaves(params)))


def param_count(model: CNN) -> int:
  """Trainable parameters of `model`, from shapes alone (jax.eval_shape: nothing allocated)."""
  shapes = jax.eval_shape(lambda: init(model, jax.random.key(0)))
  return count_params(shapes['params'])


def summary(model: CNN, image_shape=(28, 28, 1)) -> list[dict[str, Any]]:
  """Per-layer rows: name, output shape, trainable parameters and receptive field (pixels).

  The receptive field grows by (kernel - 1) * jump at each conv/pool, and the jump (input
  pixels between neighbouring outputs) multiplies by each pool's stride; GAP acts as a kernel
  the size of its input map. A field wider than 28 includes zero padding.
  """
  rows = []
  shape = (1, *image_shape)
  rf, jump = 1, 1
  for i, layer in enumerate(model.layers):
    sub = CNN(layers=(layer,), dropout_rate=model.dropout_rate)
    variables = jax.eval_shape(
      lambda s=shape, m=sub: m.init(jax.random.key(0), jnp.zeros(s), train=False)
    )
    out = jax.eval_shape(lambda v, s=shape, m=sub: m.apply(v, jnp.zeros(s), train=False), variables)
    if layer.kind in ('conv', 'dwconv', 'pool'):
      rf += (layer.kernel - 1) * jump
      if layer.kind == 'pool':
        jump *= layer.kernel
    elif layer.kind in ('gap', 'flatten'):  # Reads the whole HxW map: as if an HxW kernel.
      rf += (shape[1] - 1) * jump
    name = {
      'conv': f'conv{layer.kernel}x{layer.kernel}-bn-relu({layer.features})',
      'dwconv': f'dwconv{layer.kernel}x{layer.kernel}-bn-relu({shape[-1]})',
      'pool': 'maxpool2x2',
      'gap': 'global-avg-pool',
      'flatten': 'flatten',
      'dropout': f'dropout({model.dropout_rate})',
      'dense': f'dense({layer.features})',
    }[layer.kind]
    rows.append(
      {
        'layer': f'{i:2d} {name}',
        'output': tuple(out.shape[1:]),
        'params': count_params(variables.get('params', {})),
        'receptive_field': rf,
      }
    )
    shape = out.shape
  return rows


def format_summary(rows: list[dict[str, Any]]) -> str:
  """The summary as a Markdown table, with the total parameter count on the last line."""
  lines = ['| layer | output | params | receptive field |', '| --- | --- | ---: | ---: |']
  for r in rows:
    out = 'x'.join(map(str, r['output']))
    lines.append(f'| {r["layer"]} | {out} | {r["params"]:,} | {r["receptive_field"]} |')
  lines.append(f'| total | | {sum(r["params"] for r in rows):,} | |')
  return '\n'.join(lines)
