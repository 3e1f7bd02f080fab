"""scripts/gpu_check.sh, dry-run on the CPU: seed 0 alone, then the others, then the table.

The same script ran issue 4's GPU figures (docs/gpu/); here it trains one-epoch runs on a
16-image IDX folder, so that what it writes (the seed table, the timing row, the XLA flag sets'
rows, the runs' archive) is checked; and every set of scripts/xla_gpu_sets.txt must parse.
"""

import os
import subprocess
import sys
import tarfile

from absl.testing import absltest

import metrics
from tests import testutil

SCRIPT = os.path.join(testutil.REPO_ROOT, 'scripts', 'gpu_check.sh')
TINY_RUN = '--config.num_epochs=1 --config.batch_size=8 --config.eval_batch_size=8'
GPU_SETS = os.path.join(testutil.REPO_ROOT, 'scripts', 'xla_gpu_sets.txt')


def flag_sets(path: str) -> list[tuple[str, str]]:
  """(name, XLA_FLAGS) per line of an XLA_SETS file, as gpu_check.sh reads it."""
  with open(path) as f:
    lines = [line.split(maxsplit=1) for line in f if line.strip() and not line.startswith('#')]
  return [(parts[0], parts[1].strip() if len(parts) > 1 else '') for parts in lines]


class GpuCheckDryRunTest(absltest.TestCase):
  def test_trains_each_seed_and_writes_table_and_archive(self):
    tmp = self.create_tempdir().full_path
    testutil.write_idx_dir(f'{tmp}/idx', num_train=16, num_test=8)
    with open(f'{tmp}/sets.txt', 'w') as f:
      f.write('# a comment\nbase\n\nfastmath --xla_cpu_enable_fast_math=true\n')
      f.write('bogus --xla_no_such_flag=1\n')
    env = dict(
      os.environ,
      OUT=f'{tmp}/out',
      DATA=f'{tmp}/idx',
      PYTHON=sys.executable,
      TRAIN_ARGS=f'{TINY_RUN} --config.steps_per_call=1',
      SEEDS='1',
      BENCH='0',
      XLA_SETS=f'{tmp}/sets.txt',
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
    self.assertIn(metrics.TIMING_HEADER, table)
    self.assertIn('| 7,442 | ', table.split(metrics.TIMING_HEADER)[1])
    with open(f'{tmp}/out/xla_sets.md') as f:
      sections = f.read().split('\n## ')[1:]
    self.assertLen(sections, 3)
    for section, name in zip(sections[:2], ('base', 'fastmath'), strict=True):
      self.assertTrue(section.startswith(f'{name}: XLA_FLAGS='), section)
      self.assertIn(metrics.TIMING_HEADER, section)
      self.assertIn('| 7,442 | ', section)  # The run's timing row.
    self.assertIn('--xla_cpu_enable_fast_math=true', sections[1])
    self.assertTrue(sections[2].startswith('bogus: XLA_FLAGS=--xla_no_such_flag=1 FAILED'))
    with tarfile.open(f'{tmp}/out/runs.tar.gz') as tar:
      names = set(tar.getnames())
    for seed in (0, 1):
      for name in ('summary.json', 'metrics.jsonl', 'log.txt'):
        self.assertIn(f'./tiny/seed{seed}/{name}', names)
    for name in ('base', 'fastmath'):
      self.assertIn(f'./xla/{name}/seed0/summary.json', names)
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


def _xla_parses(flags: str) -> subprocess.CompletedProcess:
  """Starts JAX's CPU backend with XLA_FLAGS=flags: XLA parses all its flags (GPU ones too)."""
  return subprocess.run(
    [sys.executable, '-c', 'import jax; jax.devices()'],
    env=dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS='cpu'),
    capture_output=True,
    text=True,
    timeout=120,
  )


class XlaGpuSetsTest(absltest.TestCase):
  def test_every_set_names_real_flags_with_valid_values(self):
    sets = flag_sets(GPU_SETS)
    self.assertGreaterEqual(len(sets), 2)
    self.assertEqual(sets[0], ('base', ''), 'the first set is the baseline, no flags')
    self.assertLen({name for name, _ in sets}, len(sets))
    for name, flags in sets:
      with self.subTest(name=name):
        proc = _xla_parses(flags)
        self.assertEqual(proc.returncode, 0, proc.stderr[-1500:])

  def test_the_flag_check_catches_a_bad_value(self):
    self.assertNotEqual(_xla_parses('--xla_gpu_graph_min_graph_size=abc').returncode, 0)


if __name__ == '__main__':
  absltest.main()
