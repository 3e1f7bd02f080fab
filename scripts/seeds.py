"""Runs one config over several seeds and prints the accuracy table (CPU or GPU alike).

  python -m scripts.seeds --config=configs/mnist.py --seeds=0,1,2,3,4 \
      --root=workdirs/mnist -- --config.data_dir=../shared/mnist

Each seed trains in its own process into ROOT/seed<N> (rerunning resumes or, for a finished
run, only re-reads it). One line per run is printed as it finishes (its last column: seconds
from the process start to 99.4 %, imports, data and compile included); at the end the
Markdown table is printed and written to ROOT/table.md. Arguments after `--` go to train.py.

`--table_only` trains nothing and tabulates the runs ROOT already holds; `--timings` adds the
timing row (the README's GPU table: seed 0's seconds to 99.4 %, per epoch, images/s).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from absl import app, flags

from metrics import (
  HEADER,
  TIMING_HEADER,
  WALL_HEADER,
  footer,
  has_wall_seconds,
  read_history,
  table_row,
  timing_row,
  write_text,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = flags.FLAGS


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
    print(
      f'{table_row(summary, has_wall_seconds([summary]))}  ({time.time() - t0:.0f} s wall)',
      flush=True,
    )
  wall = has_wall_seconds(summaries)
  rows = [table_row(s, wall) for s in summaries]
  table = '\n'.join([WALL_HEADER if wall else HEADER, *rows]) + f'\n\n{footer(summaries)}\n'
  if FLAGS.timings:
    history = read_history(os.path.join(FLAGS.root, f'seed{seeds[0]}', 'metrics.jsonl'))
    table += f'\n{TIMING_HEADER}\n{timing_row(summaries, history)}\n'
  os.makedirs(FLAGS.root, exist_ok=True)
  command = ' '.join(['python', '-m', 'scripts.seeds', *sys.argv[1:]])
  write_text(os.path.join(FLAGS.root, 'table.md'), f'`{command}`\n\n{table}')
  print(table)
  return 0


if __name__ == '__main__':
  _define_flags()
  app.run(main)
