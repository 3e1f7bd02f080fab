"""analysis.py: one command's PNGs from a workdir, finished or not, and its one-line errors."""

import json
import os
import shutil
import subprocess
import sys

from absl.testing import absltest

import analysis
import errors
import train
from tests import testutil


class AnalyseWorkdirTest(absltest.TestCase):
  def _analyse(self, workdir, summary):
    result = analysis.analyse_workdir(workdir)
    for name in ('curves.png', 'misclassified.png', 'confusion.png', 'per_class.png'):
      self.assertGreater(os.path.getsize(os.path.join(workdir, name)), 1000, name)
    # Re-evaluating the last checkpoint reproduces the run's own final figures.
    self.assertEqual(result['epoch'], summary['epochs'])
    self.assertAlmostEqual(result['test_accuracy'], summary['final_test_accuracy'])
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      last = [json.loads(line) for line in f][-1]
    self.assertAlmostEqual(result['test_loss'], last['test_loss'], places=5)
    return result

  def test_reference_run(self):
    _, reference, summary = testutil.reference_run()
    workdir = os.path.join(self.create_tempdir().full_path, 'run')
    shutil.copytree(reference, workdir)  # The reference workdir is shared: analyse a copy.
    result = self._analyse(workdir, summary)
    self.assertLen(result['per_class'], 10)

  def test_a_run_scored_on_ema_weights_is_analysed_on_them(self):
    data_dir = testutil.write_idx_dir(self.create_tempdir().full_path, 48, 20)
    config = testutil.tiny_config(data_dir, ema_decay=0.9)
    workdir = self.create_tempdir().full_path
    summary = train.train_and_evaluate(config, workdir)
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      self.assertIn('test_accuracy_raw', json.loads(f.readline()))
    self._analyse(workdir, summary)  # The raw weights would give another loss.

  def test_a_run_saved_before_the_later_fields_existed_is_analysed(self):
    _, reference, summary = testutil.reference_run()
    workdir = os.path.join(self.create_tempdir().full_path, 'run')
    shutil.copytree(reference, workdir)
    path = os.path.join(workdir, 'config.json')
    with open(path) as f:
      config = json.load(f)
    for field in ('ema_decay', 'swa_from_epoch', 'swa_learning_rate', 'elastic_alpha'):
      del config[field]
    with open(path, 'w') as f:
      json.dump(config, f)
    self._analyse(workdir, summary)


class UnfinishedAndBadWorkdirsTest(absltest.TestCase):
  def test_an_unfinished_run_is_analysed_from_its_newest_checkpoint(self):
    _, reference, summary = testutil.reference_run()
    workdir = os.path.join(self.create_tempdir().full_path, 'run')
    shutil.copytree(reference, workdir)
    os.remove(os.path.join(workdir, 'summary.json'))  # As if still training.
    result = analysis.analyse_workdir(workdir)
    self.assertEqual(result['epoch'], 2)
    self.assertAlmostEqual(result['test_accuracy'], summary['final_test_accuracy'])
    self.assertFalse(os.path.exists(os.path.join(workdir, 'summary.json')))

  def test_what_cannot_be_analysed_is_one_error_and_nothing_is_created(self):
    started = self.create_tempdir().full_path
    with open(os.path.join(started, 'config.json'), 'w') as f:
      json.dump(testutil.tiny_config('/nowhere').to_dict(), f)
    cases = {
      '/no/such/workdir': 'does not exist',
      self.create_tempdir().full_path: 'holds no config.json or summary.json',
      started: 'has no checkpoints/ yet',
    }
    for workdir, message in cases.items():
      with self.subTest(message):
        before = sorted(os.listdir(workdir)) if os.path.isdir(workdir) else None
        with self.assertRaisesRegex(errors.ConfigError, message):
          analysis.analyse_workdir(workdir)
        after = sorted(os.listdir(workdir)) if os.path.isdir(workdir) else None
        self.assertEqual(after, before)

  def test_the_command_prints_one_line(self):
    proc = subprocess.run(
      [sys.executable, 'analysis.py', '--workdir=/no/such/workdir'],
      cwd=testutil.REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    self.assertEqual(proc.returncode, 1)
    self.assertEqual(proc.stderr.strip(), "error: workdir '/no/such/workdir' does not exist.")


if __name__ == '__main__':
  absltest.main()
