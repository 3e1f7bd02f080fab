"""Trains the MNIST CNN with optax: one pure, jitted train step, data and augmentation on device.

  python train.py --config=configs/mnist.py --workdir=/tmp/mnist [--config.data_dir=../shared/mnist]

`train_and_evaluate(config, workdir)` does the work and never reads FLAGS. Per epoch it writes
workdir/metrics.jsonl, TensorBoard events (workdir/tb) and an orbax checkpoint
(workdir/checkpoints, the newest `checkpoints_to_keep`); rerunning with the same workdir resumes
after the last finished epoch. At the end: workdir/summary.json and PNG plots.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import app, flags, logging
from flax.training import train_state
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import input_pipeline
from nets import cnn

TARGET_ACCURACY = 0.994  # The mission's bar; summary.json reports the first epoch at or above it.


class TrainState(train_state.TrainState):
  batch_stats: Any  # BatchNorm running averages, updated by every train step.
  # Exponential moving average of {'params', 'batch_stats'} when config.ema_decay > 0, which
  # evaluation then uses; None when it is 0 (nothing carried, saved or checksummed).
  ema: Any


class ConfigError(ValueError):
  """A config field holds a value training cannot use."""


class NonFiniteError(FloatingPointError):
  """The loss or a gradient became NaN/Inf; the last good checkpoint is kept."""


# ----------------------------------------------------------------------------- config


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Refuses out-of-range values before anything is compiled; each message names the field."""
  try:
    config.get('num_epochs')
  except OSError as e:  # config_flags defers a --config file's load error to the first access.
    raise ConfigError(f'the --config file could not be loaded ({e.__cause__ or e}).') from None
  checks = [
    ('num_epochs', config.num_epochs >= 1, 'must be >= 1'),
    ('batch_size', config.batch_size >= 1, 'must be >= 1'),
    ('eval_batch_size', config.eval_batch_size >= 1, 'must be >= 1'),
    ('learning_rate', 0 < config.learning_rate < math.inf, 'must be a finite number > 0'),
    ('warmup_fraction', 0 <= config.warmup_fraction < 1, 'must be in [0, 1)'),
    ('momentum', 0 <= config.momentum < 1, 'must be in [0, 1)'),
    ('weight_decay', 0 <= config.weight_decay < math.inf, 'must be a finite number >= 0'),
    ('label_smoothing', 0 <= config.label_smoothing < 1, 'must be in [0, 1)'),
    ('ema_decay', 0 <= config.ema_decay < 1, 'must be in [0, 1) (0 = off)'),
    ('dropout_rate', 0 <= config.dropout_rate < 1, 'must be in [0, 1)'),
    ('max_degrees', 0 <= config.max_degrees <= 180, 'must be in [0, 180]'),
    ('max_shift', 0 <= config.max_shift <= 14, 'must be in [0, 14] pixels'),
    ('steps_per_call', config.steps_per_call >= 0, 'must be >= 0 (0 = auto)'),
    ('checkpoints_to_keep', config.checkpoints_to_keep >= 1, 'must be >= 1'),
    ('arch', config.arch in cnn.ARCHITECTURES, f'must be one of {sorted(cnn.ARCHITECTURES)}'),
  ]
  for field, ok, requirement in checks:
    if not ok:
      raise ConfigError(f'config.{field}={config[field]!r} {requirement}.')
  if config.data_dir and not os.path.isdir(config.data_dir):
    raise ConfigError(f'config.data_dir={config.data_dir!r} is not an existing folder.')
  devices = jax.device_count()
  for field in ('batch_size', 'eval_batch_size'):
    if config[field] % devices:
      raise ConfigError(f'config.{field}={config[field]} is not divisible by {devices} devices.')


def prepare_workdir(workdir: str) -> str:
  """Creates `workdir` and proves it is writable; returns its absolute path."""
  workdir = os.path.abspath(workdir)
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, '.write_test')
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    raise ConfigError(f'workdir {workdir!r} is not writable ({e.strerror or e}).') from e
  return workdir


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
    apply_fn=model.apply,
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
    logits, updates = state.apply_fn(
      variables, images, train=True, rngs={'dropout': rng_dropout}, mutable=['batch_stats']
    )
    loss = cross_entropy(logits, labels, label_smoothing).mean()
    return loss, (logits, updates['batch_stats'])

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  if ema_decay > 0:
    new = {'params': new_state.params, 'batch_stats': new_state.batch_stats}
    new_state = new_state.replace(ema=ema_update(state.ema, new, state.step, ema_decay))
  finite = jnp.isfinite(loss) & jnp.all(
    jnp.asarray([jnp.all(jnp.isfinite(g)) for g in jax.tree_util.tree_leaves(grads)])
  )
  metrics = {
    'loss_sum': loss * labels.shape[0],
    'correct': jnp.sum(jnp.argmax(logits, -1) == labels),
    'count': jnp.asarray(labels.shape[0], jnp.int32),
    'finite': finite,
  }
  return new_state, metrics


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
  logits = state.apply_fn(variables, input_pipeline.preprocess(images_u8), train=False)
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
  metrics = {
    'loss': sum(float(o['loss_sum']) for o in outs) / count,
    'accuracy': sum(int(o['correct']) for o in outs) / count,
  }
  return metrics, np.concatenate([o['preds'] for o in outs])[:n]


# ----------------------------------------------------------------------------- checkpoints


class CheckpointError(ConfigError):
  """workdir/checkpoints holds checkpoints, but none of them passes its checks."""


@contextlib.contextmanager
def _quiet_orbax(level: int = logging.WARNING):
  """Orbax logs dozens of INFO lines per save/restore through absl; show `level` and up only."""
  logger = logging.get_absl_logger()
  old_level = logger.level
  # absl's level constants (WARNING = -1) are not the `logging` module's (WARNING = 30).
  logger.setLevel(logging.converter.absl_to_standard(level))
  try:
    yield
  finally:
    logger.setLevel(old_level)


def checkpoint_manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  """Orbax manager for workdir/checkpoints, keeping the newest `keep` epochs.

  A kill during a save leaves only an uncommitted temp folder (orbax renames it into place
  when complete); `cleanup_tmp_directories` removes such leftovers on the next start.
  """
  options = ocp.CheckpointManagerOptions(
    max_to_keep=keep, create=True, enable_async_checkpointing=False, cleanup_tmp_directories=True
  )
  return ocp.CheckpointManager(os.path.join(workdir, 'checkpoints'), options=options)


def leaf_digests(state: Any) -> dict[str, str]:
  """sha256 of every leaf (dtype, shape and bytes), keyed by its path in the tree."""

  def host_value(x):
    x = jnp.asarray(x)  # A Python-int field is saved and restored as a JAX (int32) array.
    if not x.is_fully_addressable:  # Multi-host: the state is replicated, so any shard is all.
      x = x.addressable_data(0)
    return np.ascontiguousarray(jax.device_get(x))

  digests = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    leaf = host_value(leaf)
    h = hashlib.sha256(f'{leaf.dtype.str}{leaf.shape}'.encode())
    h.update(leaf.tobytes())
    digests[jax.tree_util.keystr(path)] = h.hexdigest()
  return digests


def save_checkpoint(
  manager: ocp.CheckpointManager, epoch: int, state: TrainState, record: dict[str, Any]
) -> None:
  """Saves `state` as the checkpoint of `epoch`, with its leaf checksums and metrics record.

  Both go into the step's orbax metadata, which is written before the step is committed, so
  a committed checkpoint always carries them. Orbax's own files have no checksum: flipped
  bytes in an array file can load silently as different numbers, and another checkpoint's
  array files load as if they were this one's (tests/reliability_test.py).
  """
  metadata = {'leaf_sha256': leaf_digests(state), 'metrics_record': record}
  with _quiet_orbax():
    saved = manager.save(epoch, args=ocp.args.StandardSave(state), custom_metadata=metadata)
    manager.wait_until_finished()
  if not saved:  # Orbax skips steps <= its latest; set_aside_newer_checkpoints prevents that.
    raise CheckpointError(f'orbax did not save the checkpoint of epoch {epoch}.')


def _verify(manager: ocp.CheckpointManager, step: int, restored: TrainState) -> str | None:
  """None if `restored` matches the checksums saved with `step`, else what is wrong."""
  with _quiet_orbax(logging.FATAL):  # Orbax logs an unreadable file whole; we report it below.
    metadata = manager.metadata(step)
  custom = metadata.custom_metadata
  if not isinstance(custom, dict) or 'leaf_sha256' not in custom:
    # Orbax reads a missing or unparsable metadata file as empty; a readable one has times.
    if metadata.init_timestamp_nsecs is None or custom:
      return 'its orbax metadata file (_CHECKPOINT_METADATA, with the checksums) is unreadable'
    logging.warning(
      'Checkpoint of epoch %d has no checksums (saved before they were added); '
      'loading it unverified.',
      step,
    )
    return None
  expected, actual = custom['leaf_sha256'], leaf_digests(restored)
  bad = sorted(k for k in expected.keys() | actual.keys() if expected.get(k) != actual.get(k))
  if bad:
    return f'{len(bad)} array(s) do not match their saved checksum: {", ".join(bad[:3])}'
  return None


def restore_latest(manager: ocp.CheckpointManager, target: TrainState) -> tuple[TrainState, int]:
  """Restores the newest checkpoint that loads and matches its checksums; (state, epoch).

  Returns (target, 0) when there is no checkpoint. A checkpoint that fails is reported and
  skipped in favour of the one before it; CheckpointError if every one fails.
  """
  # As arrays, so that a Python-int `step` restores with the int32 dtype it was saved (and
  # checksummed) with.
  abstract = jax.tree_util.tree_map(
    lambda x: ocp.utils.to_shape_dtype_struct(jnp.asarray(x)), target
  )
  manager.reload()  # Another process (or the user) may have changed the folder.
  steps = sorted(manager.all_steps(), reverse=True)
  problems = []
  for step in steps:
    try:
      with _quiet_orbax():
        restored = manager.restore(step, args=ocp.args.StandardRestore(abstract))
        problem = _verify(manager, step, restored)
    except Exception as e:  # Orbax/TensorStore raise many types for unreadable files.
      problem = f'it does not load ({type(e).__name__}: {str(e).splitlines()[0][:200]})'
    if problem:
      logging.warning(
        'Checkpoint of epoch %d is corrupt: %s; trying the one before.', step, problem
      )
      problems.append(f'epoch {step}: {problem}')
      continue
    # Orbax restores strongly typed arrays; give back the weak types of Python-scalar fields
    # (the step), so a resumed run calls the very program an uninterrupted one compiled.
    restored = jax.tree_util.tree_map(
      lambda r, t: jnp.asarray(r.item()) if getattr(jnp.asarray(t), 'weak_type', False) else r,
      restored,
      target,
    )
    if step != steps[0]:
      logging.warning('Resuming from the checkpoint of epoch %d, the newest good one.', step)
    else:
      logging.info('Resuming from the checkpoint of epoch %d.', step)
    return restored, step
  if steps:
    raise CheckpointError(
      f'no usable checkpoint in {manager.directory}: ' + '; '.join(problems) + '. Move the '
      'folder away to start afresh.'
    )
  return target, 0


def set_aside_newer_checkpoints(manager: ocp.CheckpointManager, epoch: int, workdir: str) -> None:
  """Moves checkpoints newer than `epoch` (they failed restore_latest's checks) out of the way.

  They go to workdir/rejected_checkpoints/ for inspection; left in place, they would stop
  orbax from saving those epochs again.
  """
  newer = [s for s in manager.all_steps() if s > epoch]
  if not newer:
    return
  rejected = os.path.join(workdir, 'rejected_checkpoints')
  os.makedirs(rejected, exist_ok=True)
  for step in newer:
    dest = os.path.join(rejected, f'{step}-{time.strftime("%Y%m%d-%H%M%S")}')
    os.replace(os.path.join(manager.directory, str(step)), dest)
    logging.warning('Moved the rejected checkpoint of epoch %d to %s.', step, dest)
  manager.reload()


def checkpoint_record(manager: ocp.CheckpointManager, epoch: int) -> dict[str, Any] | None:
  """The metrics.jsonl record saved with the checkpoint of `epoch` (None if it has none)."""
  custom = manager.metadata(epoch).custom_metadata
  return custom.get('metrics_record') if isinstance(custom, dict) else None


# Crash-test hook, off by default: with S6JAX_PHASE_MARKERS=1 the trainer writes one line
# 'S6JAX_PHASE <phase> <epoch>' to stderr as each phase begins, so that
# scripts/crash_resume.py can SIGKILL it inside a chosen phase. Unset, it costs one `if`.
_PHASE_MARKERS = os.environ.get('S6JAX_PHASE_MARKERS') == '1'


def phase_marker(phase: str, epoch: int) -> None:
  """Announces `phase` of `epoch` on stderr when S6JAX_PHASE_MARKERS=1; otherwise nothing."""
  if _PHASE_MARKERS:
    os.write(2, f'S6JAX_PHASE {phase} {epoch}\n'.encode())


# ----------------------------------------------------------------------------- logging


class MetricsLog:
  """Writes one JSON line per epoch to workdir/metrics.jsonl and the same to TensorBoard."""

  def __init__(self, workdir: str, resume_epoch: int):
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self.history = []
    if os.path.exists(self.path):
      with open(self.path) as f:
        lines = [json.loads(line) for line in f if line.strip()]
      # Epochs after the restored checkpoint are re-run, so their old lines are dropped.
      self.history = [r for r in lines if r['epoch'] <= resume_epoch]
    self._rewrite()
    from tensorboardX import SummaryWriter  # Lazy: only the trainer needs it.

    self.writer = SummaryWriter(os.path.join(workdir, 'tb'), purge_step=resume_epoch + 1)

  def _rewrite(self):
    tmp = self.path + '.tmp'
    with open(tmp, 'w') as f:
      f.writelines(json.dumps(r) + '\n' for r in self.history)
    os.replace(tmp, self.path)

  def write(self, record: dict[str, Any]) -> None:
    self.history.append(record)
    with open(self.path, 'a') as f:
      f.write(json.dumps(record) + '\n')
    for key, value in record.items():
      if key != 'epoch' and isinstance(value, int | float):
        self.writer.add_scalar(key, value, record['epoch'])
    self.writer.flush()

  def close(self):
    self.writer.close()


def write_json(path: str, obj: Any) -> None:
  """Writes JSON atomically (temp file + rename)."""
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=2)
  os.replace(tmp, path)


# ----------------------------------------------------------------------------- main loop


def default_steps_per_call(steps_per_epoch: int) -> tuple[int, bool]:
  """(steps per jitted call, unroll) for this backend.

  XLA:CPU runs a rolled `lax.scan` body ~20x slower than the same step called on its own
  (../shared/MEASURED.md): inside a loop body it leaves most weight-gradient convolutions in
  a layout only its slow generic emitter handles (bench/README.md). A scan of length 1 is
  lowered the same way, so on the CPU the steps are traced directly instead (`unroll`), 8 per
  call. Accelerators run the whole epoch as one rolled scan: no host round-trip per step.
  """
  if jax.default_backend() == 'cpu':
    return min(8, steps_per_epoch), True
  return steps_per_epoch, False


def first_at_target(
  history: list[dict[str, Any]], target: float
) -> tuple[int, float] | tuple[None, None]:
  """(epoch, training seconds up to its end) of the first epoch whose test accuracy >= target;
  the seconds exclude compile and evaluation. (None, None) if no epoch reached it."""
  seconds = 0.0
  for record in history:
    seconds += record['train_seconds']
    if record['test_accuracy'] >= target:
      return record['epoch'], seconds
  return None, None


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains and evaluates per `config`, checkpointing to and resuming from `workdir`.

  Args:
    config: a configs/*.py ConfigDict.
    workdir: where checkpoints, metrics, TensorBoard events, plots and summary.json go.

  Returns:
    The summary dict also written to workdir/summary.json.
  """
  validate_config(config)
  workdir = prepare_workdir(workdir)
  data = input_pipeline.get_datasets(config.data_dir, config.data_url, config.download_dir)
  train_data, test_data = data['train'], data['test']
  steps_per_epoch = len(train_data.labels) // config.batch_size
  if steps_per_epoch < 1:
    raise ConfigError(
      f'config.batch_size={config.batch_size} exceeds the {len(train_data.labels)} training '
      'examples.'
    )
  chunk, unroll = default_steps_per_call(steps_per_epoch)
  if config.steps_per_call:
    chunk = min(config.steps_per_call, steps_per_epoch)

  # One 'data' axis over every device: batches sharded, state and data set replicated.
  # Auto axes: the step is written without sharding annotations beyond one constraint on the
  # batch, and XLA's partitioner inserts the gradient and BatchNorm all-reduces.
  mesh = jax.make_mesh((jax.device_count(),), ('data',), axis_types=(jax.sharding.AxisType.Auto,))
  replicated, batch_sharding = NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))

  rng = jax.random.key(config.seed)
  init_rng, perm_rng, step_rng = jax.random.split(rng, 3)
  state = jax.device_put(create_train_state(init_rng, config, steps_per_epoch), replicated)
  model = cnn.build(config.arch, config.dropout_rate)
  num_params = cnn.count_params(state.params)
  logging.info(
    'Model %r, %s parameters:\n%s',
    config.arch,
    f'{num_params:,}',
    cnn.format_summary(cnn.summary(model)),
  )

  with _quiet_orbax():
    manager = checkpoint_manager(workdir, config.checkpoints_to_keep)
  state, start_epoch = restore_latest(manager, state)
  set_aside_newer_checkpoints(manager, start_epoch, workdir)
  state = jax.device_put(state, replicated)
  log = MetricsLog(workdir, start_epoch)
  if start_epoch and start_epoch not in {r['epoch'] for r in log.history}:
    # Killed between the save and the metrics line: the checkpoint carries its epoch's line.
    if record := checkpoint_record(manager, start_epoch):
      log.write(record)
  phase_marker('resumed', start_epoch)

  train_images = jax.device_put(train_data.images, replicated)
  train_labels = jax.device_put(train_data.labels, replicated)
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
  eval_fn = jax.jit(functools.partial(eval_step, ema=config.ema_decay > 0))
  raw_eval_fn = jax.jit(eval_step)

  # Compile ahead of time so compile seconds are reported apart from training seconds.
  t0 = time.perf_counter()
  sums0 = jax.device_put(zero_sums(), replicated)
  compiled = {}
  for k in {chunk, steps_per_epoch % chunk} - {0}:
    idx_shape = jax.ShapeDtypeStruct((k, config.batch_size), jnp.int32)
    compiled[k] = multi_step.lower(
      state, sums0, train_images, train_labels, idx_shape, step_rng
    ).compile()
  # The epoch's permutation too: compiled lazily it cost the first epoch ~0.5 s (GPU, CPU).
  make_batches = (
    jax.jit(epoch_batches, static_argnums=(1, 2))
    .lower(perm_rng, len(train_data.labels), config.batch_size)
    .compile()
  )
  compile_seconds = time.perf_counter() - t0
  logging.info(
    'Compiled %s-step train calls in %.1f s (backend %s, %d device(s)).',
    sorted(compiled),
    compile_seconds,
    jax.default_backend(),
    jax.device_count(),
  )

  from tqdm import tqdm  # Lazy: only the interactive trainer needs it.

  schedule = make_schedule(config, steps_per_epoch)  # For logging the LR each epoch used last.
  for epoch in range(start_epoch + 1, config.num_epochs + 1):
    phase_marker('train', epoch)
    t0 = time.perf_counter()
    batches = make_batches(jax.random.fold_in(perm_rng, epoch))
    sums = jax.device_put(zero_sums(), replicated)
    bar = tqdm(
      total=steps_per_epoch,
      desc=f'epoch {epoch}/{config.num_epochs}',
      unit='step',
      leave=False,
      disable=not sys.stderr.isatty(),
    )
    for start in range(0, steps_per_epoch, chunk):
      k = min(chunk, steps_per_epoch - start)
      state, sums = compiled[k](
        state, sums, train_images, train_labels, batches[start : start + k], step_rng
      )
      bar.update(k)
    sums = jax.device_get(sums)  # The only host sync of the epoch.
    bar.close()
    if sums['first_bad_step'] >= 0:
      raise NonFiniteError(
        f'Non-finite loss or gradient at step {int(sums["first_bad_step"])} (epoch {epoch}); '
        f'training stopped. The last good checkpoint (epoch {epoch - 1}) is kept in '
        f'{os.path.join(workdir, "checkpoints")}.'
      )
    train_seconds = time.perf_counter() - t0
    phase_marker('eval', epoch)
    test_metrics, _ = evaluate(
      eval_fn, state, test_data.images, test_data.labels, config.eval_batch_size
    )
    record = {
      'epoch': epoch,
      'step': int(state.step),
      'train_loss': float(sums['loss_sum'] / sums['count']),
      'train_accuracy': float(sums['correct'] / sums['count']),
      'test_loss': test_metrics['loss'],
      'test_accuracy': test_metrics['accuracy'],
      'learning_rate': float(schedule(int(state.step) - 1)),
      'train_seconds': train_seconds,
      'images_per_second': steps_per_epoch * config.batch_size / train_seconds,
    }
    if config.ema_decay > 0:  # Score the trained weights too: what the average adds is visible.
      raw, _ = evaluate(
        raw_eval_fn, state, test_data.images, test_data.labels, config.eval_batch_size
      )
      record['test_accuracy_raw'] = raw['accuracy']
    phase_marker('save', epoch)
    save_checkpoint(manager, epoch, state, record)
    phase_marker('saved', epoch)
    log.write(record)
    logging.info(
      'epoch %2d  train loss %.4f acc %.4f  test loss %.4f acc %.4f  lr %.4f  %.1f s (%.0f img/s)',
      epoch,
      record['train_loss'],
      record['train_accuracy'],
      record['test_loss'],
      record['test_accuracy'],
      record['learning_rate'],
      train_seconds,
      record['images_per_second'],
    )
  log.close()

  phase_marker('final', config.num_epochs)
  test_metrics, preds = evaluate(
    eval_fn, state, test_data.images, test_data.labels, config.eval_batch_size
  )
  history = log.history
  accs = [r['test_accuracy'] for r in history]
  first_epoch, seconds_to_target = first_at_target(history, TARGET_ACCURACY)
  summary = {
    'params': num_params,
    'arch': config.arch,
    'seed': config.seed,
    'epochs': len(history),
    'best_test_accuracy': max(accs) if accs else None,
    'best_epoch': history[int(np.argmax(accs))]['epoch'] if accs else None,
    'final_test_accuracy': test_metrics['accuracy'],
    'mean_last3_test_accuracy': float(np.mean(accs[-3:])) if accs else None,
    'min_last3_test_accuracy': min(accs[-3:]) if accs else None,
    'first_epoch_at_target': first_epoch,
    'train_seconds_to_target': seconds_to_target,
    'target_accuracy': TARGET_ACCURACY,
    'train_seconds': sum(r['train_seconds'] for r in history),
    'compile_seconds': compile_seconds,
    'device_kind': jax.devices()[0].device_kind,
    'device_count': jax.device_count(),
    'config': config.to_dict(),
  }
  write_json(os.path.join(workdir, 'summary.json'), summary)
  if config.plots:
    import analysis  # Lazy: matplotlib is slow to import.

    analysis.plot_curves(history, os.path.join(workdir, 'curves.png'))
    analysis.plot_misclassified(
      test_data.images, test_data.labels, preds, os.path.join(workdir, 'misclassified.png')
    )
  logging.info(
    'Done: final test accuracy %.4f, best %.4f; summary in %s.',
    summary['final_test_accuracy'],
    summary['best_test_accuracy'],
    workdir,
  )
  return summary


# ----------------------------------------------------------------------------- CLI

if __name__ == '__main__':
  from ml_collections import config_flags

  FLAGS = flags.FLAGS
  try:
    config_flags.DEFINE_config_file(
      'config', 'configs/mnist.py', 'Training config file (see configs/).', lock_config=True
    )
  except (AttributeError, KeyError) as e:  # config_flags applies --config.<field> here.
    detail = e
    while isinstance(detail, BaseException) and detail.args:  # AttributeError(KeyError(str))
      detail = detail.args[0]
    overrides = ' '.join(a for a in sys.argv[1:] if a.startswith('--config.'))
    sys.exit(f'error: unknown config field in {overrides}: {str(detail).replace(chr(10), "; ")}')
  flags.DEFINE_string('workdir', None, 'Where checkpoints, metrics and plots are written.')
  flags.DEFINE_string(
    'coordinator_address',
    None,
    'Multi-host only: host:port of process 0 (jax.distributed.initialize).',
  )
  flags.DEFINE_integer('num_processes', None, 'Multi-host only: number of processes.')
  flags.DEFINE_integer('process_id', None, 'Multi-host only: index of this process.')
  flags.DEFINE_integer(
    'cpu_devices',
    0,
    'CPU only: split the host into this many JAX devices, the batch sharded over them as over '
    'GPUs (0 = one device). On 2 cores, 2 devices train ~1.2x faster (bench/README.md).',
    lower_bound=0,
  )
  flags.mark_flags_as_required(['workdir'])

  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
    if FLAGS.cpu_devices:  # Before anything starts a JAX backend.
      jax.config.update('jax_num_cpu_devices', FLAGS.cpu_devices)
    if FLAGS.coordinator_address:
      jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    try:
      train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except (ConfigError, input_pipeline.DataError, NonFiniteError) as e:
      sys.exit(f'error: {e}')

  app.run(main)
