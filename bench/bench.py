"""Training and evaluation throughput of what `make train` runs: JAX beside PyTorch, in one run.

  python -m bench.bench --out=bench/results/cpu.json  # configs/mnist.py, as train.py runs it
  python -m bench.bench --config=configs/gap.py --batch_size=128 --augment=false --cpu_devices=1
  python -m bench.bench --notorch                     # JAX only (no PyTorch installed)

By default JAX trains the default config (configs/mnist.py: its net, batch size, augmentation,
dropout and weight average) on the trainer's device split (train.py's: one CPU device per core,
dividing the batch; --cpu_devices=N forces a count), through the trainer's own compiled calls
(train.compile_programs: data on the device, the donated multi-step call, the whole epoch on
accelerators). --config, --arch, --batch_size and --augment time something else. PyTorch trains
bench/torch_cnn.py, the same network (parameter count asserted; its dropout is off and it keeps
no weight average), with the same batch size, images, augmentation and SGD + Nesterov momentum,
one optimizer.step() per batch, as its users write it. When JAX runs on a GPU, PyTorch runs on
it too (--torch_device): data set on the GPU, cuDNN autotuning on, the loss summed on the
device (one sync per round, as the JAX side).

Timed rounds alternate between the frameworks (JAX, PyTorch, PyTorch, JAX, ...), so a load
that comes and goes hits both alike; the medians over rounds are reported, compile time
apart, and the ratio JAX / PyTorch. The JSON (--out) records every round and the hardware.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import sys
import time
from typing import Any

from absl import app, flags

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)

FLAGS = flags.FLAGS
flags.DEFINE_string('data_dir', os.path.join(REPO, '..', 'shared', 'mnist'), 'MNIST IDX folder.')
flags.DEFINE_string(
  'config', 'configs/mnist.py', 'The config whose net and recipe both sides train (make train).'
)
flags.DEFINE_string(
  'arch', '', "nets.cnn.ARCHITECTURES name or layer spec, trained on both sides; '' = the config's."
)
flags.DEFINE_integer('batch_size', 0, "Training batch size (both frameworks); 0 = the config's.")
flags.DEFINE_integer('eval_batch_size', 0, "Evaluation batch size (both); 0 = the config's.")
flags.DEFINE_integer(
  'cpu_devices', 0, 'JAX CPU devices; 0 = as train.py (one per core, dividing the batch).'
)
flags.DEFINE_integer('rounds', 5, 'Timed rounds per framework (the median is reported).')
flags.DEFINE_integer(
  'round_steps', 0, 'Train steps per timed round; 0 = one epoch on accelerators, 64 on CPU.'
)
flags.DEFINE_integer('steps_per_call', 0, 'JAX steps per jitted call; 0 = the trainer default.')
flags.DEFINE_list(
  'gradients',
  ['autodiff'],
  "JAX sides to time, one per gradient source (config.gradients): 'autodiff' (jax:repo, the "
  "default), 'hand' (jax:hand, nets/cnn_backprop.py), or both.",
)
flags.DEFINE_bool(
  'augment', None, "Rotation (7 deg) and shift (2 px) on both sides, or none; unset: the config's."
)
flags.DEFINE_bool('torch', True, 'Time PyTorch beside JAX (needs the `bench` extra).')
flags.DEFINE_enum('torch_loader', 'slice', ['slice', 'dataloader'], 'How PyTorch gets batches.')
flags.DEFINE_enum(
  'torch_device',
  'auto',
  ['auto', 'cpu', 'cuda'],
  "PyTorch's device; auto = cuda when JAX runs on a GPU and torch sees one, else cpu.",
)
flags.DEFINE_list(
  'torch_threads', ['0', '1'], 'PyTorch intra-op thread counts to time; 0 = the core count.'
)
flags.DEFINE_bool('eval', True, 'Also time evaluation over the test set.')
flags.DEFINE_string('xla_flags', None, 'XLA_FLAGS for this run (default: bench default).')
flags.DEFINE_string('out', '', 'Write the results as JSON here.')
flags.DEFINE_integer('seed', 0, 'Seeds init, shuffling and augmentation (both sides).')

MAX_DEGREES, MAX_SHIFT = 7.0, 2.0  # configs/gap.py's augmentation, used with --augment.


def bench_config():
  """--config with the flags that override it (its net, batch sizes, augmentation, seed)."""
  import importlib.util

  spec = importlib.util.spec_from_file_location('bench_config', os.path.join(REPO, FLAGS.config))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.arch = FLAGS.arch or config.arch
  config.batch_size = FLAGS.batch_size or config.batch_size
  config.eval_batch_size = FLAGS.eval_batch_size or config.eval_batch_size
  config.steps_per_call, config.seed = FLAGS.steps_per_call, FLAGS.seed
  if FLAGS.augment is not None:
    config.max_degrees, config.max_shift = (MAX_DEGREES, MAX_SHIFT) if FLAGS.augment else (0, 0)
  return config


def median_rate(images: int, seconds: list[float]) -> float:
  return images / statistics.median(seconds)


# ----------------------------------------------------------------------------- JAX side


class JaxSide:
  """The trainer's own compiled calls (`train.compile_programs`), so what is timed is what
  `train.py` runs: state, on-device data, the donated multi-step call, evaluation."""

  def __init__(self, data, config):
    import jax

    import compiled
    import train

    self.jax, self.train, self.zero_sums = jax, train, compiled.zero_sums
    self.config = config
    batch_size, seed = config.batch_size, config.seed
    self.num_train = len(data['train'].labels)
    self.steps_per_epoch = self.num_train // batch_size
    init_rng, self.perm_rng, self.step_rng = jax.random.split(jax.random.key(seed), 3)
    state = train.create_train_state(init_rng, config, self.steps_per_epoch)
    self.num_params = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
    # As train.train_and_evaluate: one 'data' axis over every device, batch sharded, state and
    # data set replicated (e.g. XLA_FLAGS=--xla_force_host_platform_device_count=2 on a CPU).
    replicated, _ = compiled.data_shardings()
    self.replicated = replicated
    self.state = jax.device_put(state, replicated)
    self.train_data = jax.device_put((data['train'].images, data['train'].labels), replicated)
    self.test = data['test']
    self.programs = train.compile_programs(config, self.state, *self.train_data)
    self.chunk = self.programs.chunk
    self.step_call = self.programs.train_calls[self.chunk]
    seconds = self.programs.program_seconds
    self.compile_eval_s = seconds.get('eval raw', seconds['eval'])
    self.compile_train_s = sum(v for k, v in seconds.items() if k.startswith('train '))
    self.compile_wall_s = self.programs.compile_seconds  # All of them, two threads at a time.
    self.epoch, self.batches, self.cursor = 0, None, self.steps_per_epoch

  def train_round(self, steps: int) -> float:
    """Seconds for `steps` train steps (whole calls of `chunk` steps), synced at the end."""
    jax = self.jax
    c0 = time.process_time()
    t0 = time.perf_counter()
    sums = self.programs.replicate(self.zero_sums())
    done = 0
    while done < steps:
      if self.cursor + self.chunk > self.steps_per_epoch:  # New epoch: a fresh permutation.
        self.epoch += 1
        self.batches = self.programs.make_batches(jax.random.fold_in(self.perm_rng, self.epoch))
        self.cursor = 0
      idx = self.batches[self.cursor : self.cursor + self.chunk]
      self.state, sums = self.step_call(self.state, sums, *self.train_data, idx, self.step_rng)
      self.cursor += self.chunk
      done += self.chunk
    sums = jax.device_get(sums)
    seconds = time.perf_counter() - t0
    self.last_cpu_seconds = time.process_time() - c0
    if sums['first_bad_step'] >= 0:
      raise FloatingPointError('JAX training diverged (non-finite loss) during the benchmark.')
    self.last_train = {'loss': float(sums['loss_sum'] / sums['count']), 'steps': done}
    return seconds

  def eval_round(self) -> float:
    """Seconds to evaluate the whole test set, as train.train_and_evaluate does."""
    t0 = time.perf_counter()
    metrics, _ = self.train.evaluate(
      self.programs.raw_eval_fn,
      self.state,
      self.test.images,
      self.test.labels,
      self.config.eval_batch_size,
    )
    seconds = time.perf_counter() - t0
    self.last_eval = metrics
    return seconds


# ----------------------------------------------------------------------------- PyTorch side


class TorchSide:
  """bench/torch_cnn.py trained the way its users write it: one optimizer.step() per batch."""

  def __init__(self, data, loader, threads, config, device):
    batch_size, eval_batch_size, seed = config.batch_size, config.eval_batch_size, config.seed
    import torch
    import torch.nn.functional as F

    import augment as jax_augment
    from bench import torch_cnn

    self.torch, self.F, self.torch_cnn = torch, F, torch_cnn
    self.threads, self.device = threads, torch.device(device)
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    if self.device.type == 'cuda':
      # What a PyTorch user after speed sets: cuDNN times its convolution algorithms once and
      # keeps the fastest for these fixed shapes.
      torch.backends.cudnn.benchmark = True
    self.generator = torch.Generator().manual_seed(seed)  # CPU: shuffles and augmentation.
    self.max_degrees, self.max_shift = config.max_degrees, config.max_shift
    augment = bool(self.max_degrees or self.max_shift)
    self.model = torch_cnn.build(config.arch).to(self.device)
    self.num_params = torch_cnn.count_params(self.model)
    self.batch_size, self.eval_batch_size, self.augment = batch_size, eval_batch_size, augment
    self.mean, self.std = jax_augment.PIXEL_MEAN, jax_augment.PIXEL_STD

    # Images as [0, 1] floats in memory (ToTensor), normalised per batch (Normalize); on a GPU
    # the whole set lives on it (188 MB as float32), as the JAX side's does.
    def tensor(a):
      return torch.from_numpy(a.copy()).to(self.device)

    self.train_x = tensor(data['train'].images).float().div_(255).unsqueeze(1)
    self.train_y = tensor(data['train'].labels).long()
    self.test_x = tensor(data['test'].images).float().div_(255).unsqueeze(1)
    self.test_y = tensor(data['test'].labels).long()
    self.steps_per_epoch = len(self.train_y) // batch_size
    self.optimizer = torch.optim.SGD(
      self.model.parameters(),
      lr=config.learning_rate,
      momentum=config.momentum,
      nesterov=True,
      weight_decay=config.weight_decay,
    )
    self.loader_kind = loader
    if loader == 'dataloader':
      dataset = torch.utils.data.TensorDataset(self.train_x, self.train_y)
      self.loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=True, drop_last=True, generator=self.generator
      )
    self.batches = iter(())

  def _next_batch(self):
    torch = self.torch
    try:
      return next(self.batches)
    except StopIteration:
      if self.loader_kind == 'dataloader':
        self.batches = iter(self.loader)
      else:
        perm = torch.randperm(len(self.train_y), generator=self.generator).to(self.device)
        n, b = self.steps_per_epoch, self.batch_size
        self.batches = ((self.train_x[i], self.train_y[i]) for i in perm[: n * b].view(n, b))
      return next(self.batches)

  def train_round(self, steps: int) -> float:
    torch, F = self.torch, self.F
    torch.set_num_threads(self.threads)
    self.model.train()
    c0 = time.process_time()
    t0 = time.perf_counter()
    loss_sum = torch.zeros((), device=self.device)  # Summed on the device: no sync per step.
    for _ in range(steps):
      x, y = self._next_batch()
      if self.augment:
        x = self.torch_cnn.augment(x, self.max_degrees, self.max_shift, self.generator)
      x = (x - self.mean) / self.std
      self.optimizer.zero_grad(set_to_none=True)
      loss = F.cross_entropy(self.model(x), y)
      loss.backward()
      self.optimizer.step()
      loss_sum += loss.detach()
    loss_sum = loss_sum.item()  # Waits for the device's queue to drain.
    seconds = time.perf_counter() - t0
    self.last_cpu_seconds = time.process_time() - c0
    if not math.isfinite(loss_sum):
      raise FloatingPointError('PyTorch training diverged during the benchmark.')
    self.last_train = {'loss': loss_sum / steps, 'steps': steps}
    return seconds

  def eval_round(self) -> float:
    torch = self.torch
    torch.set_num_threads(self.threads)
    self.model.eval()
    t0 = time.perf_counter()
    correct = 0
    with torch.no_grad():
      for i in range(0, len(self.test_y), self.eval_batch_size):
        x = (self.test_x[i : i + self.eval_batch_size] - self.mean) / self.std
        correct += (self.model(x).argmax(1) == self.test_y[i : i + self.eval_batch_size]).sum()
      correct = int(correct)  # Waits for the device.
    seconds = time.perf_counter() - t0
    self.last_eval = {'accuracy': correct / len(self.test_y)}
    return seconds


# ----------------------------------------------------------------------------- main


def summarise(times: list[float], images: int) -> dict[str, Any]:
  return {'images_per_s': median_rate(images, times), 'round_seconds': times}


def main(argv):
  del argv
  if FLAGS.xla_flags is not None:
    os.environ['XLA_FLAGS'] = FLAGS.xla_flags

  import jax

  import input_pipeline
  import multihost

  config = bench_config()
  # As train.py splits a CPU (cli.run): before anything starts a JAX backend.
  devices = FLAGS.cpu_devices or multihost.default_cpu_devices(config.batch_size)
  jax.config.update('jax_num_cpu_devices', devices)
  data = input_pipeline.get_datasets(FLAGS.data_dir)
  sides = {}
  unknown = set(FLAGS.gradients) - {'autodiff', 'hand'}
  if unknown or not FLAGS.gradients:
    raise app.UsageError(f'--gradients takes autodiff and/or hand, not {sorted(unknown)}.')
  for source in FLAGS.gradients:
    side_config = config.copy_and_resolve_references()
    side_config.gradients = source
    sides['jax:repo' if source == 'autodiff' else 'jax:hand'] = JaxSide(data, side_config)
  jx = next(iter(sides.values()))
  for name, side in sides.items():
    print(
      f'{name}: JAX {jax.__version__} on {jax.default_backend()} x{jax.device_count()} '
      f'({jax.devices()[0].device_kind}), {config.arch}, {side.num_params:,} params, batch '
      f'{config.batch_size}; {side.chunk} steps per call; compile: train '
      f'{side.compile_train_s:.1f} s, eval {side.compile_eval_s:.1f} s '
      f'({side.compile_wall_s:.1f} s wall for all)',
      flush=True,
    )
  round_steps = FLAGS.round_steps or (64 if jax.default_backend() == 'cpu' else jx.steps_per_epoch)
  round_steps = max(jx.chunk, round_steps // jx.chunk * jx.chunk)  # Whole JAX calls.
  torch_threads = sorted({int(t) or os.cpu_count() for t in FLAGS.torch_threads}, reverse=True)
  torch_device = None
  if FLAGS.torch:
    import torch

    torch_device = FLAGS.torch_device
    if torch_device == 'auto':
      on_gpu = jax.default_backend() == 'gpu' and torch.cuda.is_available()
      torch_device = 'cuda' if on_gpu else 'cpu'
    if torch_device == 'cuda':
      if not torch.cuda.is_available():
        raise app.UsageError(f'--torch_device=cuda, but torch {torch.__version__} sees no GPU.')
      torch_threads = torch_threads[:1]  # The GPU does the work; one side is enough.
    for threads in torch_threads:
      th = TorchSide(data, FLAGS.torch_loader, threads, jx.config, torch_device)
      if th.num_params != jx.num_params:
        raise AssertionError(f'PyTorch net has {th.num_params:,} params, flax {jx.num_params:,}.')
      sides['torch:cuda' if torch_device == 'cuda' else f'torch:{threads}t'] = th
    where = torch.cuda.get_device_name() if torch_device == 'cuda' else f'threads {torch_threads}'
    print(f'PyTorch {torch.__version__} on {torch_device} ({where}), same parameter count.')

  # Warm-up (untimed): first calls allocate and, for PyTorch, pick kernels.
  for side in sides.values():
    side.train_round(round_steps)
    if FLAGS.eval:
      side.eval_round()

  times = {name: {'train': [], 'train_cpu': [], 'eval': []} for name in sides}
  order = list(sides)
  for r in range(FLAGS.rounds):
    for name in order if r % 2 == 0 else order[::-1]:  # ABBA: drift hits all alike.
      times[name]['train'].append(sides[name].train_round(round_steps))
      times[name]['train_cpu'].append(sides[name].last_cpu_seconds)
      if FLAGS.eval:
        times[name]['eval'].append(sides[name].eval_round())
    line = '  '.join(
      f'{n} {round_steps * config.batch_size / times[n]["train"][-1]:6.0f}' for n in order
    )
    print(f'round {r + 1}/{FLAGS.rounds} train img/s: {line}', flush=True)

  images = round_steps * config.batch_size
  n_test = len(data['test'].labels)
  results = {}
  for name, side in sides.items():
    results[name] = {'train': summarise(times[name]['train'], images)}
    results[name]['train']['last_loss'] = side.last_train['loss']
    # Images per CPU-second (all threads of this process): on a shared machine this measures
    # the work done, less the time spent waiting for a core.
    results[name]['train']['images_per_cpu_s'] = median_rate(images, times[name]['train_cpu'])
    if FLAGS.eval:
      results[name]['eval'] = summarise(times[name]['eval'], n_test)
      results[name]['eval']['last_accuracy'] = side.last_eval['accuracy']
    if isinstance(side, JaxSide):
      results[name].update(
        compile_train_s=side.compile_train_s,
        compile_eval_s=side.compile_eval_s,
        steps_per_call=side.chunk,
      )
  ratios = {}
  if FLAGS.torch:
    # Against PyTorch at the core count (its default) and against its fastest thread count:
    # on a loaded machine PyTorch's OpenMP threads can collapse, so the second is the honest one.
    default_torch = 'torch:cuda' if torch_device == 'cuda' else f'torch:{os.cpu_count()}t'
    best_torch = max(
      (n for n in sides if n.startswith('torch')),
      key=lambda n: results[n]['train']['images_per_s'],
    )
    for name in (n for n in sides if n.startswith('jax')):
      for label, ref in (
        ('vs_torch_default_threads', default_torch),
        ('vs_torch_best', best_torch),
      ):
        if ref not in results:
          continue
        per_round = [t / j for j, t in zip(times[name]['train'], times[ref]['train'], strict=True)]
        ratios[f'{name} {label} ({ref})'] = {
          'train': results[name]['train']['images_per_s'] / results[ref]['train']['images_per_s'],
          'train_median_of_round_ratios': statistics.median(per_round),
          'train_per_cpu_second': results[name]['train']['images_per_cpu_s']
          / results[ref]['train']['images_per_cpu_s'],
          'eval': (
            results[name]['eval']['images_per_s'] / results[ref]['eval']['images_per_s']
            if FLAGS.eval
            else None
          ),
        }
  record = {
    'command': 'python ' + ' '.join(sys.argv),
    'time': time.strftime('%Y-%m-%d %H:%M:%S'),
    'hardware': {
      'backend': jax.default_backend(),
      'device_kind': jax.devices()[0].device_kind,
      'device_count': jax.device_count(),
      'cpu_model': multihost.cpu_model(),
      'cpu_cores': os.cpu_count(),
      'load_average_1min_at_end': os.getloadavg()[0],
    },
    'versions': {
      'python': platform.python_version(),
      'jax': jax.__version__,
      'torch': sys.modules['torch'].__version__ if 'torch' in sys.modules else None,
    },
    'xla_flags': os.environ.get('XLA_FLAGS', ''),
    'settings': {
      'batch_size': config.batch_size,
      'eval_batch_size': config.eval_batch_size,
      'rounds': FLAGS.rounds,
      'round_steps': round_steps,
      'max_degrees': config.max_degrees,
      'max_shift': config.max_shift,
      'ema_decay': config.ema_decay,
      'dropout_rate': config.dropout_rate,
      'devices': jax.device_count(),
      'torch_loader': FLAGS.torch_loader,
      'torch_threads': torch_threads if FLAGS.torch else None,
      'torch_device': torch_device,
      'config': FLAGS.config,
      'arch': jx.config.arch,
      'gradients': FLAGS.gradients,
      'params': jx.num_params,
    },
    'results': results,
    'ratios_jax_over_torch': ratios,
  }
  print(f'\nmedians of {FLAGS.rounds} rounds of {round_steps} steps x {config.batch_size} images:')
  for name in order:
    r = results[name]
    ev = f', eval {r["eval"]["images_per_s"]:8,.0f} img/s' if FLAGS.eval else ''
    comp = (
      f', compile {r["compile_train_s"]:.1f} s (train) + {r["compile_eval_s"]:.1f} s (eval)'
      if 'compile_train_s' in r
      else ''
    )
    print(
      f'  {name:18s} train {r["train"]["images_per_s"]:7,.0f} img/s '
      f'({r["train"]["images_per_cpu_s"]:,.0f} img/CPU-s){ev}{comp}'
    )
  for label, r in ratios.items():
    ev = f', eval {r["eval"]:.2f}x' if FLAGS.eval else ''
    print(
      f'  ratio {label}: train {r["train"]:.2f}x '
      f'(median of per-round ratios {r["train_median_of_round_ratios"]:.2f}x; '
      f'per CPU-second {r["train_per_cpu_second"]:.2f}x){ev}'
    )
  print(f'hardware: {record["hardware"]}')
  if FLAGS.out:
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    with open(FLAGS.out, 'w') as f:
      json.dump(record, f, indent=2)
    print(f'wrote {FLAGS.out}')


if __name__ == '__main__':
  app.run(main)
