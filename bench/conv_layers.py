"""Where the CPU training step's time goes: each convolution of a net, JAX beside PyTorch.

  python -m bench.conv_layers --rounds=7 --out=bench/results/conv_layers_cpu.json

For every conv layer of nets.cnn.ARCHITECTURES[--arch] at batch --batch_size, three pieces of
a train step are timed apart: the forward convolution, the gradient for its input (dx; none for
the first layer, whose input is the data) and the gradient for its kernel (dw). JAX jits each
piece alone (`jax.vjp` of `lax.conv_general_dilated`, NHWC as flax); PyTorch runs `F.conv2d`
and `torch.autograd.grad` on a kept graph (NCHW, oneDNN) at --torch_threads. Rounds interleave
the two; medians are reported with GFLOP/s (2 x multiply-adds of the forward pass, the same
count for dx and dw). Convolutions only: BatchNorm, ReLU, pooling, the loss and the optimizer
are not here.

Two JAX alternatives, measured so the README's dead ends can be rerun:
`--jax_dtype=bfloat16` runs JAX's pieces in bfloat16 (this CPU has AVX512-BF16; PyTorch stays
float32), and `--kernel_grad=shifted_matmuls` computes dw as one matmul per kernel tap
(`dw[i, j] = shift_ij(x)^T dy`) instead of XLA's transposed convolution.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FLAGS = flags.FLAGS
flags.DEFINE_string('arch', 'default', 'nets.cnn.ARCHITECTURES key.')
flags.DEFINE_integer('batch_size', 128, 'Images per call.')
flags.DEFINE_integer('rounds', 7, 'Timed rounds (medians reported).')
flags.DEFINE_integer('calls', 5, 'Calls per round of each piece.')
flags.DEFINE_integer('torch_threads', 0, 'PyTorch intra-op threads; 0 = the core count.')
flags.DEFINE_string('out', '', 'Write the results as JSON here.')
flags.DEFINE_enum('jax_dtype', 'float32', ['float32', 'bfloat16'], 'dtype of the JAX pieces.')
flags.DEFINE_enum(
  'kernel_grad', 'xla', ['xla', 'shifted_matmuls'], "JAX's dw: XLA's own, or a matmul per tap."
)


def conv_shapes(arch: str) -> list[dict]:
  """Input size, channels in and out, kernel, padding and output size of each conv layer."""
  from nets import cnn

  model = cnn.build(arch)
  shapes, shape = [], (28, 28, 1)  # Each layer's input (H, W, C), from the net's summary.
  for layer, row in zip(model.layers, cnn.summary(model), strict=True):
    if layer.kind == 'conv':
      shapes.append(
        {
          'size': shape[0],
          'cin': shape[-1],
          'cout': layer.features,
          'kernel': layer.kernel,
          'padding': layer.padding,
          'out_size': row['output'][0],
        }
      )
    shape = row['output']
  return shapes


def kernel_grad_shifted_matmuls(x, dy, kernel: int, padding: str):
  """dw of a stride-1 NHWC/HWIO convolution as kernel**2 matmuls over (batch, height, width).

  dw[i, j, c, o] = sum_{n, h, w} x_padded[n, h + i, w + j, c] * dy[n, h, w, o].
  """
  import jax.numpy as jnp

  if padding == 'SAME':
    lo = (kernel - 1) // 2
    x = jnp.pad(x, ((0, 0), (lo, kernel - 1 - lo), (lo, kernel - 1 - lo), (0, 0)))
  _, oh, ow, cout = dy.shape
  d = dy.reshape(-1, cout)
  taps = [
    x[:, i : i + oh, j : j + ow, :].reshape(-1, x.shape[-1]).T @ d
    for i in range(kernel)
    for j in range(kernel)
  ]
  return jnp.stack(taps).reshape(kernel, kernel, x.shape[-1], cout)


def seconds_per_call(fn, calls: int) -> float:
  t0 = time.perf_counter()
  for _ in range(calls):
    fn()
  return (time.perf_counter() - t0) / calls


def main(argv):
  del argv
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch
  import torch.nn.functional as F

  threads = FLAGS.torch_threads or os.cpu_count()
  torch.set_num_threads(threads)
  rng = np.random.default_rng(0)
  b = FLAGS.batch_size
  pieces = {}  # (layer index, piece, framework) -> callable
  flops = {}
  shapes = conv_shapes(FLAGS.arch)
  for i, s in enumerate(shapes):
    x = rng.standard_normal((b, s['size'], s['size'], s['cin']), np.float32)
    w = (0.1 * rng.standard_normal((s['kernel'], s['kernel'], s['cin'], s['cout']))).astype(
      np.float32
    )
    dy = rng.standard_normal((b, s['out_size'], s['out_size'], s['cout']), np.float32)
    flops[i] = 2 * b * s['out_size'] ** 2 * s['kernel'] ** 2 * s['cin'] * s['cout']

    def conv(x, w, pad=s['padding']):
      return jax.lax.conv_general_dilated(
        x, w, (1, 1), pad, dimension_numbers=('NHWC', 'HWIO', 'NHWC')
      )

    jx, jw, jdy = (jnp.asarray(a, FLAGS.jax_dtype) for a in (x, w, dy))
    fwd = jax.jit(conv)
    dx = jax.jit(lambda x, w, dy, conv=conv: jax.vjp(lambda x: conv(x, w), x)[1](dy)[0])
    if FLAGS.kernel_grad == 'xla':
      dw = jax.jit(lambda x, w, dy, conv=conv: jax.vjp(lambda w: conv(x, w), w)[1](dy)[0])
    else:
      dw = jax.jit(
        lambda x, w, dy, s=s: kernel_grad_shifted_matmuls(x, dy, s['kernel'], s['padding'])
      )
    pieces[i, 'fwd', 'jax'] = lambda f=fwd, x=jx, w=jw: f(x, w).block_until_ready()
    pieces[i, 'dw', 'jax'] = lambda f=dw, x=jx, w=jw, dy=jdy: f(x, w, dy).block_until_ready()
    if i:
      pieces[i, 'dx', 'jax'] = lambda f=dx, x=jx, w=jw, dy=jdy: f(x, w, dy).block_until_ready()

    tx = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().requires_grad_(True)
    tw = torch.from_numpy(w).permute(3, 2, 0, 1).contiguous().requires_grad_(True)
    tdy = torch.from_numpy(dy).permute(0, 3, 1, 2).contiguous()
    pad = (s['kernel'] - 1) // 2 if s['padding'] == 'SAME' else 0

    def t_fwd(tx=tx, tw=tw, pad=pad):
      with torch.no_grad():
        F.conv2d(tx, tw, padding=pad)

    ty = F.conv2d(tx, tw, padding=pad)  # Forward once; the backward pieces reuse its graph.

    def t_grad(wrt_input, tx=tx, tw=tw, ty=ty, tdy=tdy):
      torch.autograd.grad(ty, tx if wrt_input else tw, tdy, retain_graph=True)

    pieces[i, 'fwd', 'torch'] = t_fwd
    pieces[i, 'dw', 'torch'] = lambda g=t_grad: g(False)
    if i:
      pieces[i, 'dx', 'torch'] = lambda g=t_grad: g(True)

  for fn in pieces.values():  # Compile / warm up.
    fn()
  times = {k: [] for k in pieces}
  keys = list(pieces)
  for r in range(FLAGS.rounds):
    for k in keys if r % 2 == 0 else keys[::-1]:
      times[k].append(seconds_per_call(pieces[k], FLAGS.calls))
  med = {k: statistics.median(v) for k, v in times.items()}

  header = (
    f'{"layer":28s} {"piece":5s} {"JAX ms":>8s} {"PyTorch ms":>11s} {"JAX/PT speed":>13s} '
    f'{"JAX GFLOP/s":>12s} {"PT GFLOP/s":>11s}'
  )
  print(
    f'batch {b}, PyTorch {threads} threads, JAX {FLAGS.jax_dtype} (dw: {FLAGS.kernel_grad}), '
    f'medians of {FLAGS.rounds} rounds'
  )
  print(header)
  rows, totals = [], {'jax': 0.0, 'torch': 0.0}
  for i, s in enumerate(shapes):
    name = f'{i} {s["size"]}x{s["size"]}x{s["cin"]} -> {s["cout"]} ({s["kernel"]}x{s["kernel"]})'
    for piece in ('fwd', 'dx', 'dw'):
      if (i, piece, 'jax') not in med:
        continue
      j, t = med[i, piece, 'jax'], med[i, piece, 'torch']
      totals['jax'] += j
      totals['torch'] += t
      rows.append({'layer': name, 'piece': piece, 'jax_s': j, 'torch_s': t, 'flops': flops[i]})
      print(
        f'{name:28s} {piece:5s} {1e3 * j:8.2f} {1e3 * t:11.2f} {t / j:12.2f}x '
        f'{flops[i] / j / 1e9:12.1f} {flops[i] / t / 1e9:11.1f}'
      )
  print(
    f'{"all convolutions":28s} {"":5s} {1e3 * totals["jax"]:8.2f} {1e3 * totals["torch"]:11.2f} '
    f'{totals["torch"] / totals["jax"]:12.2f}x'
  )
  if FLAGS.out:
    record = {
      'command': 'python ' + ' '.join(sys.argv),
      'time': time.strftime('%Y-%m-%d %H:%M:%S'),
      'cpu_cores': os.cpu_count(),
      'load_average_1min_at_end': os.getloadavg()[0],
      'versions': {'jax': jax.__version__, 'torch': torch.__version__},
      'settings': {
        'arch': FLAGS.arch,
        'batch_size': b,
        'rounds': FLAGS.rounds,
        'calls': FLAGS.calls,
        'torch_threads': threads,
        'jax_dtype': FLAGS.jax_dtype,
        'kernel_grad': FLAGS.kernel_grad,
      },
      'rows': rows,
      'totals_s': totals,
    }
    with open(FLAGS.out, 'w') as f:
      json.dump(record, f, indent=2)
    print(f'wrote {FLAGS.out}')


if __name__ == '__main__':
  app.run(main)
