"""Plots a person can look at, from any workdir of train.py, finished or not.

  python analysis.py --workdir=/tmp/mnist [--data_dir=../shared/mnist]

re-evaluates the workdir's newest good checkpoint on the test set and writes curves.png,
misclassified.png, confusion.png and per_class.png into the workdir. It reads the run's config
from config.json (written when the run starts), so an unfinished run can be analysed too, and
it creates nothing in the workdir but those four files.
"""

from __future__ import annotations

import functools
import json
import os
import sys

import ml_collections

import checkpointing
import input_pipeline
import metrics
import plots
import startup
import train
from errors import ConfigError, UserError


def run_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run was started with: workdir/config.json, else its summary.json's."""
  if not os.path.isdir(workdir):
    raise ConfigError(f'workdir {workdir!r} does not exist.')
  for name, key in (('config.json', None), ('summary.json', 'config')):
    path = os.path.join(workdir, name)
    if os.path.exists(path):
      try:
        with open(path) as f:
          saved = json.load(f)
        config = ml_collections.ConfigDict(saved[key] if key else saved)
      except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f'{path} is unreadable ({type(e).__name__}: {e}).') from e
      # A run from before a field existed trained as that field's value here says.
      for field, value in checkpointing.FIELDS_ADDED_LATER.items():
        if field not in config:
          config[field] = value
      return config
  raise ConfigError(
    f'{workdir!r} holds no config.json or summary.json: not a train.py workdir, or one whose '
    'run never started.'
  )


def analyse_workdir(workdir: str, data_dir: str | None = None) -> dict:
  """Re-evaluates the workdir's newest good checkpoint and writes all four PNGs."""
  import jax

  config = run_config(workdir)
  if data_dir is not None:
    config.data_dir = data_dir
  if not os.path.isdir(os.path.join(workdir, 'checkpoints')):
    raise ConfigError(f'{workdir!r} has no checkpoints/ yet: no epoch has finished.')
  test = input_pipeline.get_datasets(
    config.data_dir,
    config.get('data_url', input_pipeline.MNIST_URL),
    config.get('download_dir', ''),
  )['test']
  state = train.create_train_state(jax.random.key(0), config, 60_000 // config.batch_size)
  manager = checkpointing.checkpoint_manager(workdir, 1000, create=False)
  state, epoch = checkpointing.restore_latest(manager, state)
  if epoch == 0:
    raise ConfigError(f'{workdir!r}: checkpoints/ holds no checkpoint yet.')
  test_metrics, preds = train.evaluate(
    jax.jit(functools.partial(train.eval_step, ema=config.ema_decay > 0)),
    state,
    test.images,
    test.labels,
    config.eval_batch_size,
  )
  history = metrics.read_history(os.path.join(workdir, 'metrics.jsonl'))
  if history:
    plots.plot_curves(history, os.path.join(workdir, 'curves.png'))
  plots.plot_misclassified(
    test.images, test.labels, preds, os.path.join(workdir, 'misclassified.png')
  )
  plots.plot_confusion(test.labels, preds, os.path.join(workdir, 'confusion.png'))
  acc = plots.plot_per_class(test.labels, preds, os.path.join(workdir, 'per_class.png'))
  return {
    'epoch': epoch,
    'test_accuracy': test_metrics['accuracy'],
    'test_loss': test_metrics['loss'],
    'per_class': acc.tolist(),
  }


if __name__ == '__main__':
  from absl import app, flags

  flags.DEFINE_string('workdir', None, 'A train.py workdir, finished or not.')
  flags.DEFINE_string('data_dir', None, 'IDX folder, if not the one in the run config.')
  flags.mark_flags_as_required(['workdir'])
  startup.define_flag()

  def main(argv):
    del argv
    checkpointing.ignore_failed_read_noise()
    startup.quiet_start()
    startup.enable_compile_cache(flags.FLAGS.compile_cache)
    try:
      result = analyse_workdir(flags.FLAGS.workdir, flags.FLAGS.data_dir)
    except UserError as e:
      sys.exit(f'error: {e}')
    print(f'epoch {result["epoch"]}: test accuracy {100 * result["test_accuracy"]:.2f} %')
    for digit, acc in enumerate(result['per_class']):
      print(f'  digit {digit}: {100 * acc:.2f} %')

  app.run(main)
