"""Trains the MNIST CNN with optax: one pure, jitted train step, data and augmentation on device.

  python train.py --config=configs/mnist.py --workdir=/tmp/mnist [--config.data_dir=IDX_FOLDER]

`train_and_evaluate(config, workdir)` does the work and never reads FLAGS. Per epoch it writes
workdir/metrics.jsonl, TensorBoard events (workdir/tb) and an orbax checkpoint
(workdir/checkpoints, the newest `checkpoints_to_keep`); rerunning with the same workdir resumes
after the last finished epoch. At the end: workdir/summary.json and PNG plots. Elsewhere:
compiled.py (devices, compilation), optim.py (optimiser, schedule, weight averages),
checkpointing.py, metrics.py, plots.py, input_pipeline.py (the data), augment.py (on device),
preflight.py (checks before training), cli.py, nets/.
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import app, logging
from flax import struct
from flax.training import train_state

import augment
import checkpointing
import cli
import compiled
import hooks
import input_pipeline
import metrics
import multihost
import optim
import plots
import preflight
from errors import NonFiniteError, Preempted
from nets import cnn, cnn_backprop


class TrainState(train_state.TrainState):
  batch_stats: Any  # BatchNorm running averages, updated by every train step.
  # Exponential moving average of {'params', 'batch_stats'} when config.ema_decay > 0, which
  # evaluation then uses; None when it is 0 (nothing carried, saved or checksummed).
  ema: Any
  # cnn.apply bound to the model: (variables, images, *, train, rng) -> (logits, batch_stats).
  apply_fn: Callable = struct.field(pytree_node=False)


# ----------------------------------------------------------------------------- state


def create_train_state(
  rng: jax.Array, config: ml_collections.ConfigDict, steps_per_epoch: int
) -> TrainState:
  """A fresh TrainState: initialised CNN, SGD + Nesterov + weight decay on a one-cycle LR."""
  model = cnn.build(config.arch, config.dropout_rate)
  variables = cnn.init(model, rng)
  return TrainState.create(
    apply_fn=functools.partial(cnn.apply, model),
    params=variables['params'],
    batch_stats=variables['batch_stats'],
    ema=jax.tree_util.tree_map(jnp.copy, dict(variables)) if config.ema_decay > 0 else None,
    tx=optim.make_optimizer(config, steps_per_epoch),
  )


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
  jitter: dict[str, float] | None = None,
  clean_from_step: int = 0,
  label_smoothing: float = 0.0,
  ema_decay: float = 0.0,
  swa_from_step: int | None = None,
  gradients: str = 'autodiff',
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One SGD step on a uint8 batch: (state, batch, rng) -> (new state, metrics).

  `jitter`: augment.augment's keyword arguments (none: no augmentation), not applied
  from step `clean_from_step` on (0: every step). With `ema_decay` > 0 the step also updates
  `state.ema`, the weights evaluation uses: a moving average, the equal mean of every step's
  weights from step `swa_from_step` on if that is set (ema_update).

  Metrics are sums over the batch (loss_sum, correct, count) so that any number of steps can
  be added up on device, plus `finite`: whether the loss and every gradient are finite.
  """
  rng_aug, rng_dropout = jax.random.split(rng)
  aug = functools.partial(augment.preprocess, images_u8, rng_aug, **(jitter or {}))
  plain = functools.partial(augment.preprocess, images_u8)  # The clean last epochs'.
  images = jax.lax.cond(state.step < clean_from_step, aug, plain) if clean_from_step else aug()

  def loss_fn(params):
    variables = {'params': params, 'batch_stats': state.batch_stats}
    logits, batch_stats = state.apply_fn(variables, images, train=True, rng=rng_dropout)
    return cross_entropy(logits, labels, label_smoothing).mean(), (logits, batch_stats)

  hand = functools.partial(cnn_backprop.value_and_grad, state, images, labels, rng_dropout)
  autodiff = jax.value_and_grad(loss_fn, has_aux=True)
  value_and_grad = hand(label_smoothing) if gradients == 'hand' else autodiff
  (loss, (logits, batch_stats)), grads = value_and_grad(state.params)
  new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  if ema_decay > 0:
    new = {'params': new_state.params, 'batch_stats': new_state.batch_stats}
    ema = optim.ema_update(state.ema, new, state.step, ema_decay, swa_from_step)
    new_state = new_state.replace(ema=ema)
  leaves_finite = [jnp.all(jnp.isfinite(g)) for g in jax.tree_util.tree_leaves(grads)]
  finite = jnp.isfinite(loss) & jnp.all(jnp.asarray(leaves_finite))
  return new_state, {
    'loss_sum': loss * labels.shape[0],
    'correct': jnp.sum(jnp.argmax(logits, -1) == labels),
    'count': jnp.asarray(labels.shape[0], jnp.int32),
    'finite': finite,
  }


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
  logits, _ = state.apply_fn(variables, augment.preprocess(images_u8), train=False)
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
  outs = jax.device_get([
    eval_fn(state, images[i : i + batch_size], labels[i : i + batch_size], mask[i : i + batch_size])
    for i in range(0, padded, batch_size)
  ])  # fmt: skip
  count = sum(int(o['count']) for o in outs)
  return {
    'loss': sum(float(o['loss_sum']) for o in outs) / count,
    'accuracy': sum(int(o['correct']) for o in outs) / count,
  }, np.concatenate([o['preds'] for o in outs])[:n]


def step_function(config: ml_collections.ConfigDict, num_train: int) -> Callable:
  """`train_step` with `config`'s options bound: (state, images, labels, rng) -> ..."""
  fields = {k: config[k] for k in ('label_smoothing', 'ema_decay', 'gradients')}
  jitter = {k: config[k] for k in augment.FIELDS}
  steps = num_train // config.batch_size  # The last clean_epochs are not augmented.
  clean = config.clean_epochs and (config.num_epochs - config.clean_epochs) * steps
  swa = optim.swa_start_step(config, steps)
  return functools.partial(
    train_step, jitter=jitter, clean_from_step=clean, swa_from_step=swa, **fields
  )


def compile_programs(
  config: ml_collections.ConfigDict, state: TrainState, train_images, train_labels, **options
) -> compiled.Programs:
  """Every compiled call of a run of `config` (compiled.compile_programs) on `train_step`."""
  step_fn = step_function(config, len(train_labels))
  return compiled.compile_programs(
    config, state, train_images, train_labels, step_fn, eval_step, **options
  )


# ----------------------------------------------------------------------------- the run


def fit_epoch(config, programs, state, train_data, test, epoch, rngs, schedule, resume=None):
  """Trains epoch `epoch` (a progress bar on a terminal) and scores it on the test set:
  (new state, its metrics.jsonl record). `resume`: train_epoch's, for an epoch stopped
  part-way. Preempted (after saving that step's checkpoint) if SIGTERM stops it part-way."""
  hooks.phase_marker('train', epoch)
  perm_rng, step_rng = rngs
  steps = len(train_data[1]) // config.batch_size
  t0 = time.perf_counter()
  batches = programs.make_batches(jax.random.fold_in(perm_rng, epoch))
  with metrics.progress_bar(steps, f'epoch {epoch}/{config.num_epochs}', resume) as bar:
    state, sums, done = compiled.train_epoch(
      programs, state, train_data, batches, step_rng, bar.update,
      resume=resume, stop=hooks.stop_requested, chunk=programs.chunk_for(epoch),
    )  # fmt: skip
  if done < steps:
    raise Preempted(state, sums, epoch, done)
  sums = jax.device_get(sums)
  seconds = time.perf_counter() - t0
  hooks.phase_marker('eval', epoch)
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
  """Trains and evaluates `config` (a configs/*.py ConfigDict) in `workdir` (checkpoints,
  metrics, TensorBoard events, plots, summary.json), resuming from what is there; returns the
  summary dict also written to workdir/summary.json."""
  preflight.validate_config(config)
  if not multihost.is_primary():  # Process 0 creates, checks and locks the workdir.
    multihost.sync('workdir ready')
    return _train_and_evaluate(config, preflight.workdir_path(workdir))
  workdir = preflight.prepare_workdir(workdir)
  with preflight.workdir_lock(workdir):
    multihost.sync('workdir ready')
    return _train_and_evaluate(config, workdir)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """train_and_evaluate, once the config is checked and the workdir is this run's alone."""
  if finished := checkpointing.finished_run(workdir, config):  # Nothing to train or compile.
    return finished
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

  replicate = multihost.replicator(compiled.data_shardings()[0])
  manager, state, start_epoch, log = checkpointing.restore_run(workdir, config, replicate(state))
  hooks.phase_marker('resumed', start_epoch)
  train_data = replicate((train.images, train.labels))
  epochs = range(start_epoch + 1, config.num_epochs + 1)
  programs = compile_programs(config, state, *train_data, epochs=epochs)
  run = checkpointing.run_settings(config)
  preempted, state, resume = checkpointing.restore_mid_epoch(
    workdir, config, state, programs.replicate(compiled.zero_sums()), start_epoch + 1
  )
  logging.info(compiled.describe(programs))
  schedule = optim.make_schedule(
    config, steps_per_epoch
  )  # For logging the LR each epoch used last.
  for epoch in epochs:
    try:
      state, record = fit_epoch(
        config, programs, state, train_data, test, epoch, (perm_rng, step_rng), schedule, resume
      )
    except NonFiniteError as e:
      advice = preflight.non_finite_advice(config, epoch, manager.directory, epoch > 1)
      raise NonFiniteError(f'{e} (epoch {epoch}); training stopped. {advice}') from None
    except Preempted as stopped:
      state, sums, epoch, done = stopped.args
      checkpointing.save_preempted(preempted, state, sums, epoch, done, run)
      raise Preempted(
        f'stopped by SIGTERM after step {done} of {steps_per_epoch} in epoch {epoch}, and saved '
        f'there ({preempted.directory}); rerun the same command to resume from that step.'
      ) from None
    resume = None
    checkpointing.commit_epoch((manager, preempted), state, record, run, log)
    logging.info(metrics.epoch_line(record))
    if epoch < config.num_epochs and hooks.stop_requested(record['step']):
      raise Preempted(f'stopped by SIGTERM after epoch {epoch}, its checkpoint saved; rerun the '
                      'same command to resume.')  # fmt: skip
  log.close()
  hooks.phase_marker('final', config.num_epochs)
  return finish(workdir, config, state, programs, log.history, test, num_params)


def finish(workdir, config, state, programs, history, test, num_params) -> dict[str, Any]:
  """Evaluates the final weights, writes summary.json and the plots; returns the summary."""
  final, preds = evaluate(programs.eval_fn, state, test.images, test.labels, config.eval_batch_size)
  summary = metrics.summarize(
    history, final['accuracy'], params=num_params, arch=config.arch, seed=config.seed,
    compile_seconds=programs.compile_seconds, device_kind=jax.devices()[0].device_kind,
    device_count=jax.device_count(), cpu_model=multihost.cpu_model(),
    cpu_cores=multihost.usable_cores(), test_images=len(test.labels), config=config.to_dict(),
  )  # fmt: skip
  if multihost.is_primary():
    metrics.write_json(os.path.join(workdir, 'summary.json'), summary)
    if config.plots:
      plots.plot_run(workdir, history, test.images, test.labels, preds)
    accs = summary['final_test_accuracy'], summary['best_test_accuracy']
    logging.info('Done: final test accuracy %.4f, best %.4f; summary in %s.', *accs, workdir)
  return summary


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  cli.run(train_and_evaluate)


if __name__ == '__main__':
  cli.define_flags()
  app.run(main, flags_parser=cli.parse_flags)
