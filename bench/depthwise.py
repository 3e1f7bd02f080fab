"""The depthwise layer two ways on this machine: nets.cnn.DepthwiseConv beside flax's grouped conv.

  python -m bench.depthwise --rounds=7

For every 'dw' layer of --arch (a layer spec) at batch --batch_size, times the forward pass and
the gradients for input and kernel (`jax.grad` of a sum over the layer's output) of
nets.cnn.DepthwiseConv (K*K shifted multiply-adds) and of nn.Conv(C, feature_group_count=C)
with the same kernel; rounds alternate the two and medians are reported with their ratio.
"""

from __future__ import annotations

import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
from absl import app, flags

from nets import cnn

FLAGS = flags.FLAGS
SEPARABLE = 'c12-dw-c24k1-pool-dw-c28k1-dw-c28k1-pool-dwv-c3k1-flatten-dense'
flags.DEFINE_string('arch', SEPARABLE, 'A layer spec with dw layers (nets.cnn.parse).')
flags.DEFINE_integer('batch_size', 64, 'Images per call.')
flags.DEFINE_integer('rounds', 7, 'Timed rounds (medians reported).')
flags.DEFINE_integer('calls', 10, 'Calls per round of each way.')


def main(argv):
  del argv
  model = cnn.build(FLAGS.arch)
  rows = cnn.summary(model)
  inputs = [(28, 28, 1)] + [r['output'] for r in rows[:-1]]
  for i, layer in enumerate(model.layers):
    if layer.kind != 'dwconv':
      continue
    shape = (FLAGS.batch_size, *inputs[i])
    x = jax.random.normal(jax.random.key(0), shape)
    ours = cnn.DepthwiseConv(layer.kernel, layer.padding)
    grouped = nn.Conv(shape[-1], (layer.kernel,) * 2, padding=layer.padding,
                      feature_group_count=shape[-1], use_bias=False)  # fmt: skip
    variables = ours.init(jax.random.key(1), x)
    ways = {
      name: jax.jit(jax.grad(lambda v, x, m=m: jnp.sum(m.apply(v, x) ** 2), argnums=(0, 1)))
      for name, m in (('shifted', ours), ('grouped', grouped))
    }
    times = {name: [] for name in ways}
    for fn in ways.values():
      jax.block_until_ready(fn(variables, x))  # Compile outside the timing.
    for r in range(FLAGS.rounds):
      for name in ways if r % 2 == 0 else reversed(list(ways)):
        t = time.perf_counter()
        for _ in range(FLAGS.calls):
          jax.block_until_ready(ways[name](variables, x))
        times[name].append((time.perf_counter() - t) / FLAGS.calls * 1e3)
    med = {name: statistics.median(t) for name, t in times.items()}
    print(
      f'layer {i} dw{layer.kernel}x{layer.kernel} {layer.padding} on {"x".join(map(str, shape))}: '
      f'shifted {med["shifted"]:.2f} ms, grouped {med["grouped"]:.2f} ms, '
      f'grouped / shifted {med["grouped"] / med["shifted"]:.2f}x'
    )


if __name__ == '__main__':
  app.run(main)
