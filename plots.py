"""Figures of a training run, as pure functions of its records and predictions: training
curves, misclassified digits, the confusion matrix, per-class accuracy. Each writes one PNG.
The trainer draws the first two at the end of a run; `analysis.py` draws all four."""

from __future__ import annotations

import itertools
import os

import matplotlib

matplotlib.use('Agg')  # Files only; never needs a display.
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from metrics import TARGET, TARGET_ACCURACY, write_atomically  # noqa: E402


def _save(fig, path: str) -> None:
  """Writes `fig` as a PNG, atomically, and frees it."""
  try:
    write_atomically(path, lambda tmp: fig.savefig(tmp, format='png', dpi=120, bbox_inches='tight'))
  finally:
    plt.close(fig)


def plot_curves(history: list[dict], path: str) -> None:
  """Loss and accuracy (train and test) per epoch, from metrics.jsonl records."""
  epochs = [r['epoch'] for r in history]
  fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
  ax_loss.plot(epochs, [r['train_loss'] for r in history], 'o-', label='train')
  ax_loss.plot(epochs, [r['test_loss'] for r in history], 's-', label='test')
  ax_loss.set(xlabel='epoch', ylabel='cross-entropy', yscale='log', title='loss')
  ax_acc.plot(epochs, [100 * r['train_accuracy'] for r in history], 'o-', label='train')
  ema = all('test_accuracy_raw' in r for r in history) and bool(history)
  ax_acc.plot(
    epochs,
    [100 * r['test_accuracy'] for r in history],
    's-',
    label='test (EMA weights)' if ema else 'test',
  )
  if ema:  # config.ema_decay > 0: the trained weights' accuracy beside the average's.
    ax_acc.plot(epochs, [100 * r['test_accuracy_raw'] for r in history], '^:', label='test (raw)')
  ax_acc.axhline(100 * TARGET_ACCURACY, color='gray', ls='--', lw=1, label=TARGET)
  ax_acc.set(xlabel='epoch', ylabel='accuracy (%)', title='accuracy', ylim=(97, 100))
  for ax in (ax_loss, ax_acc):
    ax.grid(alpha=0.3)
    ax.legend()
  _save(fig, path)


def plot_misclassified(
  images: np.ndarray, labels: np.ndarray, preds: np.ndarray, path: str, max_images: int = 64
) -> int:
  """A grid of misclassified test digits titled 'label→prediction'; returns how many."""
  wrong = np.flatnonzero(preds != labels)
  shown = wrong[:max_images]
  cols = 8
  rows = max(1, int(np.ceil(len(shown) / cols)))
  fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.2, rows * 1.35))
  for ax in np.ravel(axes):
    ax.axis('off')
  for ax, i in zip(np.ravel(axes), shown, strict=False):
    ax.imshow(images[i], cmap='gray_r')
    ax.set_title(f'{labels[i]}→{preds[i]}', fontsize=9, color='crimson')
  fig.suptitle(f'{len(wrong)} of {len(labels)} test digits misclassified (label→prediction)')
  _save(fig, path)
  return len(wrong)


def plot_run(workdir: str, history: list[dict], images, labels, preds) -> None:
  """The end-of-run figures: workdir/curves.png and workdir/misclassified.png."""
  plot_curves(history, os.path.join(workdir, 'curves.png'))
  plot_misclassified(images, labels, preds, os.path.join(workdir, 'misclassified.png'))


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int = 10) -> np.ndarray:
  """counts[true, predicted]."""
  counts = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(counts, (labels, preds), 1)
  return counts


def plot_confusion(labels: np.ndarray, preds: np.ndarray, path: str) -> np.ndarray:
  """The confusion matrix as a heat map (log colour scale), with counts in the cells."""
  counts = confusion_matrix(labels, preds)
  fig, ax = plt.subplots(figsize=(6.5, 5.5))
  im = ax.imshow(np.log1p(counts), cmap='Blues')
  for t in range(10):
    for p in range(10):
      if counts[t, p]:
        ax.text(
          p,
          t,
          counts[t, p],
          ha='center',
          va='center',
          fontsize=8,
          color='white' if t == p else 'black',
        )
  ax.set(
    xlabel='predicted',
    ylabel='true',
    xticks=range(10),
    yticks=range(10),
    title='confusion matrix (test set)',
  )
  fig.colorbar(im, ax=ax, label='log(1 + count)')
  _save(fig, path)
  return counts


def plot_per_class(labels: np.ndarray, preds: np.ndarray, path: str) -> np.ndarray:
  """Per-class test accuracy as a bar chart; returns the accuracies (NaN: class absent)."""
  counts = confusion_matrix(labels, preds)
  totals = counts.sum(1)
  acc = np.diag(counts) / np.where(totals > 0, totals, np.nan)
  fig, ax = plt.subplots(figsize=(7, 3.5))
  ax.bar(range(10), 100 * acc)
  for c, a in enumerate(acc):
    ax.text(c, 100 * a, f'{100 * a:.2f}', ha='center', va='bottom', fontsize=8)
  ax.set(
    xlabel='digit',
    ylabel='accuracy (%)',
    xticks=range(10),
    ylim=(98, 100.2),
    title='per-class test accuracy',
  )
  _save(fig, path)
  return acc


# Published small-CNN MNIST results: single runs, reported as the best test epoch (so chosen on
# the test set), the published small nets we know of. (parameters, accuracy %, label)
PUBLISHED_SINGLE_RUNS = (
  (1_936, 99.10, 'separable convs'),
  (3_762, 99.52, 'last of 15 epochs, batch 32, shift/scale/rotation/brightness jitter'),
  (4_862, 99.07, 'separable convs'),
  (6_260, 99.54, '~6.2k'),
  (7_070, 99.40, '> 99.4 %'),
  (14_372, 99.57, ''),
  (19_898, 99.54, ''),
)


def plot_frontier(configs: list[dict], path: str) -> None:
  """Parameters (log scale) against final test accuracy: each config's mean over its seeds with
  a min-max bar (`configs`: name, params, finals in %), beside the published single runs.
  Configs with the same parameter count are drawn side by side, not on top of each other."""
  fig, ax = plt.subplots(figsize=(8, 4.8))
  by_size = itertools.groupby(sorted(configs, key=lambda c: c['params']), lambda c: c['params'])
  for params, same in by_size:
    same = list(same)
    for i, c in enumerate(same):
      mean, low, high = np.mean(c['finals']), min(c['finals']), max(c['finals'])
      # One size's configs (the default's net under three recipes) sit side by side, 3 % apart.
      x = params * 1.03 ** (i - (len(same) - 1) / 2)
      ax.errorbar(
        x, mean, yerr=[[mean - low], [high - mean]], fmt='o', capsize=4,
        label=f'{c["name"]} ({len(c["finals"])} seeds, final epoch)',
      )  # fmt: skip
  params, accs, _ = zip(*PUBLISHED_SINGLE_RUNS, strict=True)
  ax.scatter(params, accs, marker='x', color='gray', label='published, one run each')
  ax.axhline(100 * TARGET_ACCURACY, color='gray', ls='--', lw=1)
  ax.set(
    xscale='log',
    xlabel='parameters',
    ylabel='test accuracy (%)',
    title='MNIST accuracy per parameter',
    ylim=(99.0, 99.8),
  )
  ax.grid(alpha=0.3, which='both')
  ax.legend(fontsize=8, loc='lower right')
  _save(fig, path)
