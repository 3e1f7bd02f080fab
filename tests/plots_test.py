"""plots.py: the confusion matrix, and each figure written as a PNG without temp leftovers."""

import os
from unittest import mock

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

  def test_frontier_spreads_configs_of_one_size_around_it(self):
    configs = [
      {'name': 'a', 'params': 19_290, 'finals': [99.5, 99.6]},
      {'name': 'b', 'params': 3_978, 'finals': [99.3]},
      {'name': 'c', 'params': 19_290, 'finals': [99.6, 99.7]},
    ]
    with mock.patch.object(plots, '_save') as save:
      plots.plot_frontier(configs, os.path.join(self.folder, 'frontier.png'))
    (fig, _), _ = save.call_args
    points = {
      bar.get_label().split()[0]: (bar.lines[0].get_xdata()[0], bar.lines[0].get_ydata()[0])
      for bar in fig.axes[0].containers
    }
    self.assertEqual(points['b'], (3_978, 99.3))  # Alone at its size: at its count.
    (xa, ya), (xc, yc) = points['a'], points['c']
    self.assertLess(xa, 19_290)
    self.assertGreater(xc, 19_290)
    self.assertAlmostEqual(xa * xc, 19_290**2, delta=1e-6 * 19_290**2)  # Even on the log axis.
    self.assertEqual((ya, yc), (99.55, 99.65))


if __name__ == '__main__':
  absltest.main()
