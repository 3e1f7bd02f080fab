"""analysis.py: one command's PNGs from a workdir, finished or not, and its one-line errors."""

import json
import os
import shutil

from absl.testing import absltest

import analysis
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


if __name__ == '__main__':
  absltest.main()
