"""Runs one config over several seeds and prints the accuracy table (CPU or GPU alike).

  python scripts/seeds.py --config=configs/mnist.py --seeds=0,1,2,3,4 \
      --root=workdirs/mnist -- --config.data_dir=../shared/mnist

Each seed trains in its own process into ROOT/seed<N> (rerunning resumes or, for a finished
run, only re-reads it). One line per run is printed as it finishes; at the end the Markdown
table is printed and written to ROOT/table.md. Arguments after `--` go to train.py.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', default='configs/mnist.py')
  parser.add_argument('--seeds', default='0,1,2,3,4')
  parser.add_argument('--root', required=True, help='Workdirs go to ROOT/seed<N>.')
  parser.add_argument(
    '--table_only',
    action='store_true',
    help='Train nothing: build the table from the runs ROOT/seed<N>/summary.json already holds '
    '(e.g. seeds trained at once on one GPU by scripts/gpu_check.sh).',
  )
  args, extra = parser.parse_known_args()
  extra = [a for a in extra if a != '--']
  seeds = [int(s) for s in args.seeds.split(',')]
  summaries = []
  for seed in seeds:
    workdir = os.path.join(args.root, f'seed{seed}')
    if args.table_only:
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
      f'--config={args.config}',
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
  os.makedirs(args.root, exist_ok=True)
  with open(os.path.join(args.root, 'table.md'), 'w') as f:
    f.write(f'`{" ".join(["python", "scripts/seeds.py", *sys.argv[1:]])}`\n\n{table}')
  print(table)
  return 0


if __name__ == '__main__':
  sys.exit(main())
