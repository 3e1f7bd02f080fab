"""Orbax checkpoints that prove what they hold: one per epoch, each with the sha256 of every
array and its epoch's metrics record in its metadata.

`restore_latest` loads the newest checkpoint that passes its checks and falls back past damaged
ones (reporting each); `set_aside_newer_checkpoints` moves the rejected ones out of the way so
their epochs can be saved again. A run stopped by SIGTERM inside an epoch leaves one more
checkpoint, of that step (`save_preempted`). `restore_run` and `restore_mid_epoch` are what the
trainer calls to resume: the newest good epoch, then the step inside the next one, if any.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging as std_logging
import os
import sys
import time
import traceback
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

import hooks
import metrics
import multihost
from errors import CheckpointError


@contextlib.contextmanager
def quiet_orbax(level: int = logging.WARNING):
  """Orbax logs dozens of INFO lines per save/restore through absl; show `level` and up only."""
  logger = logging.get_absl_logger()
  old_level = logger.level
  # absl's level constants (WARNING = -1) are not the `logging` module's (WARNING = 30).
  logger.setLevel(logging.converter.absl_to_standard(level))
  try:
    yield
  finally:
    logger.setLevel(old_level)


def ignore_failed_read_noise() -> None:
  """Keeps two kinds of library noise off the terminal of a command-line run.

  When orbax fails to read a damaged checkpoint, the failure itself is reported once
  (restore_latest), but two echoes of it can follow the run's own message:
  - tensorstore can still complete a read in its own thread after orbax's asyncio loop has
    closed; the callback's `RuntimeError: Event loop is closed` reaches
    `sys.unraisablehook`, which prints a traceback;
  - orbax gathers one `async_deserialize` task per array; the first failure is raised, and
    each other failed task, garbage-collected unretrieved, is logged by asyncio as "Task
    exception was never retrieved" with its traceback (as the interpreter exits, after the
    run's message).
  Every other unraisable exception and asyncio record still goes to its usual place.
  """

  def hook(unraisable):
    closed = isinstance(unraisable.exc_value, RuntimeError) and (
      str(unraisable.exc_value) == 'Event loop is closed'
    )
    if not closed:
      sys.__unraisablehook__(unraisable)

  sys.unraisablehook = hook
  asyncio_logger = std_logging.getLogger('asyncio')
  if not any(isinstance(f, _UnretrievedReadFilter) for f in asyncio_logger.filters):
    asyncio_logger.addFilter(_UnretrievedReadFilter())


class _UnretrievedReadFilter(std_logging.Filter):
  """Drops asyncio's "never retrieved" records of failed orbax/tensorstore array reads."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    if not record.getMessage().startswith('Task exception was never retrieved'):
      return True
    exc = record.exc_info[1] if record.exc_info else None
    if exc is None:
      return True
    # tensorstore's errors carry the spec of what it read; orbax's own frames its package.
    frames = traceback.extract_tb(exc.__traceback__)
    from_orbax = any(f'{os.sep}orbax{os.sep}' in frame.filename for frame in frames)
    return not (from_orbax or 'tensorstore_spec' in str(exc))


def checkpoint_manager(workdir: str, keep: int, create: bool = True) -> ocp.CheckpointManager:
  """Orbax manager for workdir/checkpoints, keeping the newest `keep` epochs.

  A kill during a save leaves only an uncommitted temp folder (orbax renames it into place
  when complete); the trainer's manager removes such leftovers on the next start. With
  `create=False` (a reader such as analysis.py) it creates and removes nothing, so it can
  read a run that is still saving.
  """
  return _manager(os.path.join(workdir, 'checkpoints'), keep, create=create, clean=create)


def _manager(
  directory: Any, keep: int | None, *, create: bool, clean: bool
) -> ocp.CheckpointManager:
  """A synchronous orbax manager. `create`: make the folder now (else its first save does);
  `clean`: remove the temporary folders an interrupted save left (for a writer only)."""
  options = ocp.CheckpointManagerOptions(
    max_to_keep=keep,
    create=create,
    enable_async_checkpointing=False,
    cleanup_tmp_directories=clean,
  )
  return ocp.CheckpointManager(directory, options=options)


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
  manager: ocp.CheckpointManager,
  epoch: int,
  state: Any,
  record: dict[str, Any],
  run: dict[str, Any] | None = None,
  step: int | None = None,
) -> None:
  """Saves `state` as the checkpoint of `epoch`, with its leaf checksums, its identity (epoch,
  train `step`, by default `state.step`, and `run`, the settings that shape the weights) and
  its metrics record.

  All go into the step's orbax metadata, which is written before the step is committed, so a
  committed checkpoint always carries them. Orbax's own files have no checksum: flipped bytes
  in an array file can load silently as different numbers, another checkpoint's array files
  load as if they were this one's, and a whole step folder copied over another loads as that
  epoch (tests/checkpointing_test.py).
  """
  step = int(jax.device_get(state.step)) if step is None else step
  identity = {'epoch': epoch, 'step': step, 'run': run}
  metadata = {'leaf_sha256': leaf_digests(state), 'identity': identity, 'metrics_record': record}
  with quiet_orbax():
    saved = manager.save(epoch, args=ocp.args.StandardSave(state), custom_metadata=metadata)
    manager.wait_until_finished()
  if not saved:  # Orbax skips steps <= its latest; set_aside_newer_checkpoints prevents that.
    raise CheckpointError(f'orbax did not save the checkpoint of epoch {epoch}.')


def _verify(
  manager: ocp.CheckpointManager, step: int, restored: Any, run: dict[str, Any] | None
) -> str | None:
  """None if `restored` matches the checksums and identity saved with `step`, else what is
  wrong: another epoch's checkpoint in this folder, or one saved by a run with other
  settings (`run`; None: not checked)."""
  with quiet_orbax(logging.FATAL):  # Orbax logs an unreadable file whole; we report it below.
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
  return _identity_problem(custom.get('identity'), step, run)


def _identity_problem(identity: Any, step: int, run: dict[str, Any] | None) -> str | None:
  """What is wrong with a checkpoint's saved identity for folder `step` and this run."""
  if identity is None:
    logging.warning('Checkpoint of epoch %d carries no identity; loading it unchecked.', step)
    return None
  if identity.get('epoch') != step:
    return f'it is the checkpoint of epoch {identity.get("epoch")}, in the folder of epoch {step}'
  saved = identity.get('run')
  if run is not None and saved is not None and saved != run:
    fields = sorted(k for k in saved.keys() | run.keys() if saved.get(k) != run.get(k))
    changed = ', '.join(f'{k}={saved.get(k)!r} (now {run.get(k)!r})' for k in fields)
    return f'it was saved by a run with other settings: {changed}'
  return None


def _reader(directory: Any) -> ocp.CheckpointManager:
  """A manager that only reads: one per step restored, since a manager that met a broken step
  folder (empty, or without its item) refuses every later restore."""
  return _manager(directory, None, create=False, clean=False)


def restore_latest(
  manager: ocp.CheckpointManager, target: Any, run: dict[str, Any] | None = None, unit='epoch'
) -> tuple[Any, int]:
  """Restores the newest checkpoint that loads and passes its checks; (state, epoch).

  Returns (target, 0) when there is no checkpoint. A checkpoint that fails (damaged arrays or
  metadata, another epoch's checkpoint in its folder, saved by a run whose settings differ
  from `run`) is reported and skipped in favour of the one before it; CheckpointError if
  every one fails. `unit`: what the manager's step numbers count, for the messages.
  """
  # As arrays, so that a Python-int `step` restores with the int32 dtype it was saved (and
  # checksummed) with.
  abstract = jax.tree_util.tree_map(
    lambda x: ocp.utils.to_shape_dtype_struct(jnp.asarray(x)), target
  )
  with quiet_orbax(logging.ERROR):  # A broken step folder is reported below, once.
    manager.reload()  # Another process (or the user) may have changed the folder.
    steps = sorted(manager.all_steps(), reverse=True)
  problems = []
  for step in steps:
    with quiet_orbax(logging.ERROR):
      reader = _reader(manager.directory)
    try:
      with quiet_orbax(logging.ERROR):
        restored = reader.restore(step, args=ocp.args.StandardRestore(abstract))
      problem = _verify(reader, step, restored, run)
    except Exception as e:  # Orbax/TensorStore raise many types for unreadable files.
      problem = f'it does not load ({type(e).__name__}: {str(e).splitlines()[0][:200]})'
    finally:
      reader.close()
    if problem:
      logging.warning(
        'Checkpoint of %s %d is unusable: %s; trying the one before.', unit, step, problem
      )
      problems.append(f'{unit} {step}: {problem}')
      continue
    # Orbax restores strongly typed arrays; give back the weak types of Python-scalar fields
    # (the step), so a resumed run calls the very program an uninterrupted one compiled.
    restored = jax.tree_util.tree_map(
      lambda r, t: jnp.asarray(r.item()) if getattr(jnp.asarray(t), 'weak_type', False) else r,
      restored,
      target,
    )
    if step != steps[0]:
      logging.warning('Resuming from the checkpoint of %s %d, the newest good one.', unit, step)
    else:
      logging.info('Resuming from the checkpoint of %s %d.', unit, step)
    return restored, step
  if steps:
    raise CheckpointError(
      f'no usable checkpoint in {manager.directory} ({len(problems)} tried; the newest: '
      f'{problems[0]}). Move the folder away to start afresh.'
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
  rejected = epath.Path(workdir, 'rejected_checkpoints')
  rejected.mkdir(parents=True, exist_ok=True)
  for step in newer:
    dest = rejected / f'{step}-{time.strftime("%Y%m%d-%H%M%S")}'
    epath.Path(manager.directory, str(step)).rename(dest)
    logging.warning('Moved the rejected checkpoint of epoch %d to %s.', step, dest)
  manager.reload()


def checkpoint_record(manager: ocp.CheckpointManager, epoch: int) -> dict[str, Any] | None:
  """The metrics.jsonl record saved with the checkpoint of `epoch` (None if it has none)."""
  custom = manager.metadata(epoch).custom_metadata
  return custom.get('metrics_record') if isinstance(custom, dict) else None


# ----------------------------------------------------------------------------- mid-epoch


def preempted_manager(workdir: str) -> ocp.CheckpointManager:
  """Orbax manager for workdir/preempted: the one checkpoint of a run stopped inside an epoch,
  numbered by its global step (the epoch checkpoints stay in workdir/checkpoints). The folder
  appears only when a run is stopped inside an epoch."""
  return _manager(os.path.join(workdir, 'preempted'), 1, create=False, clean=True)


def save_preempted(
  manager: ocp.CheckpointManager, state: Any, sums: Any, epoch: int, done: int, run: dict
) -> None:
  """Saves a run stopped after `done` steps of `epoch`: its state and the epoch's running
  sums, with the same checksums and identity as an epoch checkpoint."""
  step = int(jax.device_get(state.step))
  record = {'epoch': epoch, 'steps_done': done}
  save_checkpoint(manager, step, {'state': state, 'sums': sums}, record, run, step=step)


def restore_preempted(
  manager: ocp.CheckpointManager, state: Any, sums: Any, epoch: int, run: dict
) -> tuple[Any, tuple[int, Any]] | None:
  """(state, (steps done, sums)) of a run stopped inside epoch `epoch`, if workdir/preempted
  holds a good checkpoint of it; None otherwise (none, another epoch's, or damaged: the
  epoch then restarts from its beginning)."""
  try:
    restored, step = restore_latest(manager, {'state': state, 'sums': sums}, run, unit='step')
  except CheckpointError as e:
    logging.warning('Not resuming inside the epoch: %s', e)
    return None
  if step == 0:  # No checkpoint (one saved mid-epoch is at least one step in).
    return None
  with quiet_orbax(logging.ERROR):
    record = checkpoint_record(manager, step) or {}
  if record.get('epoch') != epoch:
    return None
  logging.info('Resuming epoch %d after its step %d (stopped there).', epoch, record['steps_done'])
  return restored['state'], (record['steps_done'], restored['sums'])


# ----------------------------------------------------------------------------- a run's resume


# Settings a run may change on resume: they do not shape the weights. Every other config field
# is saved with each checkpoint, and a checkpoint saved under other values is not resumed.
RESUMABLE_CHANGES = (
  'data_dir', 'data_url', 'download_dir', 'eval_batch_size', 'steps_per_call',
  'checkpoints_to_keep', 'plots',
)  # fmt: skip


# Fields added to the config after runs were saved without them, and the value that trains as
# those runs did: left out of a run's settings at that value, so older workdirs still resume.
ADDED_FIELDS = {
  'max_scale': 0.0, 'max_brightness': 0.0, 'max_contrast': 0.0, 'clean_epochs': 0,
  'elastic_alpha': 0.0, 'elastic_sigma': 4.0, 'swa_from_epoch': 0, 'swa_learning_rate': 0.0,
}  # fmt: skip
# What a reader of an older run's saved config (analysis.py) fills in for each field it lacks:
# ADDED_FIELDS and two fields older still, at the values that train as those runs did.
FIELDS_ADDED_LATER = {'ema_decay': 0.0, 'gradients': 'autodiff', **ADDED_FIELDS}


def run_settings(config: Any) -> dict[str, Any]:
  """The config fields that shape the weights (what a resumed checkpoint must match)."""
  return {
    k: v
    for k, v in config.to_dict().items()
    if k not in RESUMABLE_CHANGES and not (k in ADDED_FIELDS and v == ADDED_FIELDS[k])
  }


def restore_run(workdir: str, config, state: Any):
  """(manager, state, epoch, log): the newest good checkpoint of this run (or `state` at epoch
  0), the unusable newer ones set aside, and the metrics log cut back to that epoch. Every
  process restores; they must agree on the epoch, and only process 0 moves or writes files."""
  with quiet_orbax():
    manager = checkpoint_manager(workdir, config.checkpoints_to_keep)
  state, epoch = restore_latest(manager, state, run_settings(config))
  multihost.agree(epoch, 'the newest good checkpoint at epoch')
  if multihost.is_primary():
    set_aside_newer_checkpoints(manager, epoch, workdir)
  multihost.sync('checkpoints set aside')
  with quiet_orbax():
    manager.reload()
  log = metrics.MetricsLog(workdir, epoch, write=multihost.is_primary())
  # Lines missing after the log's last one (killed between a save and its line, or a damaged
  # tail dropped): each kept checkpoint carries its epoch's line.
  last = log.history[-1]['epoch'] if log.history else 0
  for step in sorted(s for s in manager.all_steps() if last < s <= epoch):
    if record := checkpoint_record(manager, step):
      log.write(record)
  return manager, state, epoch, log


def restore_mid_epoch(workdir: str, config, state: Any, sums: Any, epoch: int):
  """(manager of workdir/preempted, state, (steps done, sums) or None): where a run stopped
  by SIGTERM inside `epoch` left off, if it did (`sums`: a zero template); every process
  must agree."""
  with quiet_orbax():
    preempted = preempted_manager(workdir)
  found = restore_preempted(preempted, state, sums, epoch, run_settings(config))
  multihost.agree(found[1][0] if found else 0, f'epoch {epoch} resumed at step')
  return (preempted, *found) if found else (preempted, state, None)


def commit_epoch(managers, state: Any, record: dict[str, Any], run: dict[str, Any], log) -> None:
  """Ends an epoch: its checkpoint, then its metrics line (a resume relies on that order: a
  line is only ever written for a saved epoch), then drops the mid-epoch checkpoint this one
  supersedes. `managers`: (epoch manager, preempted_manager)."""
  manager, preempted = managers
  log.stamp(record)  # Its wall-clock, saved with the checkpoint too.
  hooks.phase_marker('save', record['epoch'])
  save_checkpoint(manager, record['epoch'], state, record, run)
  hooks.phase_marker('saved', record['epoch'])
  log.write(record)
  for step in preempted.all_steps():
    with quiet_orbax():
      preempted.delete(step)


def finished_run(workdir: str, config) -> dict[str, Any] | None:
  """The summary of a finished run of `config` in `workdir` (and one line saying so), found
  without compiling or loading anything: its summary.json, written by a run with the same
  settings (those that shape the weights) for `config.num_epochs` epochs, with that epoch's
  checkpoint in place and passing its checks, and every epoch's metrics line. None otherwise:
  a run to start, resume or repair, or one with other settings (which restore_run refuses,
  naming them)."""
  try:
    summary = json.loads(epath.Path(workdir, 'summary.json').read_text())
    saved = summary['config']
  except (OSError, ValueError, KeyError, TypeError):
    return None
  # Through JSON, as summary.json holds it (tuples become lists).
  settings = json.loads(json.dumps(run_settings(config)))
  same = isinstance(saved, dict) and {k: saved.get(k) for k in settings} == settings
  epochs = config.num_epochs
  if not same or summary.get('epochs') != epochs:
    return None
  with quiet_orbax(logging.ERROR):  # A damaged line is reported by the run that repairs it.
    history = metrics.read_history(os.path.join(workdir, 'metrics.jsonl'))
  if [r['epoch'] for r in history] != list(range(1, epochs + 1)):
    return None
  if not _verifies(os.path.join(workdir, 'checkpoints'), epochs, run_settings(config)):
    return None
  if multihost.is_primary():
    where = os.path.join(workdir, 'summary.json')
    print(f'already trained {epochs} epochs; summary: {where}', flush=True)
  return summary


def _verifies(directory: str, epoch: int, run: dict[str, Any]) -> bool:
  """Whether the checkpoint of `epoch` loads, as saved (no template, nothing compiled), and
  matches its checksums and identity (`_verify`'s checks, the arrays compared by digest)."""
  try:
    with quiet_orbax(logging.FATAL):  # A damaged one is reported by the run that retrains it.
      reader = _reader(directory)
      try:
        restored = reader.restore(epoch, args=ocp.args.StandardRestore())
        custom = reader.metadata(epoch).custom_metadata
      finally:
        reader.close()
  except Exception:  # Orbax/TensorStore raise many types for unreadable files.
    return False
  if not isinstance(custom, dict) or 'leaf_sha256' not in custom:
    return False
  # Restored without a template, the tree has other paths than the saved state's.
  if sorted(custom['leaf_sha256'].values()) != sorted(leaf_digests(restored).values()):
    return False
  return _identity_problem(custom.get('identity'), epoch, run) is None
