"""Experiment: driving loops and model variants, timed interleaved in one process.

  python bench/xp_drive.py --variants=steps8,steps8_fast,step1_fast --rounds=4

A variant is DRIVER[_fast]: `_fast` uses bench/fast_cnn.py (reshape max-pool). Drivers:
  stepsK: train.train_steps, K steps per call, unrolled scan (the trainer's CPU default at 8).
  loopK:  K train.train_step calls traced in a Python loop in one jit (no scan, no where).
  rolledK: train.train_steps with a rolled scan of K steps.
  step1:  one jitted train.train_step per call, the batch gathered on device beforehand.
Prints compile seconds, median ms per step and images/s, and each ratio to the first.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]

import fast_cnn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import input_pipeline  # noqa: E402
import train  # noqa: E402
from configs import mnist  # noqa: E402


def make(driver: str, step_fn):
  """(jitted fn, steps per call, call(fn, state, idx) -> state)."""
  k = int(re.sub(r'\D', '', driver) or 1)
  if driver.startswith('steps') or driver.startswith('rolled'):
    f = jax.jit(
      functools.partial(train.train_steps, step_fn=step_fn, unroll=driver.startswith('steps')),
      donate_argnums=(0, 1),
    )
    return f, k, lambda f, s, im, lb, idx, rng: f(s, train.zero_sums(), im, lb, idx, rng)[0]
  if driver.startswith('loop'):

    def loop(state, im, lb, idx, rng):
      for i in range(idx.shape[0]):
        state, _ = step_fn(state, im[idx[i]], lb[idx[i]], jax.random.fold_in(rng, state.step))
      return state

    f = jax.jit(loop, donate_argnums=0)
    return f, k, lambda f, s, im, lb, idx, rng: f(s, im, lb, idx, rng)
  if driver == 'step1':
    f = jax.jit(step_fn, donate_argnums=0)
    return f, 1, lambda f, s, im, lb, idx, rng: f(s, im[idx[0]], lb[idx[0]], rng)[0]
  raise ValueError(driver)


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--variants', default='steps8,steps8_fast')
  p.add_argument('--rounds', type=int, default=4)
  p.add_argument('--round_steps', type=int, default=16)
  p.add_argument('--augment', action='store_true')
  a = p.parse_args()
  c = mnist.get_config()
  if not a.augment:
    c.max_degrees, c.max_shift = 0.0, 0.0
  data = input_pipeline.get_datasets(os.path.join(HERE, '..', '..', 'shared', 'mnist'))
  images, labels = jax.device_put(data['train'].images), jax.device_put(data['train'].labels)
  step_fn = functools.partial(train.train_step, max_degrees=c.max_degrees, max_shift=c.max_shift)
  base = train.create_train_state(jax.random.key(0), c, 468)
  batches = train.epoch_batches(jax.random.key(1), 60000, 128)
  rng = jax.random.key(2)
  runs = {}
  for name in a.variants.split(','):
    driver, _, model = name.partition('_')
    state = base if model != 'fast' else base.replace(apply_fn=fast_cnn.build('default').apply)
    state = jax.tree_util.tree_map(jnp.copy, state)
    f, k, call = make(driver, step_fn)
    t0 = time.perf_counter()
    state = call(f, state, images, labels, batches[:k], rng)  # Compiles.
    jax.block_until_ready(state)
    print(f'{name}: first call (compile) {time.perf_counter() - t0:.1f} s', flush=True)
    runs[name] = dict(f=f, k=k, call=call, state=state, times=[])
  for r in range(a.rounds + 1):
    names = list(runs) if r % 2 == 0 else list(runs)[::-1]
    for name in names:
      run = runs[name]
      k, s = run['k'], run['state']
      n = max(1, a.round_steps // k)
      t0 = time.perf_counter()
      for i in range(n):
        s = run['call'](run['f'], s, images, labels, batches[i * k : (i + 1) * k], rng)
      jax.block_until_ready(s)
      run['state'] = s
      if r:
        run['times'].append((time.perf_counter() - t0) / (n * k) * 1e3)
  first = statistics.median(next(iter(runs.values()))['times'])
  for name, run in runs.items():
    m = statistics.median(run['times'])
    print(
      f'{name:16s} {m:7.1f} ms/step {128e3 / m:6.0f} img/s  x{first / m:.2f}  '
      f'{[round(t) for t in run["times"]]}'
    )
  print('load average', os.getloadavg())


if __name__ == '__main__':
  main()
