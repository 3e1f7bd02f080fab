"""plots.py: the confusion matrix, and each figure written as a PNG without temp leftovers."""

import os

import numpy as np
from absl.testing import absltest

import plots


class ConfusionTest(absltest.TestCase):
  def test_counts_true_rows_against_predicted_columns(self):
    labels = np.array([0, 0, 1, 2, 2, 2])
    preds = np.array([0, 1, 1, 2, 0, 2])
    m = plots.confusion_matrix(labels, preds, num_classes=3)
    np.testing.assert_array_equal(m, [[1, 1, 0], [0, 1, 0], [1, 0, 2]])
    self.assertEqual(m.sum(), len(labels))


class FiguresTest(absltest.TestCase):
  def setUp(self):
    super().setUp()
    self.folder = self.create_tempdir().full_path
    rng = np.random.default_rng(0)
    self.images = rng.integers(0, 256, (30, 28, 28), np.uint8)
    self.labels = np.arange(30) % 10
    self.preds = np.where(np.arange(30) < 4, (self.labels + 1) % 10, self.labels)

  def _png(self, name):
    path = os.path.join(self.folder, name)
    with open(path, 'rb') as f:
      self.assertEqual(f.read(8), b'\x89PNG\r\n\x1a\n', name)
    return path

  def test_each_figure_is_a_png(self):
    history = [
      {'epoch': e, 'train_loss': 1 / e, 'test_loss': 1.2 / e, 'train_accuracy': 0.98,
       'test_accuracy': 0.99, 'test_accuracy_raw': 0.985}
      for e in (1, 2, 3)
    ]  # fmt: skip
    plots.plot_curves(history, os.path.join(self.folder, 'curves.png'))
    wrong = plots.plot_misclassified(
      self.images, self.labels, self.preds, os.path.join(self.folder, 'mis.png')
    )
    self.assertEqual(wrong, 4)
    counts = plots.plot_confusion(self.labels, self.preds, os.path.join(self.folder, 'conf.png'))
    self.assertEqual(counts.sum(), 30)
    acc = plots.plot_per_class(self.labels, self.preds, os.path.join(self.folder, 'per.png'))
    np.testing.assert_allclose(acc[:4], 2 / 3)
    np.testing.assert_allclose(acc[4:], 1.0)
    for name in ('curves.png', 'mis.png', 'conf.png', 'per.png'):
      self._png(name)
    self.assertLen(os.listdir(self.folder), 4)  # No temp file left behind.


if __name__ == '__main__':
  absltest.main()
