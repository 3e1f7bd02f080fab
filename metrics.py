"""What a run records: the per-epoch log, the summary, and the one atomic file writer.

* `write_atomically(path, write)`: every file the project writes goes through it, so a kill
  or a full disk never leaves a half-written file where a good one was.
* `MetricsLog`: workdir/metrics.jsonl (one JSON line per epoch) and the same in TensorBoard.
* `summarize(...)`: summary.json's contents, from the log's history.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np
from absl import logging

TARGET_ACCURACY = 0.994  # The mission's bar: the first epoch at or above it is reported.


def write_atomically(path: str, write: Callable[[str], None]) -> None:
  """Calls write(tmp) on a fresh temp file beside `path`, then renames it over `path`.

  The temp name is unique, so two writers never share one; on any failure (a full disk, an
  interrupt) the temp file is removed and `path` keeps its old contents.
  """
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=f'.{os.path.basename(path)}.', suffix='.tmp')
  os.close(fd)
  try:
    write(tmp)
    with open(tmp, 'rb') as f:
      os.fsync(f.fileno())
    os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; outputs are meant to be read by others.
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def write_text(path: str, text: str) -> None:
  """Writes `text` to `path` atomically."""

  def write(tmp: str) -> None:
    with open(tmp, 'w') as f:
      f.write(text)

  write_atomically(path, write)


def write_json(path: str, obj: Any) -> None:
  """Writes `obj` as indented JSON, atomically."""
  write_text(path, json.dumps(obj, indent=2))


def read_history(path: str) -> list[dict[str, Any]]:
  """The records of a metrics.jsonl ([] if there is none), up to its first damaged line (a
  half-written or garbled tail): that line and the ones after it are dropped, with a warning."""
  if not os.path.exists(path):
    return []
  records = []
  with open(path, errors='replace') as f:
    for number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
        if not isinstance(record, dict) or not isinstance(record.get('epoch'), int):
          raise ValueError('not an epoch record')
      except ValueError:
        logging.warning(
          '%s: line %d is damaged; it and the lines after it are dropped.', path, number
        )
        break
      records.append(record)
  return records


class MetricsLog:
  """Writes one JSON line per epoch to workdir/metrics.jsonl and the same to TensorBoard."""

  def __init__(self, workdir: str, resume_epoch: int):
    self.path = os.path.join(workdir, 'metrics.jsonl')
    # Epochs after the restored checkpoint are re-run, so their old lines are dropped.
    self.history = [r for r in read_history(self.path) if r['epoch'] <= resume_epoch]
    write_text(self.path, ''.join(json.dumps(r) + '\n' for r in self.history))
    from tensorboardX import SummaryWriter  # Lazy: only the trainer needs it.

    self.writer = SummaryWriter(os.path.join(workdir, 'tb'), purge_step=resume_epoch + 1)

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


def first_at_target(
  history: list[dict[str, Any]], target: float = TARGET_ACCURACY
) -> tuple[int, float] | tuple[None, None]:
  """(epoch, training seconds up to its end) of the first epoch whose test accuracy >= target;
  the seconds exclude compile and evaluation. (None, None) if no epoch reached it."""
  seconds = 0.0
  for record in history:
    seconds += record['train_seconds']
    if record['test_accuracy'] >= target:
      return record['epoch'], seconds
  return None, None


def summarize(history: list[dict[str, Any]], final_accuracy: float, **run: Any) -> dict[str, Any]:
  """summary.json: accuracy over the epochs of `history`, the final accuracy, the first epoch
  at the target and the seconds; `run` adds what the history does not hold (params, config,
  devices, compile seconds...)."""
  accs = [r['test_accuracy'] for r in history]
  first_epoch, seconds_to_target = first_at_target(history)
  return {
    'params': run.pop('params'),
    'arch': run.pop('arch'),
    'seed': run.pop('seed'),
    'epochs': len(history),
    'best_test_accuracy': max(accs) if accs else None,
    'best_epoch': history[int(np.argmax(accs))]['epoch'] if accs else None,
    'final_test_accuracy': final_accuracy,
    'mean_last3_test_accuracy': float(np.mean(accs[-3:])) if accs else None,
    'min_last3_test_accuracy': min(accs[-3:]) if accs else None,
    'first_epoch_at_target': first_epoch,
    'train_seconds_to_target': seconds_to_target,
    'target_accuracy': TARGET_ACCURACY,
    'train_seconds': sum(r['train_seconds'] for r in history),
    **run,
  }
