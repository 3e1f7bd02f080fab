"""How a run's steps execute on its devices: one 'data' mesh over every device, the multi-step
train call (traced step by step on the CPU, one rolled `lax.scan` on accelerators), and every
call compiled ahead of time. train.py supplies the step functions; bench/bench.py times the
same `Programs`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import multihost
import startup
from errors import NonFiniteError


def zero_sums() -> dict[str, jax.Array]:
  """Running sums carried across the steps of one epoch (first_bad_step -1: none yet)."""
  return {
    'loss_sum': jnp.zeros((), jnp.float32),
    'correct': jnp.zeros((), jnp.int32),
    'count': jnp.zeros((), jnp.int32),
    'first_bad_step': jnp.full((), -1, jnp.int32),
  }


def train_steps(
  state: Any,
  sums: dict[str, jax.Array],
  train_images: jax.Array,
  train_labels: jax.Array,
  batch_indices: jax.Array,
  rng: jax.Array,
  *,
  step_fn: Callable,
  unroll: bool,
  batch_sharding: NamedSharding | None = None,
) -> tuple[Any, dict[str, jax.Array]]:
  """Runs `step_fn` over each row of `batch_indices` [K, B], all on device.

  With `unroll` the K steps are traced one after another (the CPU driver); otherwise they run
  as one rolled `lax.scan` (accelerators: a whole epoch in one compiled loop).

  Each step gathers its batch from the on-device data set and uses rng fold_in(rng, step), so
  a resumed run repeats the same randomness. After a non-finite step, later steps leave the
  state unchanged and `first_bad_step` records the global step that failed.
  """

  def body(carry, idx):
    state, sums = carry
    images, labels = train_images[idx], train_labels[idx]
    if batch_sharding is not None:
      images = jax.lax.with_sharding_constraint(images, batch_sharding)
      labels = jax.lax.with_sharding_constraint(labels, batch_sharding)
    new_state, m = step_fn(state, images, labels, jax.random.fold_in(rng, state.step))
    ok = m['finite'] & (sums['first_bad_step'] < 0)
    state = jax.tree_util.tree_map(lambda n, o: jnp.where(ok, n, o), new_state, state)
    sums = {
      'loss_sum': sums['loss_sum'] + jnp.where(ok, m['loss_sum'], 0.0),
      'correct': sums['correct'] + jnp.where(ok, m['correct'], 0),
      'count': sums['count'] + jnp.where(ok, m['count'], 0),
      'first_bad_step': jnp.where(
        (sums['first_bad_step'] < 0) & ~m['finite'], state.step, sums['first_bad_step']
      ),
    }
    return (state, sums), None

  if unroll:
    carry = (state, sums)
    for i in range(batch_indices.shape[0]):
      carry, _ = body(carry, batch_indices[i])
    return carry
  (state, sums), _ = jax.lax.scan(body, (state, sums), batch_indices)
  return state, sums


def epoch_batches(rng: jax.Array, num_examples: int, batch_size: int) -> jax.Array:
  """A fresh permutation as [steps, batch] indices; the last partial batch is dropped."""
  steps = num_examples // batch_size
  return jax.random.permutation(rng, num_examples)[: steps * batch_size].reshape(steps, batch_size)


def default_steps_per_call(steps_per_epoch: int) -> tuple[int, bool]:
  """(steps per jitted call, unroll) for this backend.

  XLA:CPU runs a rolled `lax.scan` body ~20x slower than the same step called on its own: in a
  loop body it leaves most weight-gradient convolutions in a layout only its slow generic
  emitter handles (bench/README.md). A scan of length 1 is lowered the same way, so on the
  CPU the steps are traced directly instead (`unroll`), 4 per call: XLA's compile time grows
  with the steps unrolled (the default's 8-step call took 6-8x as long as its 1-step call, the
  4-step one 3x), while 4 steps per call trained about as fast as 8 on a shared CPU and 1 was
  ~30 % slower (bench/README.md, "Compile time"). Accelerators run the whole epoch as one
  rolled scan: no host round-trip per step.
  """
  if jax.default_backend() == 'cpu':
    return min(CPU_STEPS_PER_CALL, steps_per_epoch), True
  return steps_per_epoch, False


CPU_STEPS_PER_CALL = 4


def call_lengths(chunk: int, steps_per_epoch: int) -> list[int]:
  """The train calls an epoch of `steps_per_epoch` makes at `chunk` steps per call."""
  return sorted({chunk, steps_per_epoch % chunk} - {0}, reverse=True)


def data_shardings() -> tuple[NamedSharding, NamedSharding]:
  """(replicated, batch-sharded) over one 'data' mesh axis of every device."""
  mesh = jax.make_mesh((jax.device_count(),), ('data',), axis_types=(jax.sharding.AxisType.Auto,))
  return NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))


@dataclasses.dataclass(frozen=True)
class Programs:
  """The compiled calls of a run, built once by `compile_programs` (bench/bench.py times these)."""

  replicated: NamedSharding  # State and data set: a full copy on every device.
  replicate: Callable  # tree -> the tree on `replicated`, from host or single-device values.
  chunk: int  # Train steps per call (the last call of an epoch may run fewer).
  first_chunk: int  # Steps per call in epoch 1 (`epoch_chunks`; `chunk` for the benchmarks).
  train_calls: dict[int, Callable]  # steps K -> (state, sums, images, labels, idx[K, B], rng).
  make_batches: Callable  # rng -> [steps, batch] indices of one epoch.
  eval_fn: Callable  # What the test accuracy is computed with (the EMA weights when on).
  raw_eval_fn: Callable  # The trained weights.
  compile_seconds: float  # Wall-clock of compiling them all (in parallel threads).
  program_seconds: dict[str, float]  # Each program's trace + lower + compile, by name.
  cache_hits: tuple[int, int] = (0, 0)  # (programs read from the persistent cache, requests).
  # Train calls still compiling in a background thread (steps K -> future of compile_one).
  pending: dict[int, concurrent.futures.Future] = dataclasses.field(default_factory=dict)

  def chunk_for(self, epoch: int) -> int:
    """Steps per call in `epoch`: a rule of the epoch alone, so a resumed run repeats it."""
    return self.first_chunk if epoch == 1 else self.chunk

  def train_call(self, k: int) -> Callable:
    """The compiled K-step call, waiting for its background compile if it is still running."""
    if k not in self.train_calls:
      future = self.pending.pop(k)
      if not future.done():
        logging.info('Waiting for the %d-step train call to finish compiling.', k)
      self.train_calls[k], stages = future.result()
      self.program_seconds[f'train {k} (background)'] = sum(stages.values())
      logging.info('Compiled train %d in the background in %.1f s.', k, sum(stages.values()))
    return self.train_calls[k]


# How many programs compile at once. XLA:CPU compiles one program on one thread, so a second
# thread runs the other programs beside the longest one (bench/README.md, "Compile time").
COMPILE_THREADS = 2


def epoch_chunks(config: ml_collections.ConfigDict, steps_per_epoch: int) -> tuple[int, int]:
  """(steps per call in epoch 1, in later epochs).

  The CPU's default K-step call (`default_steps_per_call`) takes XLA ~3x a 1-step call's
  compile, and an epoch of 937 steps needs the 1-step call anyway for its last step. So with
  no `config.steps_per_call` set, epoch 1 runs one step per call while the K-step call compiles
  in a background thread, and later epochs run K per call: the first step waits for the short
  compile only (bench/README.md, "Compile time"). The rule is the epoch's alone (never when a
  compile finished), so a rerun or a resumed run takes the same steps.
  """
  chunk, unroll = default_steps_per_call(steps_per_epoch)
  if config.steps_per_call:
    chunk = min(config.steps_per_call, steps_per_epoch)
    return chunk, chunk
  return (1 if unroll else chunk), chunk


def program_specs(
  config: ml_collections.ConfigDict,
  state: Any,
  train_images: jax.Array,
  train_labels: jax.Array,
  step_fn: Callable,
  eval_step: Callable,
  *,
  train: bool = True,
  lengths: Sequence[int] | None = None,
) -> tuple[int, dict[str, tuple[Callable, tuple]]]:
  """(steps per train call, {name: (jitted function, example arguments)}): every program a run
  calls, over a 'data' mesh of every device: batches sharded, state and data set replicated
  (auto axes: one sharding constraint on the batch, and XLA inserts the all-reduces).
  `train=False`: the evaluation only. `lengths`: the train calls (steps each; None: an epoch's).

  Names: 'train K' (K steps per call; the last call of an epoch may be shorter), 'batches'
  (an epoch's permutation), 'eval' and, with the EMA on, 'eval raw' (the trained weights).
  step_fn: (state, images_u8, labels, rng) -> (state, metrics), as train.train_step.
  eval_step: (state, images_u8, labels, mask, *, ema) -> sums and predictions.
  """
  num_train = len(train_labels)
  steps_per_epoch = num_train // config.batch_size
  chunk = epoch_chunks(config, steps_per_epoch)[1]
  unroll = default_steps_per_call(steps_per_epoch)[1]
  replicated, batch_sharding = data_shardings()
  specs, rng = {}, jax.random.key(0)
  if train:
    multi_step = jax.jit(
      functools.partial(
        train_steps,
        step_fn=step_fn,
        unroll=unroll,
        batch_sharding=batch_sharding if jax.device_count() > 1 else None,
      ),
      donate_argnums=(0, 1),
    )
    sums = jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), zero_sums()
    )
    for k in call_lengths(chunk, steps_per_epoch) if lengths is None else lengths:
      idx = jax.ShapeDtypeStruct((k, config.batch_size), jnp.int32)
      specs[f'train {k}'] = (multi_step, (state, sums, train_images, train_labels, idx, rng))
    # Each device holds only its own columns of the [steps, batch] indices: its rows of every
    # batch, gathered on device from the resident data set.
    index_sharding = NamedSharding(replicated.mesh, P(None, 'data'))
    batches = functools.partial(epoch_batches, num_examples=num_train, batch_size=config.batch_size)
    specs['batches'] = (jax.jit(batches, out_shardings=index_sharding), (rng,))
  # As train.evaluate calls it: host batches of eval_batch_size (the last one padded), split
  # over one process's devices as the train batches are (else each evaluates the whole batch).
  n = config.eval_batch_size
  one_host = jax.process_count() == 1 and n % jax.device_count() == 0
  split = batch_sharding if one_host else None  # None: as jit places host arrays.
  example = [((n, *train_images.shape[1:]), jnp.uint8), ((n,), jnp.int32), ((n,), jnp.bool_)]
  example = (state, *(jax.ShapeDtypeStruct(*a, sharding=split) for a in example))
  ema = config.ema_decay > 0
  specs['eval'] = (jax.jit(functools.partial(eval_step, ema=ema)), example)
  if ema:
    specs['eval raw'] = (jax.jit(eval_step), example)
  return chunk, specs


def compile_one(fn: Callable, args: tuple) -> tuple[Any, dict[str, float]]:
  """fn compiled ahead of time for `args`, and the seconds of each stage (trace, lower,
  compile: XLA's, or reading the persistent cache)."""
  t0 = time.perf_counter()
  traced = fn.trace(*args)
  t1 = time.perf_counter()
  lowered = traced.lower()
  t2 = time.perf_counter()
  executable = lowered.compile()
  t3 = time.perf_counter()
  return executable, {'trace': t1 - t0, 'lower': t2 - t1, 'compile': t3 - t2}


def compile_programs(
  config: ml_collections.ConfigDict,
  state: Any,
  train_images: jax.Array,
  train_labels: jax.Array,
  step_fn: Callable,
  eval_step: Callable,
  *,
  epochs: Sequence[int] | None = None,
  threads: int = COMPILE_THREADS,
) -> Programs:
  """Compiles, ahead of time and `threads` at a time, the programs of `program_specs`.

  `epochs`: the epochs the run will train (empty: none, the evaluation only). The calls of the
  first of them compile before this returns; those only later epochs make (`epoch_chunks`)
  compile in a background thread, picked up by `Programs.train_call`. None: every call at the
  chunk, all before returning (the benchmarks).
  """
  t0 = time.perf_counter()
  hits = startup.cache_counts()
  steps_per_epoch = len(train_labels) // config.batch_size
  first_chunk, chunk = epoch_chunks(config, steps_per_epoch)
  now, later = call_lengths(chunk, steps_per_epoch), []
  if epochs is not None:
    by_epoch = [call_lengths(first_chunk if e == 1 else chunk, steps_per_epoch) for e in epochs]
    now = by_epoch[0] if by_epoch else []
    later = sorted({k for ks in by_epoch for k in ks} - set(now), reverse=True)
  chunk, specs = program_specs(
    config, state, train_images, train_labels, step_fn, eval_step,
    train=epochs is None or bool(epochs), lengths=[*now, *later],
  )  # fmt: skip
  deferred = {f'train {k}': specs.pop(f'train {k}') for k in later}
  with concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:
    futures = {name: pool.submit(compile_one, *spec) for name, spec in specs.items()}
    done = {name: f.result() for name, f in futures.items()}
  programs = {name: executable for name, (executable, _) in done.items()}
  hits = tuple(b - a for a, b in zip(hits, startup.cache_counts(), strict=True))
  # Started only now, so it does not slow the calls the first step waits for. The worker is
  # not a daemon: the interpreter joins it at exit, never tearing XLA down under a compile.
  background = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix='compile')
  pending = {int(n.split()[1]): background.submit(compile_one, *s) for n, s in deferred.items()}
  background.shutdown(wait=False)
  return Programs(
    replicated=data_shardings()[0],
    replicate=multihost.replicator(data_shardings()[0]),
    chunk=chunk,
    first_chunk=first_chunk if epochs is not None else chunk,
    train_calls={int(n.split()[1]): p for n, p in programs.items() if n.startswith('train ')},
    make_batches=programs.get('batches'),
    eval_fn=programs['eval'],
    raw_eval_fn=programs.get('eval raw', programs['eval']),
    compile_seconds=time.perf_counter() - t0,
    program_seconds={name: sum(stages.values()) for name, (_, stages) in done.items()},
    cache_hits=hits,
    pending=pending,
  )


def describe(programs: Programs) -> str:
  """The compile log line: each program's seconds and what the persistent cache held."""
  each = ', '.join(f'{name} {s:.1f} s' for name, s in programs.program_seconds.items())
  return (
    f'Compiled {len(programs.program_seconds)} programs in {programs.compile_seconds:.1f} s '
    f'({each}; {startup.describe_cache(programs.cache_hits)}; backend {jax.default_backend()}, '
    f'{jax.device_count()} device(s)).'
  )


def train_epoch(
  programs: Programs,
  state: Any,
  data: tuple[jax.Array, jax.Array],
  batches: jax.Array,
  rng: jax.Array,
  progress: Callable[[int], Any] = lambda k: None,
  *,
  resume: tuple[int, dict[str, jax.Array]] | None = None,
  stop: Callable[[int], bool] = lambda step: False,
  chunk: int = 0,
) -> tuple[Any, dict[str, jax.Array], int]:
  """Runs one epoch's `batches` through the compiled calls, `chunk` steps per call (0: the
  programs' chunk): (state, device sums, steps done).

  `resume` = (steps already done, their sums) continues an epoch stopped part-way. After each
  call, `stop(global step)` may end the epoch early (a preemption); the caller sees fewer steps
  done than `len(batches)`. NonFiniteError if a step's loss or gradient was not finite (the
  state then holds the last good step's weights, which the caller does not save)."""
  done, sums = resume or (0, programs.replicate(zero_sums()))
  first_step = int(state.step) - done
  steps = len(batches)
  while done < steps:
    k = min(chunk or programs.chunk, steps - done)
    state, sums = programs.train_call(k)(state, sums, *data, batches[done : done + k], rng)
    progress(k)
    done += k
    if done < steps and stop(first_step + done):
      break
  if jax.device_get(sums['first_bad_step']) >= 0:  # The only host sync of the epoch.
    raise NonFiniteError(f'Non-finite loss or gradient at step {int(sums["first_bad_step"])}')
  return state, sums, done
