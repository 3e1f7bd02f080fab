"""Trains the MNIST CNN with optax: one pure, jitted train step, data and augmentation on device.

  python train.py --config=configs/mnist.py --workdir=/tmp/mnist [--config.data_dir=IDX_FOLDER]

`train_and_evaluate(config, workdir)` does the work and never reads FLAGS. Per epoch it writes
workdir/metrics.jsonl, TensorBoard events (workdir/tb) and an orbax checkpoint
(workdir/checkpoints, the newest `checkpoints_to_keep`); rerunning with the same workdir resumes
after the last finished epoch. At the end: workdir/summary.json and PNG plots. The subsystems
live apart: checkpointing.py, metrics.py, plots.py, input_pipeline.py, nets/.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import app, flags, logging
from flax import struct
from flax.training import train_state
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import checkpointing
import input_pipeline
import metrics
import multihost
import plots
import preflight
from errors import NonFiniteError, Preempted, UserError
from nets import cnn


class TrainState(train_state.TrainState):
  batch_stats: Any  # BatchNorm running averages, updated by every train step.
  # Exponential moving average of {'params', 'batch_stats'} when config.ema_decay > 0, which
  # evaluation then uses; None when it is 0 (nothing carried, saved or checksummed).
  ema: Any
  # cnn.apply bound to the model: (variables, images, *, train, rng) -> (logits, batch_stats).
  apply_fn: Callable = struct.field(pytree_node=False)


# ----------------------------------------------------------------------------- state


def make_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
  """One-cycle: linear warm-up to the peak, then cosine decay to ~0 at the last step."""
  total = config.num_epochs * steps_per_epoch
  return optax.cosine_onecycle_schedule(
    transition_steps=total,
    peak_value=config.learning_rate,
    pct_start=max(config.warmup_fraction, 1 / total),
  )


def create_train_state(
  rng: jax.Array, config: ml_collections.ConfigDict, steps_per_epoch: int
) -> TrainState:
  """A fresh TrainState: initialised CNN, SGD + Nesterov + weight decay on a one-cycle LR."""
  model = cnn.build(config.arch, config.dropout_rate)
  variables = cnn.init(model, rng)
  tx = optax.chain(
    optax.add_decayed_weights(config.weight_decay),
    optax.sgd(make_schedule(config, steps_per_epoch), momentum=config.momentum, nesterov=True),
  )
  return TrainState.create(
    apply_fn=functools.partial(cnn.apply, model),
    params=variables['params'],
    batch_stats=variables['batch_stats'],
    ema=jax.tree_util.tree_map(jnp.copy, dict(variables)) if config.ema_decay > 0 else None,
    tx=tx,
  )


def ema_update(ema: Any, new: Any, step: jax.Array, decay: float) -> Any:
  """ema <- d * ema + (1 - d) * new, with d = min(decay, (1 + step) / (10 + step)).

  The step-dependent cap (as in tf.train.ExponentialMovingAverage's num_updates) lets the
  average follow the fast early changes instead of remembering the random initialisation.
  """
  d = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
  return jax.tree_util.tree_map(lambda e, n: d * e + (1.0 - d) * n, ema, new)


# ----------------------------------------------------------------------------- steps


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
  """Per-example softmax cross-entropy against (optionally smoothed) one-hot labels."""
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def train_step(
  state: TrainState,
  images_u8: jax.Array,
  labels: jax.Array,
  rng: jax.Array,
  *,
  max_degrees: float = 0.0,
  max_shift: float = 0.0,
  label_smoothing: float = 0.0,
  ema_decay: float = 0.0,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One SGD step on a uint8 batch: (state, batch, rng) -> (new state, metrics).

  With `ema_decay` > 0 the step also updates `state.ema`, the weights evaluation uses.

  Metrics are sums over the batch (loss_sum, correct, count) so that any number of steps can
  be added up on device, plus `finite`: whether the loss and every gradient are finite.
  """
  rng_aug, rng_dropout = jax.random.split(rng)
  images = input_pipeline.preprocess(
    images_u8, rng_aug, max_degrees=max_degrees, max_shift=max_shift
  )

  def loss_fn(params):
    variables = {'params': params, 'batch_stats': state.batch_stats}
    logits, batch_stats = state.apply_fn(variables, images, train=True, rng=rng_dropout)
    return cross_entropy(logits, labels, label_smoothing).mean(), (logits, batch_stats)

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  if ema_decay > 0:
    new = {'params': new_state.params, 'batch_stats': new_state.batch_stats}
    new_state = new_state.replace(ema=ema_update(state.ema, new, state.step, ema_decay))
  finite = jnp.isfinite(loss) & jnp.all(
    jnp.asarray([jnp.all(jnp.isfinite(g)) for g in jax.tree_util.tree_leaves(grads)])
  )
  return new_state, {
    'loss_sum': loss * labels.shape[0],
    'correct': jnp.sum(jnp.argmax(logits, -1) == labels),
    'count': jnp.asarray(labels.shape[0], jnp.int32),
    'finite': finite,
  }


def zero_sums() -> dict[str, jax.Array]:
  """Running sums carried across the steps of one epoch (first_bad_step -1: none yet)."""
  return {
    'loss_sum': jnp.zeros((), jnp.float32),
    'correct': jnp.zeros((), jnp.int32),
    'count': jnp.zeros((), jnp.int32),
    'first_bad_step': jnp.full((), -1, jnp.int32),
  }


def train_steps(
  state: TrainState,
  sums: dict[str, jax.Array],
  train_images: jax.Array,
  train_labels: jax.Array,
  batch_indices: jax.Array,
  rng: jax.Array,
  *,
  step_fn: Callable,
  unroll: bool,
  batch_sharding: NamedSharding | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
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


def eval_step(
  state: TrainState,
  images_u8: jax.Array,
  labels: jax.Array,
  mask: jax.Array,
  *,
  ema: bool = False,
) -> dict[str, jax.Array]:
  """Loss/correct sums over the masked-in examples of one batch, and every prediction.

  `ema`: evaluate the moving-average weights `state.ema` instead of the trained ones.
  """
  variables = state.ema if ema else {'params': state.params, 'batch_stats': state.batch_stats}
  logits, _ = state.apply_fn(variables, input_pipeline.preprocess(images_u8), train=False)
  preds = jnp.argmax(logits, -1)
  return {
    'loss_sum': jnp.sum(jnp.where(mask, cross_entropy(logits, labels), 0.0)),
    'correct': jnp.sum((preds == labels) & mask),
    'count': jnp.sum(mask.astype(jnp.int32)),
    'preds': preds,
  }


def evaluate(
  eval_fn: Callable, state: TrainState, images: np.ndarray, labels: np.ndarray, batch_size: int
) -> tuple[dict[str, float], np.ndarray]:
  """Evaluates every example (the last batch is padded and masked, none dropped)."""
  n = len(labels)
  padded = math.ceil(n / batch_size) * batch_size
  mask = np.arange(padded) < n
  images = np.concatenate([images, np.zeros((padded - n, *images.shape[1:]), images.dtype)])
  labels = np.concatenate([labels, np.zeros(padded - n, labels.dtype)])
  outs = [
    eval_fn(state, images[i : i + batch_size], labels[i : i + batch_size], mask[i : i + batch_size])
    for i in range(0, padded, batch_size)
  ]
  outs = jax.device_get(outs)
  count = sum(int(o['count']) for o in outs)
  return {
    'loss': sum(float(o['loss_sum']) for o in outs) / count,
    'accuracy': sum(int(o['correct']) for o in outs) / count,
  }, np.concatenate([o['preds'] for o in outs])[:n]


# ----------------------------------------------------------------------------- compiled calls


def default_steps_per_call(steps_per_epoch: int) -> tuple[int, bool]:
  """(steps per jitted call, unroll) for this backend.

  XLA:CPU runs a rolled `lax.scan` body ~20x slower than the same step called on its own: in a
  loop body it leaves most weight-gradient convolutions in a layout only its slow generic
  emitter handles (bench/README.md). A scan of length 1 is lowered the same way, so on the
  CPU the steps are traced directly instead (`unroll`), 8 per call. Accelerators run the whole
  epoch as one rolled scan: no host round-trip per step.
  """
  if jax.default_backend() == 'cpu':
    return min(8, steps_per_epoch), True
  return steps_per_epoch, False


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
  train_calls: dict[int, Callable]  # steps K -> (state, sums, images, labels, idx[K, B], rng).
  make_batches: Callable  # rng -> [steps, batch] indices of one epoch.
  eval_fn: Callable  # What the test accuracy is computed with (the EMA weights when on).
  raw_eval_fn: Callable  # The trained weights.
  compile_seconds: float


def compile_programs(
  config: ml_collections.ConfigDict,
  state: TrainState,
  train_images: jax.Array,
  train_labels: jax.Array,
) -> Programs:
  """Jits and compiles, ahead of time, every call a run makes, over a 'data' mesh of every
  device: batches sharded, state and data set replicated. Auto axes: the step carries one
  sharding constraint on the batch, and XLA's partitioner inserts the all-reduces."""
  num_train = len(train_labels)
  steps_per_epoch = num_train // config.batch_size
  chunk, unroll = default_steps_per_call(steps_per_epoch)
  if config.steps_per_call:
    chunk = min(config.steps_per_call, steps_per_epoch)
  replicated, batch_sharding = data_shardings()
  replicate = multihost.replicator(replicated)
  step_fn = functools.partial(
    train_step,
    max_degrees=config.max_degrees,
    max_shift=config.max_shift,
    label_smoothing=config.label_smoothing,
    ema_decay=config.ema_decay,
  )
  multi_step = jax.jit(
    functools.partial(
      train_steps,
      step_fn=step_fn,
      unroll=unroll,
      batch_sharding=batch_sharding if jax.device_count() > 1 else None,
    ),
    donate_argnums=(0, 1),
  )
  t0 = time.perf_counter()
  sums, rng = replicate(zero_sums()), jax.random.key(0)
  train_calls = {}
  for k in {chunk, steps_per_epoch % chunk} - {0}:
    idx = jax.ShapeDtypeStruct((k, config.batch_size), jnp.int32)
    lowered = multi_step.lower(state, sums, train_images, train_labels, idx, rng)
    train_calls[k] = lowered.compile()
  # Each device holds only its own columns of the [steps, batch] indices: its rows of every
  # batch, gathered on device from the resident data set.
  index_sharding = NamedSharding(replicated.mesh, P(None, 'data'))
  make_batches = jax.jit(epoch_batches, static_argnums=(1, 2), out_shardings=index_sharding)
  return Programs(
    replicated=replicated,
    replicate=replicate,
    chunk=chunk,
    train_calls=train_calls,
    make_batches=make_batches.lower(rng, num_train, config.batch_size).compile(),
    eval_fn=jax.jit(functools.partial(eval_step, ema=config.ema_decay > 0)),
    raw_eval_fn=jax.jit(eval_step),
    compile_seconds=time.perf_counter() - t0,
  )


def train_epoch(
  programs: Programs,
  state: TrainState,
  data: tuple[jax.Array, jax.Array],
  batches: jax.Array,
  rng: jax.Array,
  progress: Callable[[int], Any] = lambda k: None,
  *,
  resume: tuple[int, dict[str, jax.Array]] | None = None,
  stop: Callable[[int], bool] = lambda step: False,
) -> tuple[TrainState, dict[str, jax.Array], int]:
  """Runs one epoch's `batches` through the compiled calls: (state, device sums, steps done).

  `resume` = (steps already done, their sums) continues an epoch stopped part-way. After each
  call, `stop(global step)` may end the epoch early (a preemption); the caller sees fewer steps
  done than `len(batches)`. NonFiniteError if a step's loss or gradient was not finite (the
  state then holds the last good step's weights, which the caller does not save)."""
  done, sums = resume or (0, programs.replicate(zero_sums()))
  first_step = int(state.step) - done
  steps = len(batches)
  while done < steps:
    k = min(programs.chunk, steps - done)
    state, sums = programs.train_calls[k](state, sums, *data, batches[done : done + k], rng)
    progress(k)
    done += k
    if done < steps and stop(first_step + done):
      break
  if jax.device_get(sums['first_bad_step']) >= 0:  # The only host sync of the epoch.
    raise NonFiniteError(f'Non-finite loss or gradient at step {int(sums["first_bad_step"])}')
  return state, sums, done


# Crash-test hook, off by default: with S6JAX_PHASE_MARKERS=1 the trainer writes one line
# 'S6JAX_PHASE <phase> <epoch>' to stderr as each phase begins, so that
# scripts/crash_resume.py can SIGKILL it inside a chosen phase. Unset, it costs one `if`.
_PHASE_MARKERS = os.environ.get('S6JAX_PHASE_MARKERS') == '1'


def phase_marker(phase: str, epoch: int) -> None:
  """Announces `phase` of `epoch` on stderr when S6JAX_PHASE_MARKERS=1; otherwise nothing."""
  if _PHASE_MARKERS:
    os.write(2, f'S6JAX_PHASE {phase} {epoch}\n'.encode())


# Preemption-test hook, off by default: S6JAX_SIGTERM_AT_STEP=N makes the process send itself
# SIGTERM when its training reaches global step N, as a cloud scheduler would.
_SIGTERM_AT_STEP = int(os.environ.get('S6JAX_SIGTERM_AT_STEP', '-1'))


def stop_requested(step: int) -> bool:
  """Whether to stop at `step` (multihost.preempted), after the preemption-test hook."""
  if step == _SIGTERM_AT_STEP:
    os.kill(os.getpid(), signal.SIGTERM)
    # A real step gives JAX's preemption notice time to reach every process before the run
    # ends; the tests' steps take milliseconds, and their whole run can end first.
    time.sleep(2)
  return multihost.preempted()


# ----------------------------------------------------------------------------- the run


def fit_epoch(config, programs, state, train_data, test, epoch, rngs, schedule, resume=None):
  """Trains epoch `epoch` (a progress bar on a terminal) and scores it on the test set:
  (new state, its metrics.jsonl record). `resume`: train_epoch's, for an epoch stopped
  part-way. Preempted (after saving that step's checkpoint) if SIGTERM stops it part-way."""
  from tqdm import tqdm  # Lazy: only the interactive trainer needs it.

  phase_marker('train', epoch)
  perm_rng, step_rng = rngs
  steps = len(train_data[1]) // config.batch_size
  t0 = time.perf_counter()
  batches = programs.make_batches(jax.random.fold_in(perm_rng, epoch))
  desc = f'epoch {epoch}/{config.num_epochs}'
  disable = not sys.stderr.isatty() or not multihost.is_primary()
  with tqdm(total=steps, desc=desc, unit='step', leave=False, disable=disable) as bar:
    bar.update(resume[0] if resume else 0)
    state, sums, done = train_epoch(
      programs, state, train_data, batches, step_rng, bar.update,
      resume=resume, stop=stop_requested,
    )  # fmt: skip
  if done < steps:
    raise Preempted(state, sums, epoch, done)
  sums = jax.device_get(sums)
  seconds = time.perf_counter() - t0
  phase_marker('eval', epoch)
  score = functools.partial(
    evaluate, state=state, images=test.images, labels=test.labels, batch_size=config.eval_batch_size
  )
  record = {
    'epoch': epoch,
    'step': int(state.step),
    'train_loss': float(sums['loss_sum'] / sums['count']),
    'train_accuracy': float(sums['correct'] / sums['count']),
    **{f'test_{k}': v for k, v in score(programs.eval_fn)[0].items()},
    'learning_rate': float(schedule(int(state.step) - 1)),
    'train_seconds': seconds,
    'images_per_second': steps * config.batch_size / seconds,
  }
  if config.ema_decay > 0:  # Score the trained weights too: what the average adds is visible.
    record['test_accuracy_raw'] = score(programs.raw_eval_fn)[0]['accuracy']
  return state, record


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains and evaluates per `config`, checkpointing to and resuming from `workdir`.

  Args:
    config: a configs/*.py ConfigDict.
    workdir: where checkpoints, metrics, TensorBoard events, plots and summary.json go.

  Returns:
    The summary dict also written to workdir/summary.json.
  """
  preflight.validate_config(config)
  if not multihost.is_primary():  # Process 0 creates, checks and locks the workdir.
    multihost.sync('workdir ready')
    return _train_and_evaluate(config, preflight.workdir_path(workdir))
  workdir = preflight.prepare_workdir(workdir)
  with preflight.workdir_lock(workdir):
    multihost.sync('workdir ready')
    return _train_and_evaluate(config, workdir)


def end_epoch(config, managers, state: TrainState, record: dict[str, Any], log) -> None:
  """Saves the epoch's checkpoint, then its metrics line (the order a resume relies on),
  drops a mid-epoch checkpoint this one supersedes, and logs the line."""
  manager, preempted = managers
  epoch = record['epoch']
  phase_marker('save', epoch)
  checkpointing.save_checkpoint(manager, epoch, state, record, checkpointing.run_settings(config))
  phase_marker('saved', epoch)
  log.write(record)
  for step in preempted.all_steps():
    with checkpointing.quiet_orbax():
      preempted.delete(step)
  logging.info(
    'epoch %2d  train loss %.4f acc %.4f  test loss %.4f acc %.4f  lr %.4f  %.1f s (%.0f img/s)',
    *(record[k] for k in ('epoch', 'train_loss', 'train_accuracy', 'test_loss')),
    *(record[k] for k in ('test_accuracy', 'learning_rate', 'train_seconds')),
    record['images_per_second'],
  )


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """train_and_evaluate, once the config is checked and the workdir is this run's alone."""
  data = input_pipeline.get_datasets(config.data_dir, config.data_url, config.download_dir)
  preflight.validate_data(config, data)
  if multihost.is_primary():
    metrics.write_json(os.path.join(workdir, 'config.json'), config.to_dict())
  train, test = data['train'], data['test']
  steps_per_epoch = len(train.labels) // config.batch_size
  init_rng, perm_rng, step_rng = jax.random.split(jax.random.key(config.seed), 3)
  state = create_train_state(init_rng, config, steps_per_epoch)
  num_params = cnn.count_params(state.params)
  model_summary = cnn.format_summary(cnn.summary(cnn.build(config.arch, config.dropout_rate)))
  logging.info('Model %r, %s parameters:\n%s', config.arch, f'{num_params:,}', model_summary)

  replicate = multihost.replicator(data_shardings()[0])
  manager, state, start_epoch, log = checkpointing.restore_run(workdir, config, replicate(state))
  phase_marker('resumed', start_epoch)
  train_data = replicate((train.images, train.labels))
  programs = compile_programs(config, state, *train_data)
  preempted, state, resume = checkpointing.restore_mid_epoch(
    workdir, config, state, programs.replicate(zero_sums()), start_epoch + 1
  )
  logging.info(
    'Compiled %s-step train calls in %.1f s (backend %s, %d device(s)).',
    sorted(programs.train_calls),
    programs.compile_seconds,
    jax.default_backend(),
    jax.device_count(),
  )
  schedule = make_schedule(config, steps_per_epoch)  # For logging the LR each epoch used last.
  for epoch in range(start_epoch + 1, config.num_epochs + 1):
    try:
      state, record = fit_epoch(
        config, programs, state, train_data, test, epoch, (perm_rng, step_rng), schedule, resume
      )
    except NonFiniteError as e:
      raise NonFiniteError(
        f'{e} (epoch {epoch}); training stopped. The last good checkpoint (epoch {epoch - 1}) '
        f'is kept in {manager.directory}.'
      ) from None
    except Preempted as stopped:
      state, sums, epoch, done = stopped.args
      checkpointing.save_preempted(
        preempted, state, sums, epoch, done, checkpointing.run_settings(config)
      )
      raise Preempted(
        f'stopped by SIGTERM after step {done} of {steps_per_epoch} in epoch {epoch}, and saved '
        f'there ({preempted.directory}); rerun the same command to resume from that step.'
      ) from None
    resume = None
    end_epoch(config, (manager, preempted), state, record, log)
    if epoch < config.num_epochs and stop_requested(record['step']):
      raise Preempted(f'stopped by SIGTERM after epoch {epoch}, its checkpoint saved; rerun the '
                      'same command to resume.')  # fmt: skip
  log.close()
  phase_marker('final', config.num_epochs)
  return finish(workdir, config, state, programs, log.history, test, num_params)


def finish(workdir, config, state, programs, history, test, num_params) -> dict[str, Any]:
  """Evaluates the final weights, writes summary.json and the plots; returns the summary."""
  test_metrics, preds = evaluate(
    programs.eval_fn, state, test.images, test.labels, config.eval_batch_size
  )
  summary = metrics.summarize(
    history,
    test_metrics['accuracy'],
    params=num_params,
    arch=config.arch,
    seed=config.seed,
    compile_seconds=programs.compile_seconds,
    device_kind=jax.devices()[0].device_kind,
    device_count=jax.device_count(),
    config=config.to_dict(),
  )
  if not multihost.is_primary():
    return summary
  metrics.write_json(os.path.join(workdir, 'summary.json'), summary)
  if config.plots:
    plots.plot_curves(history, os.path.join(workdir, 'curves.png'))
    path = os.path.join(workdir, 'misclassified.png')
    plots.plot_misclassified(test.images, test.labels, preds, path)
  logging.info(
    'Done: final test accuracy %.4f, best %.4f; summary in %s.',
    summary['final_test_accuracy'],
    summary['best_test_accuracy'],
    workdir,
  )
  return summary


# ----------------------------------------------------------------------------- CLI


def exit_on_interrupt(signum, frame) -> None:
  """Ctrl-C ends the run at once, as a kill would (every write is atomic, so a rerun resumes
  from the last checkpoint). A KeyboardInterrupt raised inside compilation can be lost, and
  the interpreter's teardown with XLA's threads still running can crash."""
  del signum, frame
  os.write(2, b'error: interrupted; rerun the same command to resume.\n')
  os._exit(130)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  signal.signal(signal.SIGINT, exit_on_interrupt)
  try:
    config = preflight.load_config(FLAGS)
    several = FLAGS.coordinator_address or FLAGS.distributed == 'auto'
    auto = 1 if several else multihost.default_cpu_devices(config.batch_size)
    # Before anything starts a JAX backend; unused when an accelerator is the default.
    jax.config.update('jax_num_cpu_devices', FLAGS.cpu_devices or auto)
    multihost.start(
      FLAGS.distributed, FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id
    )
    train_and_evaluate(config, FLAGS.workdir)
  except Preempted as e:
    multihost.end(str(e), multihost.EXIT_PREEMPTED)
  except UserError as e:
    multihost.end(f'error: {e}', 1)
  except OSError as e:  # A full disk, a folder gone: every write is atomic, nothing is lost.
    where = f' ({e.filename})' if e.filename else ''
    multihost.end(f'error: {e.strerror or e}{where}; fix it and rerun to resume.', 1)
  except Exception as e:
    if jax.process_count() == 1:
      raise  # A bug: its traceback.
    multihost.end(multihost.describe(e), 1)


def define_flags() -> None:
  """The command line: --config (a configs/*.py file, any field overridable), --workdir, and
  the multi-host and CPU-device settings."""
  from ml_collections import config_flags

  try:  # Without --config, the --config.<field> overrides are applied here.
    config_flags.DEFINE_config_file(
      'config', 'configs/mnist.py', 'Training config file (see configs/).', lock_config=True
    )
  except (KeyError, AttributeError) as e:
    sys.exit(preflight.config_error(e, sys.argv))
  flags.DEFINE_string('workdir', None, 'Where checkpoints, metrics and plots are written.')
  flags.DEFINE_enum(
    'distributed',
    'off',
    ['off', 'auto'],
    'auto: one process of a multi-process job whose cluster JAX detects (Cloud TPU VMs, SLURM, '
    'Kubernetes); off: a single process unless --coordinator_address is given.',
  )
  flags.DEFINE_string('coordinator_address', None, 'Multi-process: host:port of process 0.')
  flags.DEFINE_integer('num_processes', None, 'Multi-process: number of processes.')
  flags.DEFINE_integer('process_id', None, 'Multi-process: index of this process.')
  flags.DEFINE_integer(
    'cpu_devices',
    0,
    'CPU only: split the host into this many JAX devices, the batch sharded over them as over '
    'GPUs. 0: one per core (at most 8, dividing the batch); 1 in a multi-process job.',
    lower_bound=0,
  )
  flags.mark_flags_as_required(['workdir'])


FLAGS = flags.FLAGS

if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=functools.partial(preflight.parse_flags, FLAGS))
