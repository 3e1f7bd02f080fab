"""Every check that can be made before training, so that no epoch is lost to a setting that
could never work. Each failure is one ConfigError naming the field and what it must be."""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import socket
import time

import jax
import ml_collections
from absl import logging
from etils import epath

import input_pipeline
import metrics
from configs import mnist
from errors import ConfigError
from nets import cnn, cnn_backprop

# jax.random.key takes a 64-bit signed integer.
SEED_RANGE = (-(2**63), 2**63 - 1)
SEED_REQUIREMENT = f'must be an integer in [{SEED_RANGE[0]}, {SEED_RANGE[1]}] (64-bit signed)'
MNIST_TEST_IMAGES = input_pipeline.EXPECTED_COUNTS['test']


def _swa_checks(config: ml_collections.ConfigDict) -> list[tuple[str, bool, str]]:
  """validate_config's checks of SWA settings that would do nothing without another field."""
  return [
    (
      'swa_from_epoch',
      not config.swa_from_epoch or config.ema_decay > 0,
      'needs ema_decay > 0 (the averaged weights it sets are those evaluation uses)',
    ),
    (
      'swa_learning_rate',
      not config.swa_learning_rate or config.swa_from_epoch >= 1,
      'needs swa_from_epoch >= 1 (the epoch the held rate starts)',
    ),
  ]


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Refuses out-of-range values before anything is compiled; each message names the field."""
  checks = [
    ('num_epochs', config.num_epochs >= 1, 'must be >= 1'),
    ('batch_size', config.batch_size >= 1, 'must be >= 1'),
    ('eval_batch_size', config.eval_batch_size >= 1, 'must be >= 1'),
    ('learning_rate', 0 < config.learning_rate < math.inf, 'must be a finite number > 0'),
    ('warmup_fraction', 0 <= config.warmup_fraction < 1, 'must be in [0, 1)'),
    ('momentum', 0 <= config.momentum < 1, 'must be in [0, 1)'),
    ('weight_decay', 0 <= config.weight_decay < math.inf, 'must be a finite number >= 0'),
    ('label_smoothing', 0 <= config.label_smoothing < 1, 'must be in [0, 1)'),
    ('ema_decay', 0 <= config.ema_decay < 1, 'must be in [0, 1) (0 = off)'),
    (
      'swa_from_epoch',
      0 <= config.swa_from_epoch <= config.num_epochs,
      'must be in [0, num_epochs]',
    ),
    ('swa_learning_rate', 0 <= config.swa_learning_rate < math.inf, 'must be finite and >= 0'),
    ('dropout_rate', 0 <= config.dropout_rate < 1, 'must be in [0, 1)'),
    ('max_degrees', 0 <= config.max_degrees <= 180, 'must be in [0, 180]'),
    ('max_shift', 0 <= config.max_shift <= 14, 'must be in [0, 14] pixels'),
    ('max_scale', 0 <= config.max_scale < 1, 'must be in [0, 1) (0 = off)'),
    ('max_brightness', 0 <= config.max_brightness < 1, 'must be in [0, 1) (0 = off)'),
    ('max_contrast', 0 <= config.max_contrast < 1, 'must be in [0, 1) (0 = off)'),
    (
      'elastic_alpha',
      0 <= config.elastic_alpha < math.inf,
      'must be a finite number >= 0 (0 = off)',
    ),
    ('elastic_sigma', 0 < config.elastic_sigma <= 14, 'must be in (0, 14] pixels'),
    ('clean_epochs', 0 <= config.clean_epochs < config.num_epochs, 'must be in [0, num_epochs)'),
    ('steps_per_call', config.steps_per_call >= 0, 'must be >= 0 (0 = auto)'),
    ('checkpoints_to_keep', config.checkpoints_to_keep >= 1, 'must be >= 1'),
    ('seed', SEED_RANGE[0] <= config.seed <= SEED_RANGE[1], SEED_REQUIREMENT),
    ('gradients', config.gradients in ('autodiff', 'hand'), "must be 'autodiff' or 'hand'"),
  ]
  for field, ok, requirement in checks + _swa_checks(config):
    if not ok:
      raise ConfigError(f'config.{field}={config[field]!r} {requirement}.')
  try:
    cnn.layers_of(config.arch)
  except ValueError as e:
    raise ConfigError(f'config.arch={config.arch!r}: {e}') from None
  if config.gradients == 'hand':
    cnn_backprop.check_layers(cnn.layers_of(config.arch))
  if config.data_dir and not os.path.isdir(config.data_dir):
    raise ConfigError(f'config.data_dir={config.data_dir!r} is not an existing folder.')
  devices = jax.device_count()
  for field in ('batch_size', 'eval_batch_size'):
    if config[field] % devices:
      raise ConfigError(f'config.{field}={config[field]} is not divisible by {devices} devices.')


def validate_data(config: ml_collections.ConfigDict, data: dict[str, input_pipeline.Split]):
  """The checks that need the data set, made before anything trains."""
  num_train, num_test = len(data['train'].labels), len(data['test'].labels)
  if num_train < config.batch_size:
    raise ConfigError(
      f'config.batch_size={config.batch_size} exceeds the {num_train} training examples.'
    )
  if num_test == 0:
    raise ConfigError('the test set holds no images: nothing to evaluate on.')
  if config.eval_batch_size > max(num_test, jax.device_count()):
    raise ConfigError(
      f'config.eval_batch_size={config.eval_batch_size} exceeds the {num_test} test images.'
    )
  if num_test != MNIST_TEST_IMAGES:
    logging.warning(
      "The test set has %d images, not MNIST's %s: its accuracy moves in steps of %.3g %%, so "
      'it cannot measure the 99.4 %% target as the full test set does.',
      num_test, f'{MNIST_TEST_IMAGES:,}', 100 / num_test,
    )  # fmt: skip


def workdir_path(workdir: str) -> str:
  """`workdir` as the run uses it: absolute if local, as given if remote (gs://...)."""
  if not workdir or not workdir.strip():
    raise ConfigError(
      '--workdir is empty (an unset shell variable?): it would train into the current folder. '
      'Name the folder the run writes to, e.g. --workdir=workdirs/mnist.'
    )
  return workdir if metrics.is_remote(workdir) else os.path.abspath(workdir)


def prepare_workdir(workdir: str) -> str:
  """Creates `workdir` (local or gs://...) and proves it is writable; returns workdir_path."""
  workdir = workdir_path(workdir)
  try:
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    metrics.write_text(os.path.join(workdir, '.write_test'), 'ok')
    epath.Path(workdir, '.write_test').unlink()
  except OSError as e:
    raise ConfigError(f'workdir {workdir!r} is not writable ({e.strerror or e}).') from e
  return workdir


@contextlib.contextmanager
def workdir_lock(workdir: str):
  """Holds workdir/.lock for the run: a second trainer on the same workdir is refused.

  An advisory `flock`, which the kernel drops when the holder exits in any way (SIGKILL
  included), so a killed run's lock is never stale. The file names the holder, for the
  message a second trainer gets. An object store (gs://...) has no such lock: there the
  run is not guarded.
  """
  if metrics.is_remote(workdir):
    yield
    return
  path = os.path.join(workdir, '.lock')
  f = open(path, 'a+')  # noqa: SIM115 (held open for the whole run)
  try:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      f.seek(0)
      holder = (f.read().strip().splitlines() or ['another process'])[-1]
      raise ConfigError(
        f'workdir {workdir!r} is in use by another trainer ({holder}); two trainers on one '
        'workdir would interleave their epochs. Wait for it to end, or use another --workdir.'
      ) from None
    f.seek(0)
    f.truncate()
    f.write(f'pid {os.getpid()} on {socket.gethostname()}, since {time.strftime("%F %T")}\n')
    f.flush()
    yield
  finally:
    f.close()  # Releases the lock.


def non_finite_advice(
  config: ml_collections.ConfigDict, epoch: int, checkpoint_dir: str, saved: bool
) -> str:
  """What is true after a NaN/Inf in `epoch`, and what to change: the checkpoint kept, or that
  none was saved yet; and the numeric field furthest above the default config's value."""
  if saved:
    kept = f'The last good checkpoint (epoch {epoch - 1}) is kept in {checkpoint_dir}.'
  else:
    kept = 'No checkpoint was saved yet: the first epoch never finished.'
  default = mnist.get_config()  # The reference for "too large".
  ratios = {
    field: config[field] / default[field]
    for field in ('learning_rate', 'momentum', 'weight_decay', 'label_smoothing', 'warmup_fraction')
    if default[field] > 0 and config[field] > default[field]
  }
  if not ratios:
    return kept + ' Lower config.learning_rate, the usual cause of a loss that blows up.'
  field = max(ratios, key=ratios.get)
  return (
    f'{kept} config.{field}={config[field]:g} is {ratios[field]:.3g}x the default '
    f"config's {default[field]:g}, the likeliest cause: lower it."
  )
