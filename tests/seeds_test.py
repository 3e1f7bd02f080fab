"""scripts/seeds.py --table_only: the seed table from finished runs, with no training."""

import json
import os
import shutil
import statistics
import subprocess
import sys

from absl.testing import absltest

import metrics
from tests import testutil

TINY_RUNS = os.path.join(testutil.REPO_ROOT, 'docs', 'runs', 'tiny')
GPU_MNIST_RUNS = os.path.join(testutil.REPO_ROOT, 'docs', 'gpu', 'h200_2026-11-28', 'mnist')


def _run(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, '-m', 'scripts.seeds', *args],
    cwd=testutil.REPO_ROOT, capture_output=True, text=True, timeout=60,
  )  # fmt: skip


def _files(root: str) -> dict[str, bytes]:
  """Every file under root (relative path -> bytes), to see that a run wrote nothing there."""
  out = {}
  for d, _, names in os.walk(root):
    for name in names:
      path = os.path.join(d, name)
      with open(path, 'rb') as f:
        out[os.path.relpath(path, root)] = f.read()
  return out


def _summary(root: str, seed: int) -> dict:
  with open(os.path.join(root, f'seed{seed}', 'summary.json')) as f:
    return json.load(f)


class TableOnlyTest(absltest.TestCase):
  def test_table_holds_each_finished_run_in_seed_order(self):
    root = self.create_tempdir().full_path
    for seed in (3, 0):
      shutil.copytree(os.path.join(TINY_RUNS, f'seed{seed}'), os.path.join(root, f'seed{seed}'))
    before = _files(root)
    proc = _run('--table_only', '--seeds=3,0', f'--root={root}')
    self.assertEqual(proc.returncode, 0, proc.stderr)
    after = _files(root)
    self.assertIn('table.md', after)
    del after['table.md']
    self.assertEqual(after, before)  # The runs are read, never trained or rewritten.
    summaries = [_summary(root, seed) for seed in (3, 0)]
    rows = [
      line
      for line in proc.stdout.splitlines()
      if line.startswith('| 3 ') or line.startswith('| 0 ')
    ]
    self.assertEqual(rows, [metrics.row(s) for s in summaries])
    self.assertIn(metrics.footer(summaries), proc.stdout)
    with open(os.path.join(root, 'table.md')) as f:
      self.assertIn(metrics.row(summaries[0]), f.read())

  def test_timings_row_holds_seed0_timings_and_every_seeds_accuracy(self):
    root = self.create_tempdir().full_path
    for seed in (0, 1):
      shutil.copytree(
        os.path.join(GPU_MNIST_RUNS, f'seed{seed}'), os.path.join(root, f'seed{seed}')
      )
    proc = _run('--table_only', '--timings', '--seeds=0,1', f'--root={root}')
    self.assertEqual(proc.returncode, 0, proc.stderr)
    self.assertIn(metrics.TIMING_HEADER, proc.stdout)
    s0, s1 = (_summary(root, seed) for seed in (0, 1))
    with open(os.path.join(root, 'seed0', 'metrics.jsonl')) as f:
      later_epochs = [json.loads(line) for line in f][1:]
    (row,) = [ln for ln in proc.stdout.splitlines() if ln.startswith(f'| {s0["params"]:,} |')]
    cells = [c.strip() for c in row.strip('|').split('|')]
    finals = f'{100 * s0["final_test_accuracy"]:.2f} / {100 * s1["final_test_accuracy"]:.2f}'
    self.assertEqual(cells[1], finals)
    self.assertEqual(cells[5], f'{s0["train_seconds_to_target"]:.2f}')
    self.assertEqual(cells[6], f'{statistics.median(r["train_seconds"] for r in later_epochs):.2f}')
    self.assertEqual(cells[9], f'{s0["compile_seconds"]:.1f}')
    with open(os.path.join(root, 'table.md')) as f:
      self.assertIn(row, f.read())

  def test_arguments_after_double_dash_go_to_train_py(self):
    # An unknown config field makes train.py stop at start-up, naming the field it was given.
    root = self.create_tempdir().full_path
    proc = _run('--seeds=0', f'--root={root}', '--', '--config.no_such_field=1')
    self.assertEqual(proc.returncode, 1)
    self.assertIn('seed 0: train.py failed', proc.stderr)
    self.assertIn('no_such_field', proc.stderr)

  def test_a_missing_run_is_an_error_not_a_training(self):
    root = self.create_tempdir().full_path
    proc = _run('--table_only', '--seeds=7', f'--root={root}')
    self.assertEqual(proc.returncode, 1)
    self.assertIn('seed 7: no finished run', proc.stderr)
    self.assertEqual(os.listdir(root), [])


if __name__ == '__main__':
  absltest.main()
