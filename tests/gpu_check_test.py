"""scripts/gpu_check.sh, dry-run on the CPU: seed 0 alone, then the others, then the table.

The same script ran issue 4's GPU figures (docs/gpu/); here it trains two one-epoch runs on a
16-image IDX folder, so that what it writes (the seed table, the runs' archive) is checked.
"""

import os
import subprocess
import sys
import tarfile

from absl.testing import absltest

from tests import testutil

SCRIPT = os.path.join(testutil.REPO_ROOT, 'scripts', 'gpu_check.sh')
TINY_RUN = '--config.num_epochs=1 --config.batch_size=8 --config.eval_batch_size=8'


class GpuCheckDryRunTest(absltest.TestCase):
  def test_trains_each_seed_and_writes_table_and_archive(self):
    tmp = self.create_tempdir().full_path
    testutil.write_idx_dir(f'{tmp}/idx', num_train=16, num_test=8)
    env = dict(
      os.environ,
      OUT=f'{tmp}/out',
      DATA=f'{tmp}/idx',
      PYTHON=sys.executable,
      TRAIN_ARGS=f'{TINY_RUN} --config.steps_per_call=1',
      SEEDS='1',
      BENCH='0',
      WHEELS=f'{tmp}/no_wheels',  # Never install anything here.
      JAX_PLATFORMS='cpu',
    )
    proc = subprocess.run(
      ['bash', SCRIPT, 'tiny'],
      cwd=testutil.REPO_ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=600,
    )
    self.assertEqual(proc.returncode, 0, proc.stdout[-3000:] + proc.stderr[-3000:])
    self.assertIn('tiny seed 0 alone:', proc.stdout)
    with open(f'{tmp}/out/tiny.md') as f:
      table = f.read()
    self.assertIn('| 0 | 7,442 |', table)
    self.assertIn('| 1 | 7,442 |', table)
    self.assertIn('seeds reaching 99.4 %', table)
    with tarfile.open(f'{tmp}/out/runs.tar.gz') as tar:
      names = set(tar.getnames())
    for seed in (0, 1):
      for name in ('summary.json', 'metrics.jsonl', 'log.txt'):
        self.assertIn(f'./tiny/seed{seed}/{name}', names)
    self.assertFalse(any('checkpoints' in n for n in names), 'checkpoints are left out')
    with open(f'{tmp}/out/env.txt') as f:
      self.assertIn('jax ', f.read())

  def test_a_failing_seed_zero_is_reported_not_hidden(self):
    tmp = self.create_tempdir().full_path
    env = dict(
      os.environ,
      OUT=f'{tmp}/out',
      DATA=f'{tmp}/missing',
      PYTHON=sys.executable,
      BENCH='0',
      WHEELS=f'{tmp}/no_wheels',
    )
    proc = subprocess.run(
      ['bash', SCRIPT, 'mnist'],
      cwd=testutil.REPO_ROOT,
      env=dict(env, JAX_PLATFORMS='cpu'),
      capture_output=True,
      text=True,
      timeout=300,
    )
    self.assertIn('mnist seed 0 failed:', proc.stdout)
    self.assertFalse(os.path.exists(f'{tmp}/out/mnist.md'))


if __name__ == '__main__':
  absltest.main()
