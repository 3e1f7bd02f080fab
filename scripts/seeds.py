"""Runs one config over several seeds and prints the accuracy table (CPU or GPU alike).

  python scripts/seeds.py --config=configs/mnist.py --seeds=0,1,2,3,4 \
      --root=workdirs/mnist -- --config.data_dir=../shared/mnist

Each seed trains in its own process into ROOT/seed<N> (rerunning resumes or, for a finished
run, only re-reads it). One line per run is printed as it finishes; at the end the Markdown
table is printed and written to ROOT/table.md. Arguments after `--` go to train.py.

`--table_only` trains nothing and tabulates the runs ROOT already holds; `--timings` adds the
timing row (the README's GPU table: seed 0's seconds to 99.4 %, per epoch, images/s).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = flags.FLAGS
HEADER = (
  '| seed | params | best % | final % | mean of last 3 % | min of last 3 % '
  '| first epoch ≥ 99.4 % | epochs | train s | compile s | hardware |\n'
  '| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |'
)


def row(s: dict) -> str:
  first = s['first_epoch_at_target'] if s['first_epoch_at_target'] is not None else '—'
  hardware = f'{s["device_count"]}× {s["device_kind"]}'
  return (
    f'| {s["seed"]} | {s["params"]:,} | {100 * s["best_test_accuracy"]:.2f} '
    f'| {100 * s["final_test_accuracy"]:.2f} | {100 * s["mean_last3_test_accuracy"]:.2f} '
    f'| {100 * s["min_last3_test_accuracy"]:.2f} | {first} | {s["epochs"]} '
    f'| {s["train_seconds"]:.0f} | {s["compile_seconds"]:.0f} '
    f'| {hardware} |'
  )


def totals(summaries: list[dict]) -> dict:
  """Over the runs: mean and min final accuracy (%), how many reached the target at some epoch,
  and how many kept every one of their last 3 epochs at or above it ('steady')."""
  finals = [100 * s['final_test_accuracy'] for s in summaries]
  return {
    'runs': len(summaries),
    'mean_final': statistics.mean(finals),
    'min_final': min(finals),
    'reached': sum(s['first_epoch_at_target'] is not None for s in summaries),
    'steady': sum(s['min_last3_test_accuracy'] >= s['target_accuracy'] for s in summaries),
  }


def footer(summaries: list[dict]) -> str:
  """The line under a seed table: `totals` in words."""
  t = totals(summaries)
  return (
    f'mean final {t["mean_final"]:.2f} %, min final {t["min_final"]:.2f} %; seeds reaching '
    f'99.4 %: {t["reached"]}/{t["runs"]}; seeds with the last 3 epochs all ≥ 99.4 %: '
    f'{t["steady"]}/{t["runs"]}'
  )


TIMING_HEADER = (
  '| params | final % per seed | mean final % | last 3 all ≥ 99.4 % | first epoch ≥ 99.4 % '
  '| train s to 99.4 % (seed 0) | s per epoch | train img/s | train s, all epochs | compile s '
  '| device |\n'
  '| ---: | --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |'
)


def timing_row(summaries: list[dict], seed0_history: list[dict]) -> str:
  """Accuracy over every run; the timings of the first (seed 0, which trained alone): its
  training seconds to 99.4 %, and the median seconds and images/s of its epochs after the
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


def read_history(workdir: str) -> list[dict]:
  """A run's metrics.jsonl, one dict per epoch."""
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f if line.strip()]


def _define_flags():
  """Defines the flags; called only when run as a script, so that importing this module (tests,
  docs/make_docs.py) defines none."""
  flags.DEFINE_string('config', 'configs/mnist.py', 'The config file train.py runs.')
  flags.DEFINE_list('seeds', ['0', '1', '2', '3', '4'], 'Seeds, comma-separated.')
  flags.DEFINE_string('root', None, 'Workdirs go to ROOT/seed<N>.', required=True)
  flags.DEFINE_boolean(
    'table_only',
    False,
    'Train nothing: build the table from the runs ROOT/seed<N>/summary.json already holds '
    '(e.g. seeds trained at once on one GPU by scripts/gpu_check.sh).',
  )
  flags.DEFINE_boolean(
    'timings',
    False,
    'Also print the timing row of the first seed given (it should have trained alone).',
  )
  flags.register_validator(
    'seeds',
    lambda seeds: bool(seeds) and all(s.strip().isdigit() for s in seeds),
    '--seeds: one or more whole numbers, comma-separated',
  )


def main(argv: list[str]) -> int:
  extra = argv[1:]  # What follows `--`: flags for train.py.
  seeds = [int(s) for s in FLAGS.seeds]
  summaries = []
  for seed in seeds:
    workdir = os.path.join(FLAGS.root, f'seed{seed}')
    if FLAGS.table_only:
      try:
        with open(os.path.join(workdir, 'summary.json')) as f:
          summaries.append(json.load(f))
      except FileNotFoundError:
        print(f'seed {seed}: no finished run in {workdir} (no summary.json).', file=sys.stderr)
        return 1
      continue
    cmd = [
      sys.executable,
      os.path.join(REPO, 'train.py'),
      f'--config={FLAGS.config}',
      f'--workdir={workdir}',
      f'--config.seed={seed}',
      *extra,
    ]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
      print(
        f'seed {seed}: train.py failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}',
        file=sys.stderr,
      )
      return 1
    with open(os.path.join(workdir, 'summary.json')) as f:
      summary = json.load(f)
    summaries.append(summary)
    print(f'{row(summary)}  ({time.time() - t0:.0f} s wall)', flush=True)
  table = '\n'.join([HEADER, *map(row, summaries)]) + f'\n\n{footer(summaries)}\n'
  if FLAGS.timings:
    history = read_history(os.path.join(FLAGS.root, f'seed{seeds[0]}'))
    table += f'\n{TIMING_HEADER}\n{timing_row(summaries, history)}\n'
  os.makedirs(FLAGS.root, exist_ok=True)
  with open(os.path.join(FLAGS.root, 'table.md'), 'w') as f:
    f.write(f'`{" ".join(["python", "scripts/seeds.py", *sys.argv[1:]])}`\n\n{table}')
  print(table)
  return 0


if __name__ == '__main__':
  _define_flags()
  app.run(main)
