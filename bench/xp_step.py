"""Experiment: one train-step variant per compile option set, timed interleaved in one process.

  python bench/xp_step.py --variants=base,fastmath --rounds=5 --steps=4

Each variant is a jit of `--steps` train.train_step calls (a Python loop, nets/cnn.py's
default model) compiled with its own XLA options (`.lower(...).compile(compiler_options)`), so
flag effects are compared under the same machine load. Prints the median ms per step and the
ratio to the first.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time

sys.path[:0] = [
  os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
  os.path.dirname(os.path.abspath(__file__)),
]

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import input_pipeline  # noqa: E402
import train  # noqa: E402
from configs import mnist  # noqa: E402

VARIANTS = {
  'base': {},
  'base2': {},
  'ynn_eltwise': {'xla_cpu_experimental_ynn_fusion_type': '+eltwise'},
  'ynn_dot': {'xla_cpu_experimental_ynn_fusion_type': '+dot'},
  'ynn_noreduce': {'xla_cpu_experimental_ynn_fusion_type': '-reduce'},
  'xnn_eltwise': {'xla_cpu_experimental_xnn_fusion_type': 'eltwise,reduce,dot'},
  'fastmath': {'xla_cpu_enable_fast_math': True},
  'noynn': {'xla_cpu_experimental_ynn_fusion_type': ''},
  'eigen1': {'xla_cpu_multi_thread_eigen': False},
  'onednn': {'xla_cpu_use_onednn': True},
  'onednn_cc': {'xla_cpu_experimental_onednn_custom_call': True},
  'noxnn': {'xla_cpu_use_xnnpack': False},
  'xnngreedy': {'xla_cpu_experimental_xnn_graph_fusion_mode': 'XNN_GRAPH_FUSION_MODE_GREEDY'},
  'ynnall': {
    'xla_cpu_experimental_ynn_fusion_type': 'individual_convolution,individual_dot,eltwise,reduce'
  },
  'noconcsched': {'xla_cpu_enable_concurrency_optimized_scheduler': False},
}


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--variants', default='base,fastmath')
  p.add_argument('--rounds', type=int, default=5)
  p.add_argument('--steps', type=int, default=8)
  p.add_argument('--calls', type=int, default=4)
  p.add_argument('--augment', action='store_true')
  p.add_argument(
    '--data_dir',
    default=os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'shared', 'mnist'),
    help='MNIST IDX folder (default: ../shared/mnist beside the checkout).',
  )
  a = p.parse_args()
  names = a.variants.split(',')
  unknown = sorted(set(names) - set(VARIANTS))
  if unknown:
    p.error(f'unknown variants {unknown}; known: {", ".join(VARIANTS)}')
  c = mnist.get_config()
  if not a.augment:
    c.max_degrees, c.max_shift = 0.0, 0.0
  data = input_pipeline.get_datasets(a.data_dir)
  images = jax.device_put(data['train'].images)
  labels = jax.device_put(data['train'].labels)
  step_fn = functools.partial(train.train_step, max_degrees=c.max_degrees, max_shift=c.max_shift)

  def loop(state, images, labels, idx, rng):  # K steps traced in one jit (see xp_drive.py).
    for i in range(idx.shape[0]):
      state, m = step_fn(state, images[idx[i]], labels[idx[i]], jax.random.fold_in(rng, i))
    return state, m

  f = jax.jit(loop, donate_argnums=0)
  state = train.create_train_state(jax.random.key(0), c, 468)
  idx = train.epoch_batches(jax.random.key(1), 60000, 128)[: a.steps]
  rng = jax.random.key(2)
  lowered = f.lower(state, images, labels, idx, rng)
  compiled = {}
  for name in names:
    t0 = time.perf_counter()
    compiled[name] = lowered.compile(VARIANTS[name])
    print(f'{name}: compiled in {time.perf_counter() - t0:.1f} s', flush=True)
  states = {n: jax.tree_util.tree_map(jnp.copy, state) for n in compiled}
  times = {n: [] for n in compiled}
  for r in range(a.rounds + 1):
    order = list(compiled) if r % 2 == 0 else list(compiled)[::-1]
    for n in order:
      t0 = time.perf_counter()
      for _ in range(a.calls):
        states[n], m = compiled[n](states[n], images, labels, idx, rng)
      jax.block_until_ready(m)
      if r:  # Round 0 warms up.
        times[n].append((time.perf_counter() - t0) / (a.calls * a.steps) * 1e3)
  base = statistics.median(times[a.variants.split(',')[0]])
  for n, t in times.items():
    m = statistics.median(t)
    print(
      f'{n:12s} {m:7.2f} ms/step  {128 / m * 1e3:6.0f} img/s  x{base / m:.2f} vs first  '
      f'{[round(x, 1) for x in t]}'
    )


if __name__ == '__main__':
  main()
