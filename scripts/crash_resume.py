"""SIGKILLs a short training run at many moments, resumes it each time, and checks the end result.

  python -m scripts.crash_resume --kills=10 --root=/tmp/crash_resume

1. Writes a small IDX folder: the first `--num_train`/`--num_test` images of `--data_dir`.
2. Runs `train.py` once without interruption (the reference), timing each phase through the
   opt-in markers of hooks.phase_marker (S6JAX_PHASE_MARKERS=1).
3. Runs it again in a fresh workdir and SIGKILLs it at `--kills` moments in increasing order
   (start-up, compilation, a train step, evaluation, checkpoint writing, the final evaluation),
   each a random fraction into that phase, restarting with the same workdir after each kill
   until a run finishes.
4. Compares the final checkpoint (every leaf, bitwise), metrics.jsonl (timing fields aside)
   and the kept checkpoint epochs with the reference.

Prints one line per kill and a verdict; the exit status is 0 only if all is bit-identical.
"""

from __future__ import annotations

import json
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from absl import app, flags, logging

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARKER = 'S6JAX_PHASE '
TIMING_FIELDS = ('train_seconds', 'images_per_second', 'wall_seconds')  # metrics.TIMING_FIELDS
# Phases a kill can aim at; start-up is timed from the process start, the others from the
# marker train.py writes as each begins ('resumed' is followed by the compilation).
PHASES = ('startup', 'compile', 'train', 'eval', 'save', 'final')
_ORDER = {'train': 1, 'eval': 2, 'save': 3, 'saved': 4, 'resumed': 5, 'final': 6}
_LABEL = {'resumed': 'compile', 'saved': 'metrics line'}


def phase_key(phase: str, epoch: int) -> int:
  """Position of a marker in a run's timeline: larger is later."""
  return 10 * epoch + _ORDER[phase]


@dataclass
class Moment:
  """Where to kill: `delay` seconds after the marker (phase, epoch), or after start-up."""

  phase: str  # One of PHASES.
  epoch: int
  delay: float

  def describe(self) -> str:
    where = 'start-up' if self.phase == 'startup' else self.phase
    if self.phase in ('train', 'eval', 'save'):
      where += f' of epoch {self.epoch}'
    return where

  def key(self) -> int:
    if self.phase == 'startup':
      return -1
    return phase_key('resumed' if self.phase == 'compile' else self.phase, self.epoch)


class Run:
  """One `train.py` process whose stderr markers are read as they come."""

  def __init__(self, cmd: list[str], env: dict[str, str], log_path: str):
    self.log = open(log_path, 'a')  # Closed in wait().
    self.start = time.monotonic()
    self.proc = subprocess.Popen(
      cmd, cwd=REPO, env=env, stdout=self.log, stderr=subprocess.PIPE, text=True
    )
    self.markers: queue.Queue = queue.Queue()
    self.timeline: list[tuple[float, str, int]] = []  # (seconds since start, phase, epoch)
    self.tail: list[str] = []
    self.reader = threading.Thread(target=self._read, daemon=True)
    self.reader.start()

  def _read(self):
    for line in self.proc.stderr:
      self.log.write(line)
      self.tail = (self.tail + [line])[-30:]
      if line.startswith(MARKER):
        _, phase, epoch = line.split()
        event = (time.monotonic() - self.start, phase, int(epoch))
        self.timeline.append(event)
        self.markers.put(event)
    self.markers.put(None)

  def wait(self, timeout: float) -> int:
    rc = self.proc.wait(timeout)
    self.reader.join()
    self.log.close()
    return rc

  def last_marker(self) -> tuple[str, int] | None:
    return self.timeline[-1][1:] if self.timeline else None


def train_command(data_dir: str, workdir: str, epochs: int) -> list[str]:
  """A short run: 3 x (32 steps of 32 images, evaluation on 1,000 images, a checkpoint)."""
  return [
    sys.executable,
    'train.py',
    '--config=configs/mnist.py',
    f'--workdir={workdir}',
    f'--config.data_dir={data_dir}',
    f'--config.num_epochs={epochs}',
    '--config.batch_size=32',
    '--config.eval_batch_size=100',
    '--config.steps_per_call=2',
    '--config.checkpoints_to_keep=2',
    '--config.plots=False',
  ]


def child_env(compile_cache: str | None) -> dict[str, str]:
  """Markers on, one CPU device; with `compile_cache`, restarts reuse the reference's XLA
  executables (JAX's persistent cache), which saves ~10 s of compilation per restart."""
  env = dict(os.environ, S6JAX_PHASE_MARKERS='1', JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)
  if compile_cache:
    env.update(
      JAX_COMPILATION_CACHE_DIR=compile_cache,
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0',
    )
  return env


def phase_durations(run: Run, epochs: int) -> dict[tuple[str, int], float]:
  """How long each phase of the reference took: (phase, epoch) -> seconds."""
  events = [(0.0, 'startup', 0), *run.timeline]
  durations = {}
  for (t, phase, epoch), (t_next, _, _) in zip(events, events[1:], strict=False):
    durations[(_LABEL.get(phase, phase), epoch)] = t_next - t
  durations[('final', epochs)] = run.end - events[-1][0]
  return durations


def choose_moments(
  kills: int, durations: dict, rng: random.Random, wanted: list[str] | None
) -> list[Moment]:
  """`kills` distinct moments in time order, each a random 10-90 % into its phase."""
  candidates = sorted(
    (Moment(p, e, 0.0) for p, e in durations if p in PHASES), key=lambda m: m.key()
  )
  if wanted:
    chosen = [m for m in candidates if m.describe() in wanted]
    missing = set(wanted) - {m.describe() for m in chosen}
    if missing:
      raise SystemExit(f'no such moment(s): {sorted(missing)}; choose from '
                       f'{[m.describe() for m in candidates]}')  # fmt: skip
  else:
    if kills > len(candidates):
      raise SystemExit(f'--kills={kills}: at most {len(candidates)} moments; add --epochs.')
    chosen = sorted(rng.sample(candidates, kills), key=lambda m: m.key())
  for m in chosen:
    m.delay = rng.uniform(0.1, 0.9) * durations[(m.phase, m.epoch)]
  return chosen


def kill_at(run: Run, moment: Moment, timeout: float) -> bool:
  """SIGKILLs `run` `moment.delay` s into the moment; False if the run ended first."""
  if moment.phase == 'startup':
    time.sleep(moment.delay)
  else:
    deadline = time.monotonic() + timeout
    while True:
      event = run.markers.get(timeout=max(1.0, deadline - time.monotonic()))
      if event is None:
        return False
      _, phase, epoch = event
      if phase_key(phase, epoch) >= moment.key():
        break
    time.sleep(moment.delay)
  if run.proc.poll() is not None:
    return False
  run.proc.send_signal(signal.SIGKILL)
  return True


def read_metrics(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in records]


def final_digests(workdir: str, epochs: int) -> tuple[int, dict[str, str]]:
  """(epoch, sha256 of every leaf) of the newest checkpoint, restored and verified."""
  import jax  # Lazy: only the comparison needs JAX in this process.

  import checkpointing
  import train
  from configs import mnist

  config = mnist.get_config()
  config.num_epochs = epochs
  template = train.create_train_state(jax.random.key(0), config, steps_per_epoch=1)
  manager = checkpointing.checkpoint_manager(workdir, keep=1000)
  state, epoch = checkpointing.restore_latest(manager, template)
  manager.close()
  return epoch, checkpointing.leaf_digests(state)


def compare(reference: str, resumed: str, epochs: int) -> list[str]:
  """Differences between two finished workdirs ([] if bit-identical)."""
  problems = []
  a, b = read_metrics(reference), read_metrics(resumed)
  if a != b:
    problems.append(f'metrics.jsonl differs:\n  reference {a}\n  resumed   {b}')
  ckpts = [sorted(os.listdir(os.path.join(w, 'checkpoints'))) for w in (reference, resumed)]
  if ckpts[0] != ckpts[1]:
    problems.append(f'kept checkpoints differ: reference {ckpts[0]}, resumed {ckpts[1]}')
  (ea, da), (eb, db) = final_digests(reference, epochs), final_digests(resumed, epochs)
  if ea != eb:
    problems.append(f'final checkpoint epochs differ: {ea} vs {eb}')
  bad = sorted(k for k in da.keys() | db.keys() if da.get(k) != db.get(k))
  if bad:
    problems.append(f'{len(bad)} of {len(da)} arrays differ, e.g. {bad[:3]}')
  return problems


def crash_resume(
  root: str,
  data_dir: str,
  kills: int = 10,
  epochs: int = 3,
  seed: int = 0,
  moments: list[str] | None = None,
  timeout: float = 600,
  compile_cache: bool = True,
  say=print,
) -> dict:
  """Runs the whole experiment under `root` (emptied first) on the IDX folder `data_dir`;
  returns {'ok', 'kills', 'problems'}."""
  shutil.rmtree(root, ignore_errors=True)
  os.makedirs(root)
  env = child_env(os.path.join(root, 'jax_cache') if compile_cache else None)
  rng = random.Random(seed)

  ref_dir = os.path.join(root, 'reference')
  t0 = time.monotonic()
  ref = Run(train_command(data_dir, ref_dir, epochs), env, os.path.join(root, 'reference.log'))
  rc = ref.wait(timeout)
  ref.end = time.monotonic() - ref.start
  if rc:
    raise SystemExit(f'reference run failed (exit {rc}):\n' + ''.join(ref.tail))
  say(f'reference run: {ref.end:.1f} s, phases at ' + ', '.join(
    f'{_LABEL.get(p, p)} {e} {t:.2f}s' for t, p, e in ref.timeline))  # fmt: skip
  timing = ref
  if compile_cache:
    # Restarts compile nothing, so their phases are shorter than the reference's: time them
    # in a second uninterrupted run, which also shows that two plain runs agree.
    timing_dir = os.path.join(root, 'warm')
    timing = Run(train_command(data_dir, timing_dir, epochs), env, os.path.join(root, 'warm.log'))
    if rc := timing.wait(timeout):
      raise SystemExit(f'warm run failed (exit {rc}):\n' + ''.join(timing.tail))
    timing.end = time.monotonic() - timing.start
    problems = compare(ref_dir, timing_dir, epochs)
    say(f'second uninterrupted run (warm compilation cache): {timing.end:.1f} s, '
        + ('identical to the reference' if not problems else f'DIFFERS: {problems}'))  # fmt: skip
    if problems:
      return {'ok': False, 'kills': [], 'problems': problems}
  chosen = choose_moments(kills, phase_durations(timing, epochs), rng, moments)

  work = os.path.join(root, 'resumed')
  log_path = os.path.join(root, 'resumed.log')
  results = []
  pending = list(chosen)
  attempt = 0
  while True:
    attempt += 1
    run = Run(train_command(data_dir, work, epochs), env, log_path)
    if pending:
      moment = pending[0]
      killed = kill_at(run, moment, timeout)
      rc = run.wait(timeout)
      resumed_from = next((e for _, p, e in run.timeline if p == 'resumed'), None)
      if killed and rc == -signal.SIGKILL:
        pending.pop(0)
        last = run.last_marker()
        died_in = (
          'start-up' if last is None else f'{_LABEL.get(last[0], last[0])} of epoch {last[1]}'
        )
        results.append({'target': moment.describe(), 'delay': moment.delay, 'died_in': died_in,
                        'run_resumed_from': resumed_from})  # fmt: skip
        continue
      if rc:
        raise SystemExit(f'attempt {attempt} failed (exit {rc}):\n' + ''.join(run.tail))
      say(f'  (run {attempt} finished before the kill aimed at {moment.describe()})')
    else:
      rc = run.wait(timeout)
      if rc:
        raise SystemExit(f'final attempt failed (exit {rc}):\n' + ''.join(run.tail))
    final_resumed_from = next((e for _, p, e in run.timeline if p == 'resumed'), None)
    break
  # A kill's effect shows in the next run: the epoch that run resumed from.
  resumed = [r['run_resumed_from'] for r in results[1:]] + [final_resumed_from]
  for i, (r, nxt) in enumerate(zip(results, resumed, strict=True), 1):
    say(f'kill {i:2d}: aimed at {r["target"]} (+{r["delay"]:.3f} s), died in {r["died_in"]}; '
        f'next run resumed from epoch {nxt}')  # fmt: skip
    r['next_resumed_from'] = nxt
  problems = compare(ref_dir, work, epochs)
  if len(results) < len(chosen):
    problems.append(f'only {len(results)} of {len(chosen)} kills landed')
  ok = not problems
  say(f'{len(results)} kills, {attempt} runs, {time.monotonic() - t0:.0f} s: ' + (
    'final checkpoint and metrics.jsonl BIT-IDENTICAL to the uninterrupted run' if ok
    else 'MISMATCH\n  ' + '\n  '.join(problems)))  # fmt: skip
  return {'ok': ok, 'kills': results, 'problems': problems}


FLAGS = flags.FLAGS


def _define_flags():
  """Defines the flags; called only when run as a script, so that importing this module (as
  tests/reliability_test.py does) defines none."""
  flags.DEFINE_integer('kills', 10, 'How many times to SIGKILL the run.', lower_bound=0)
  flags.DEFINE_integer('epochs', 3, 'Epochs of the short training run.', lower_bound=1)
  flags.DEFINE_integer('seed', 0, 'Seeds the choice of kill moments.')
  flags.DEFINE_string('root', '/tmp/crash_resume', 'Emptied, then filled.')
  flags.DEFINE_string('moments', '', "Comma-separated, e.g. 'train of epoch 1,save of epoch 1'.")
  flags.DEFINE_string('data_dir', '../shared/mnist', 'MNIST IDX folder the small set is cut from.')
  flags.DEFINE_integer('num_train', 1024, 'Training images.', lower_bound=1)
  flags.DEFINE_integer('num_test', 1000, 'Test images.', lower_bound=1)
  flags.DEFINE_boolean('no_compile_cache', False, 'Compile afresh in every restart.')


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  if not FLAGS['verbosity'].present:  # Library INFO logs (JAX, orbax) only on --verbosity=0.
    logging.set_verbosity(logging.WARNING)
  import input_pipeline

  moments = [m.strip() for m in FLAGS.moments.split(',') if m.strip()] or None
  data = input_pipeline.get_datasets(FLAGS.data_dir)
  small = input_pipeline.first(data, train=FLAGS.num_train, test=FLAGS.num_test)
  data_dir = input_pipeline.write_idx_dir(os.path.join(FLAGS.root + '_data'), small)
  result = crash_resume(
    FLAGS.root,
    data_dir,
    FLAGS.kills,
    FLAGS.epochs,
    FLAGS.seed,
    moments,
    compile_cache=not FLAGS.no_compile_cache,
  )
  return 0 if result['ok'] else 1


if __name__ == '__main__':
  _define_flags()
  app.run(main)
