"""What a run records: the per-epoch log, the summary, and the one atomic file writer.

* `write_atomically(path, write)`: every file the project writes goes through it, so a kill
  or a full disk never leaves a half-written file where a good one was. A path may be local
  or in an object store (`gs://...`, through etils.epath, as orbax's are).
* `MetricsLog`: workdir/metrics.jsonl (one JSON line per epoch) and the same in TensorBoard.
* `summarize(...)`: summary.json's contents, from the log's history.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from absl import logging
from etils import epath

import multihost

TARGET_ACCURACY = 0.994  # The mission's bar: the first epoch at or above it is reported.
TARGET = f'{100 * TARGET_ACCURACY:g} %'  # As tables and plots write it.
# Record fields that differ from run to run of the same settings (tests compare the rest).
TIMING_FIELDS = ('train_seconds', 'images_per_second', 'wall_seconds')


def process_start_time() -> float:
  """The time.time() at which this process started: from /proc on Linux (imports included),
  else when this module was imported."""
  try:
    with open('/proc/self/stat') as f:
      started_ticks = int(f.read().rsplit(')', 1)[1].split()[19])
    with open('/proc/uptime') as f:
      uptime = float(f.read().split()[0])
    return time.time() - (uptime - started_ticks / os.sysconf('SC_CLK_TCK'))
  except (OSError, ValueError, IndexError):
    return _IMPORTED


_IMPORTED = time.time()


def is_remote(path: str) -> bool:
  """Whether `path` is in an object store (gs://, s3://, ...) rather than on a local disk."""
  return '://' in str(path)


def write_atomically(path: str, write: Callable[[str], None]) -> None:
  """Calls write(tmp) on a fresh temp file beside `path`, then renames it over `path`.

  The temp name is unique, so two writers never share one; on any failure (a full disk, an
  interrupt) the temp file is removed and `path` keeps its old contents. For a remote `path`
  the temp file is local and is then uploaded: an object store replaces an object whole.
  """
  if is_remote(path):
    with tempfile.TemporaryDirectory() as local:
      tmp = os.path.join(local, os.path.basename(path))
      write(tmp)
      with open(tmp, 'rb') as f:
        epath.Path(path).write_bytes(f.read())
    return
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=f'.{os.path.basename(path)}.', suffix='.tmp')
  os.close(fd)
  try:
    write(tmp)
    with open(tmp, 'rb') as f:
      os.fsync(f.fileno())
    os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; outputs are meant to be read by others.
    os.replace(tmp, path)
  except BaseException as e:
    if os.path.exists(tmp):
      os.unlink(tmp)
    if isinstance(e, OSError) and e.filename == tmp:  # Name the file the user knows.
      raise OSError(e.errno, e.strerror, path) from e
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
  if not epath.Path(path).exists():
    return []
  records = []
  text = epath.Path(path).read_bytes().decode(errors='replace')
  for number, line in enumerate(text.splitlines(), start=1):
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
  """Writes one JSON line per epoch to workdir/metrics.jsonl and the same to TensorBoard
  (for a local workdir: tensorboardX needs extra packages for object stores)."""

  def __init__(self, workdir: str, resume_epoch: int, write: bool = True):
    """`write=False` (every process of a job but the first) keeps the history in memory only."""
    self.path = os.path.join(workdir, 'metrics.jsonl')
    # Epochs after the restored checkpoint are re-run, so their old lines are dropped.
    self.history = [r for r in read_history(self.path) if r['epoch'] <= resume_epoch]
    # Wall-clock the processes before this one spent up to the resumed epoch (None: unknown,
    # a record from before the field existed).
    self.wall_before = self.history[-1].get('wall_seconds') if self.history else 0.0
    self.started = process_start_time()
    self.write_files = write
    self.tensorboard = None
    if not write:
      return
    self._rewrite()
    if not is_remote(workdir):
      from tensorboardX import SummaryWriter  # Lazy: only the trainer needs it.

      self.tensorboard = SummaryWriter(os.path.join(workdir, 'tb'), purge_step=resume_epoch + 1)

  def _rewrite(self) -> None:
    """The whole file, atomically (an object store cannot append; the file is small)."""
    write_text(self.path, ''.join(json.dumps(r) + '\n' for r in self.history))

  def stamp(self, record: dict[str, Any]) -> None:
    """Adds `wall_seconds` to an epoch's record: wall-clock from the start of the run's
    first process to now (imports, data, compile and evaluation included; a resumed run adds
    the seconds its earlier processes spent up to the epoch it resumed from)."""
    elapsed = time.time() - self.started
    record['wall_seconds'] = None if self.wall_before is None else self.wall_before + elapsed

  def write(self, record: dict[str, Any]) -> None:
    self.history.append(record)
    if not self.write_files:
      return
    self._rewrite()
    if self.tensorboard is None:
      return
    for key, value in record.items():
      if key != 'epoch' and isinstance(value, int | float):
        self.tensorboard.add_scalar(key, value, record['epoch'])
    self.tensorboard.flush()

  def close(self):
    if self.tensorboard is not None:
      self.tensorboard.close()


def progress_bar(steps: int, desc: str, resume: tuple[int, Any] | None = None):
  """A tqdm bar over an epoch's steps, shown only on a terminal and by process 0 of a job;
  `resume`: (steps already done, ...) of an epoch stopped part-way."""
  from tqdm import tqdm  # Lazy: only the interactive trainer needs it.

  disable = not sys.stderr.isatty() or not multihost.is_primary()
  bar = tqdm(total=steps, desc=desc, unit='step', leave=False, disable=disable)
  bar.update(resume[0] if resume else 0)
  return bar


def epoch_line(record: dict[str, Any]) -> str:
  """The one log line of an epoch's record."""
  return (
    'epoch {epoch:2d}  train loss {train_loss:.4f} acc {train_accuracy:.4f}  test loss '
    '{test_loss:.4f} acc {test_accuracy:.4f}  lr {learning_rate:.4f}  {train_seconds:.1f} s '
    '({images_per_second:.0f} img/s)'.format(**record)
  )


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
  at_target = [r for r in history if r['epoch'] == first_epoch]
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
    # Wall-clock from the process start to the end of that epoch, everything included.
    'seconds_to_target': at_target[0].get('wall_seconds') if at_target else None,
    'target_accuracy': TARGET_ACCURACY,
    'train_seconds': sum(r['train_seconds'] for r in history),
    **run,
  }


# ----------------------------------------------------------------------------- tables of runs


HEADER = (
  '| seed | params | best % | final % | mean of last 3 % | min of last 3 % '
  f'| first epoch ≥ {TARGET} | epochs | train s | compile s | hardware |\n'
  '| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |'
)
# HEADER with one more column: the wall-clock seconds from the process start to the target.
WALL_HEADER = HEADER.replace('| hardware |', f'| hardware | s to {TARGET} |').replace(
  '| --- |', '| --- | ---: |'
)


def has_wall_seconds(summaries: list[dict]) -> bool:
  """Whether a seed table of these runs takes WALL_HEADER: some run records seconds_to_target
  (the summaries of runs from before the field existed do not; their tables keep HEADER)."""
  return any('seconds_to_target' in s for s in summaries)


def table_row(s: dict, wall: bool) -> str:
  """`row`, with the seconds-to-target column of WALL_HEADER when `wall` ('—': never, or a
  run from before the field existed)."""
  if not wall:
    return row(s)
  seconds = s.get('seconds_to_target')
  return f'{row(s)} {"—" if seconds is None else f"{seconds:.0f}"} |'


def row(s: dict) -> str:
  first = s['first_epoch_at_target'] if s['first_epoch_at_target'] is not None else '—'
  hardware = f'{s["device_count"]}× {s["device_kind"]}'
  if s['device_kind'] == 'cpu' and s.get('cpu_model'):  # Older summaries lack the CPU fields.
    hardware += f' ({s["cpu_model"]}, {s["cpu_cores"]} cores)'
  return (
    f'| {s["seed"]} | {s["params"]:,} | {100 * s["best_test_accuracy"]:.2f} '
    f'| {100 * s["final_test_accuracy"]:.2f} | {100 * s["mean_last3_test_accuracy"]:.2f} '
    f'| {100 * s["min_last3_test_accuracy"]:.2f} | {first} | {s["epochs"]} '
    f'| {s["train_seconds"]:.0f} | {s["compile_seconds"]:.0f} '
    f'| {hardware} |'
  )


def totals(summaries: list[dict]) -> dict:
  """Over the runs: mean, standard deviation (0 for one run) and min of the final accuracy (%),
  the lowest accuracy of any run's last 3 epochs (%, the margin), how many reached the target at
  some epoch, and how many kept every one of their last 3 epochs at or above it ('steady')."""
  finals = [100 * s['final_test_accuracy'] for s in summaries]
  return {
    'runs': len(summaries),
    'mean_final': statistics.mean(finals),
    'std_final': statistics.stdev(finals) if len(finals) > 1 else 0.0,
    'min_final': min(finals),
    'lowest_last3': min(100 * s['min_last3_test_accuracy'] for s in summaries),
    'reached': sum(s['first_epoch_at_target'] is not None for s in summaries),
    'steady': sum(s['min_last3_test_accuracy'] >= s['target_accuracy'] for s in summaries),
  }


def footer(summaries: list[dict]) -> str:
  """The line under a seed table: `totals` in words."""
  t = totals(summaries)
  return (
    f'mean final {t["mean_final"]:.2f} % (std {t["std_final"]:.2f}), min final '
    f'{t["min_final"]:.2f} %, lowest of any last 3 epochs {t["lowest_last3"]:.2f} %; seeds '
    f'reaching {TARGET}: {t["reached"]}/{t["runs"]}; seeds with the last 3 epochs all ≥ {TARGET}: '
    f'{t["steady"]}/{t["runs"]}'
  )


TIMING_HEADER = (
  f'| params | final % per seed | mean final % | last 3 all ≥ {TARGET} | first epoch ≥ {TARGET} '
  f'| train s to {TARGET} (seed 0) | s per epoch | train img/s | train s, all epochs | compile s '
  '| device |\n'
  '| ---: | --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |'
)


def timing_row(summaries: list[dict], seed0_history: list[dict]) -> str:
  """Accuracy over every run; the timings of the first (seed 0, which trained alone): its
  training seconds to the target, and the median seconds and images/s of its epochs after the
  first (the first holds one-off costs)."""
  s0, t = summaries[0], totals(summaries)
  finals = ' / '.join(f'{100 * s["final_test_accuracy"]:.2f}' for s in summaries)
  first = ' / '.join(
    '—' if s['first_epoch_at_target'] is None else str(s['first_epoch_at_target'])
    for s in summaries
  )
  later = seed0_history[1:] or seed0_history
  epoch_s = statistics.median(r['train_seconds'] for r in later)
  images_s = statistics.median(r['images_per_second'] for r in later)
  to_target = s0['train_seconds_to_target']
  return (
    f'| {s0["params"]:,} | {finals} | {t["mean_final"]:.2f} | {t["steady"]}/{t["runs"]} '
    f'| {first} | {"—" if to_target is None else f"{to_target:.2f}"} | {epoch_s:.2f} '
    f'| {images_s:,.0f} | {s0["train_seconds"]:.2f} | {s0["compile_seconds"]:.1f} '
    f'| {s0["device_kind"]} |'
  )
