"""One training job as several processes: start-up, who writes, agreement, preemption, exit.

Every process runs the same program on its own devices of one global mesh (JAX's
multi-controller model). The rules the trainer follows:

* `start` joins the job: `jax.distributed.initialize` with the cluster auto-detected
  (`--distributed=auto`: Cloud TPU VMs, SLURM, Kubernetes) or explicit flags. It sets the
  heartbeat timeout, so that a process that dies is noticed by the others within seconds.
* `is_primary()`: only process 0 writes metrics, TensorBoard, summary.json, plots and the lock;
  every process takes part in orbax's checkpoint saves and restores.
* `sync` and `agree`: barriers, and decisions (which checkpoint to resume) checked to be the
  same on every process.
* `preempted()`: SIGTERM (a spot machine or SLURM taking the host back) asks the run to
  stop at the next step boundary that every process reaches; JAX's preemption sync manager
  chooses that boundary across processes.
* `end`: a failed process exits at once with one line. Waiting in JAX's shutdown barrier for
  peers that are dead or stuck in a collective is what hangs a job.
"""

from __future__ import annotations

import atexit
import os
import platform
import re
import signal
import sys
import threading
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

from errors import CheckpointError

# Seconds without a heartbeat after which the coordinator declares a process dead and the
# others fail (JAX's default is 100). Heartbeats come from a thread of their own, so long
# compiles or steps do not miss them; a short timeout ends a broken job in seconds.
HEARTBEAT_TIMEOUT_S = 10
# How long a process that finished waits at exit for the others to finish too.
SHUTDOWN_TIMEOUT_S = 60
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped on request with a checkpoint; rerun to resume.

_sigterm = threading.Event()


def start(mode: str, coordinator_address: str | None, num_processes, process_id) -> None:
  """Joins the multi-process job, if any: mode 'auto' lets JAX detect the cluster; a
  coordinator address gives it explicitly; otherwise this is a single-process run."""
  if coordinator_address or mode == 'auto':
    jax.distributed.initialize(
      coordinator_address,
      num_processes,
      process_id,
      heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S,
      shutdown_timeout_seconds=SHUTDOWN_TIMEOUT_S,
    )
    watcher = threading.Thread(target=_stop_when_another_fails, daemon=True)
    watcher.start()
    # Before JAX's own exit handler shuts the client down (atexit runs the last one first).
    atexit.register(lambda: (_done.set(), watcher.join()))
  else:  # JAX's preemption manager handles SIGTERM in a multi-process job; here, we do.
    signal.signal(signal.SIGTERM, _on_sigterm)


def _on_sigterm(signum, frame) -> None:
  """The first SIGTERM asks for a checkpoint at the next step boundary; a second one kills."""
  del signum, frame
  if _sigterm.is_set():
    os._exit(128 + signal.SIGTERM)
  _sigterm.set()


def _client():
  from jax._src import distributed  # The job's key-value store; JAX has no public handle.

  return distributed.global_state.client


_FAILED_KEY = 's6jax/failed'  # In the job's key-value store: "<process>\t<its error line>".


_done = threading.Event()  # Set at exit: the watcher stops.


def _stop_when_another_fails() -> None:
  """Ends this process, with one line, within a second of another process of the job
  reporting a failure: without this, a process waiting in a collective for the failed one
  would wait until the coordinator misses its heartbeats, then abort with a C++ stack trace.
  (It polls: a thread blocked inside the client at interpreter exit crashes the exit.)"""
  while not _done.wait(0.25):
    try:
      value = _client().key_value_try_get(_FAILED_KEY)
    except Exception:  # Not set (the usual case), or the client is going away.
      continue
    process, message = value.split('\t', 1)
    if int(process) != jax.process_index():
      print(f'error: process {jax.process_index()} stops: {message}', file=sys.stderr, flush=True)
      os._exit(1)
    return


def _report_failure(message: str) -> None:
  """Tells the other processes (`_stop_when_another_fails`) that this one fails."""
  try:
    _client().key_value_set(_FAILED_KEY, f'{jax.process_index()}\t{message}')
    if is_primary():  # The coordinator's exit takes the key-value store with it.
      time.sleep(1)
  except Exception:  # Another process reported first: theirs stands.
    pass


def is_primary() -> bool:
  return jax.process_index() == 0


def sync(name: str) -> None:
  """Waits until every process gets here (nothing to do in a single process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def agree(value: int, what: str) -> None:
  """CheckpointError unless every process holds the same `value` (they read one workdir)."""
  if jax.process_count() == 1:
    return
  first = int(multihost_utils.broadcast_one_to_all(np.int64(value)))
  if first != value:
    raise CheckpointError(
      f'process {jax.process_index()} found {what} {value}, process 0 found {first}: every '
      'process must see the same --workdir (a shared filesystem or a gs:// bucket).'
    )


def preempted() -> bool:
  """True, on every process at the same call, once any process received SIGTERM.

  Every process must call it at the same points of the run (after each train call). JAX's
  sync manager counts the calls: on SIGTERM it picks a call number every process has yet to
  reach, and each process stops there.
  """
  if jax.process_count() == 1:
    return _sigterm.is_set()
  _checks[0] += 1
  return multihost_utils.reached_preemption_sync_point(_checks[0])


_checks = [0]  # How often this process has called `preempted`.


def end(message: str, code: int) -> None:
  """Prints `message` as one line and exits with `code`.

  In a multi-process job a failure exits at once (os._exit): the normal exit would wait in
  JAX's shutdown barrier for peers that may be dead, or blocked in a collective with us. The
  peers then fail within seconds: their collectives lose this process's connections, or the
  coordinator misses its heartbeats. Every file the run writes is atomic, so nothing is lost.
  """
  print(message, file=sys.stderr, flush=True)
  if jax.process_count() > 1 and code not in (0, EXIT_PREEMPTED):
    _report_failure(f'process {jax.process_index()} failed: {message.removeprefix("error: ")}')
    sys.stdout.flush()
    os._exit(code)
  sys.exit(code)


def describe(e: BaseException) -> str:
  """One line for an unexpected error of a multi-process job, naming the process."""
  first = (str(e).strip().splitlines() or [''])[0]
  first = re.sub(r'(.+?: )\1+', r'\1', first)[:300]  # XLA repeats its prefix per frame.
  return (
    f'error: process {jax.process_index()} of {jax.process_count()}: {type(e).__name__}: {first} '
    '(if another process of the job failed or was killed first, its error is the cause). '
    'Rerun every process with the same command to resume from the last checkpoint.'
  )


def default_cpu_devices(batch_size: int, cores: int | None = None) -> int:
  """How many JAX devices to split a CPU host into: one per core, at most 8, fewest 1, and a
  count that divides `batch_size` (each device takes an equal share of every batch)."""
  cores = cores or usable_cores()
  for n in range(min(cores, 8), 0, -1):
    if batch_size % n == 0:
      return n
  return 1


def usable_cores() -> int:
  """The CPU cores this process may use (macOS has no sched_getaffinity: all of them)."""
  if hasattr(os, 'sched_getaffinity'):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1


def cpu_model() -> str:
  """This host's CPU model as the OS names it, '' where it does not. Runs on CPU devices
  differ from model to model in speed and, through rounding, in every seed's result."""
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def replicator(sharding: jax.sharding.Sharding):
  """tree -> the same tree on `sharding`, from host or single-device values (jax.device_put
  cannot place a single-device jax.Array on devices of other processes; jit can)."""
  return jax.jit(lambda tree: tree, out_shardings=sharding)
