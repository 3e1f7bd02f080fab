"""Where a run's compile seconds go: each program's trace, lower and XLA compile, per option.

  python -m bench.compile_time --steps_per_call=8,4,2,1 --train_steps=64 \
      --out=bench/results/compile_cpu.json

For each steps-per-call K it builds the programs train.py compiles for the config
(compiled.program_specs: the K-step train call, the shorter last call of an epoch, the
permutation, the evaluations) and times each stage of each program one after another, with no
persistent cache (unless --cache_dir names one: then the second and later options read it).
With --train_steps it then times that many train steps through the K-step call and estimates
the seconds to the end of the first epoch: the compile seconds (in the trainer's parallel
threads: the longest program, or the sum over programs / threads, whichever is larger) plus
one epoch of steps at that rate. The options compile one after another in one process; their
timed rounds alternate (ABBA), so a load that comes and goes hits them alike.
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
flags.DEFINE_string('config', 'configs/mnist.py', 'The config file (as train.py --config).')
flags.DEFINE_string('data_dir', os.path.join(REPO, '..', 'shared', 'mnist'), 'MNIST IDX folder.')
flags.DEFINE_list('steps_per_call', ['0'], 'K values to time; 0 = the trainer default.')
flags.DEFINE_integer('train_steps', 0, 'Train steps per timed round (0: compile only).')
flags.DEFINE_integer('rounds', 5, 'Timed rounds per option, interleaved (ABBA).')
flags.DEFINE_string('cache_dir', '', 'Persistent compilation cache folder ("": none).')
flags.DEFINE_integer('cpu_devices', 0, 'JAX CPU devices; 0 = as train.py (one per core).')
flags.DEFINE_string('out', '', 'Write the results as JSON here.')


def load_config(path: str):
  import importlib.util

  spec = importlib.util.spec_from_file_location('config', os.path.join(REPO, path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


class Stepper:
  """Runs train steps through one option's K-step call, on its own copy of the state."""

  def __init__(self, executables, k, state, train_data):
    import jax

    import compiled
    import multihost

    self.jax, self.call, self.k, self.data = jax, executables[f'train {k}'], k, train_data
    replicate = multihost.replicator(compiled.data_shardings()[0])
    self.state = replicate(jax.tree_util.tree_map(lambda x: x.copy(), state))
    self.sums = replicate(compiled.zero_sums())
    self.batches = executables['batches'](jax.random.key(1))
    self.cursor = 0

  def round(self, steps: int) -> float:
    """Seconds per step over `steps` steps (whole K-step calls), synced at the end."""
    t0 = time.perf_counter()
    for _ in range(max(1, steps // self.k)):
      if self.cursor + self.k > len(self.batches):
        self.cursor = 0
      idx = self.batches[self.cursor : self.cursor + self.k]
      self.state, self.sums = self.call(
        self.state, self.sums, *self.data, idx, self.jax.random.key(2)
      )
      self.cursor += self.k
    self.jax.block_until_ready(self.sums)
    return (time.perf_counter() - t0) / (max(1, steps // self.k) * self.k)


def main(argv):
  del argv
  import jax

  import multihost
  import startup

  config = load_config(FLAGS.config)
  jax.config.update(
    'jax_num_cpu_devices', FLAGS.cpu_devices or multihost.default_cpu_devices(config.batch_size)
  )
  jax.config.update('jax_enable_compilation_cache', False)
  if FLAGS.cache_dir:
    jax.config.update('jax_enable_compilation_cache', True)
    startup.enable_compile_cache(FLAGS.cache_dir)

  import compiled
  import input_pipeline
  import train

  data = input_pipeline.get_datasets(FLAGS.data_dir)
  steps_per_epoch = len(data['train'].labels) // config.batch_size
  replicate = multihost.replicator(compiled.data_shardings()[0])
  state = replicate(train.create_train_state(jax.random.key(0), config, steps_per_epoch))
  train_data = replicate((data['train'].images, data['train'].labels))
  step_fn = train.step_function(config, len(data['train'].labels))
  results, steppers = [], []
  for k in (int(x) for x in FLAGS.steps_per_call):
    config.steps_per_call = k
    chunk, specs = compiled.program_specs(config, state, *train_data, step_fn, train.eval_step)
    option, executables = {'steps_per_call': chunk, 'programs': {}}, {}
    for name, (fn, args) in specs.items():
      executables[name], stages = compiled.compile_one(fn, args)
      option['programs'][name] = stages
      print(f'K={chunk} {name:10s} ' + '  '.join(f'{s} {v:5.1f} s' for s, v in stages.items()))
    seconds = [sum(st.values()) for st in option['programs'].values()]
    option['compile_sequential_s'] = sum(seconds)
    option['compile_parallel_estimate_s'] = max(max(seconds), sum(seconds) / 2)
    if FLAGS.train_steps:
      steppers.append(Stepper(executables, chunk, state, train_data))
      steppers[-1].round(steppers[-1].k)  # Warm-up: the first call allocates.
    results.append(option)
  rounds = [[] for _ in results]
  for r in range(FLAGS.rounds if steppers else 0):
    order = list(range(len(steppers)))
    for i in order if r % 2 == 0 else order[::-1]:  # ABBA: a load that drifts hits all alike.
      rounds[i].append(steppers[i].round(FLAGS.train_steps))
  for option, times in zip(results, rounds, strict=True):
    if times:
      option['seconds_per_step_rounds'] = times
      option['seconds_per_step'] = statistics.median(times)
      option['first_epoch_estimate_s'] = (
        option['compile_parallel_estimate_s'] + option['seconds_per_step'] * steps_per_epoch
      )
    print(json.dumps({k: v for k, v in option.items() if k != 'programs'}), flush=True)
  record = {
    'command': 'python ' + ' '.join(sys.argv),
    'time': time.strftime('%Y-%m-%d %H:%M:%S'),
    'cpu_model': multihost.cpu_model(),
    'cpu_cores': multihost.usable_cores(),
    'device_count': jax.device_count(),
    'load_average_1min_at_end': os.getloadavg()[0],
    'xla_flags': os.environ.get('XLA_FLAGS', ''),
    'options': results,
  }
  if FLAGS.out:
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    with open(FLAGS.out, 'w') as f:
      json.dump(record, f, indent=2)


if __name__ == '__main__':
  app.run(main)
