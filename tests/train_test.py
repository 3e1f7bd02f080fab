"""Tests for train.py: the pure step, determinism, resume, faults, data sources, real accuracy."""

import functools
import json
import os
import subprocess
import sys
import threading
from unittest import mock

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized

import checkpointing
import compiled
import errors
import input_pipeline
import metrics
import multihost
import preflight
import train
from configs import mnist
from tests import testutil


def _read_metrics(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  timing = metrics.TIMING_FIELDS
  return [{k: v for k, v in r.items() if k not in timing} for r in records]


def _train_killed_after_epoch_1(config, workdir):
  """train_and_evaluate, stopped by a KeyboardInterrupt right after epoch 1's metrics line."""
  original_write = metrics.MetricsLog.write

  def crash_after_first_epoch(log, record):
    original_write(log, record)
    raise KeyboardInterrupt('simulated kill after epoch 1')

  with mock.patch.object(metrics.MetricsLog, 'write', crash_after_first_epoch):
    try:
      train.train_and_evaluate(config, workdir)
    except KeyboardInterrupt:
      return
  raise AssertionError('the run was not stopped after epoch 1')


def _final_params(workdir, config):
  state = train.create_train_state(jax.random.key(99), config, 1)
  state, epoch = checkpointing.restore_latest(checkpointing.checkpoint_manager(workdir, 10), state)
  return state, epoch


class TrainStepTest(chex.TestCase):
  def setUp(self):
    super().setUp()
    self.config = mnist.get_config()
    self.state = train.create_train_state(jax.random.key(0), self.config, steps_per_epoch=100)
    rng = np.random.default_rng(0)
    self.images = jnp.asarray(rng.integers(0, 256, (16, 28, 28), np.uint8))
    self.labels = jnp.asarray(rng.integers(0, 10, 16), jnp.int32)

  def test_steps_decrease_loss_on_a_fixed_batch(self):
    self.config.num_epochs = 1  # A 20-step one-cycle schedule: the peak LR comes at step 5.
    state = train.create_train_state(jax.random.key(0), self.config, steps_per_epoch=20)
    step = jax.jit(train.train_step)
    state, first = step(state, self.images, self.labels, jax.random.key(1))
    for i in range(19):
      state, metrics = step(state, self.images, self.labels, jax.random.key(2 + i))
    self.assertTrue(bool(metrics['finite']))
    self.assertLess(float(metrics['loss_sum']), 0.5 * float(first['loss_sum']))
    self.assertEqual(int(state.step), 20)

  def test_step_compiles_once(self):
    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(state, images, labels, rng):
      jitter = dict(max_degrees=7.0, max_shift=2.0, max_scale=0.09, max_brightness=0.2)
      return train.train_step(state, images, labels, rng, jitter=jitter)

    state = self.state
    for i in range(3):  # New data, new rng, new state: same shapes, so no retrace.
      state, _ = step(state, (self.images + i).astype(jnp.uint8), self.labels, jax.random.key(i))

  def test_steps_from_clean_from_step_on_train_without_augmentation(self):
    jitter = dict(max_degrees=7.0, max_shift=2.0, max_scale=0.09)
    step = jax.jit(functools.partial(train.train_step, jitter=jitter, clean_from_step=1))
    augmented_step = jax.jit(functools.partial(train.train_step, jitter=jitter))
    rng = jax.random.key(4)
    first, _ = step(self.state, self.images, self.labels, rng)  # Step 0: augmented.
    augmented, _ = augmented_step(self.state, self.images, self.labels, rng)
    chex.assert_trees_all_close(first.params, augmented.params, rtol=1e-6, atol=1e-7)
    second, _ = step(first, self.images, self.labels, rng)  # Step 1: the images as they are.
    plain, _ = jax.jit(train.train_step)(first, self.images, self.labels, rng)
    chex.assert_trees_all_close(second.params, plain.params, rtol=1e-6, atol=1e-7)
    still_augmented, _ = augmented_step(first, self.images, self.labels, rng)
    diff = jax.tree_util.tree_map(lambda a, b: float(jnp.max(jnp.abs(a - b))), second.params,
                                  still_augmented.params)  # fmt: skip
    self.assertGreater(max(jax.tree_util.tree_leaves(diff)), 1e-4)

  def test_step_function_switches_to_clean_images_at_the_first_clean_epoch(self):
    config = mnist.get_config()
    config.num_epochs, config.batch_size, config.label_smoothing = 5, 64, 0.1
    config.clean_epochs = 2
    step = train.step_function(config, num_train=6_400)  # 100 steps an epoch.
    self.assertEqual(step.keywords['clean_from_step'], 300)
    self.assertEqual(step.keywords['label_smoothing'], 0.1)
    self.assertEqual(step.keywords['jitter']['max_shift'], config.max_shift)
    config.clean_epochs = 0
    self.assertEqual(train.step_function(config, 6_400).keywords['clean_from_step'], 0)

  @chex.variants(with_jit=True, without_jit=True)
  def test_step_is_pure(self):
    step = self.variant(train.train_step)
    a, ma = step(self.state, self.images, self.labels, jax.random.key(3))
    b, mb = step(self.state, self.images, self.labels, jax.random.key(3))
    chex.assert_trees_all_equal(a.params, b.params)
    chex.assert_trees_all_equal(ma, mb)

  def test_multi_step_equals_repeated_single_steps(self):
    idx = jnp.arange(16, dtype=jnp.int32).reshape(2, 8)
    rng = jax.random.key(5)
    multi, sums = compiled.train_steps(
      self.state, compiled.zero_sums(), self.images, self.labels, idx, rng,
      step_fn=train.train_step, unroll=True,
    )  # fmt: skip
    state = self.state
    for row in idx:
      state, _ = train.train_step(
        state, self.images[row], self.labels[row], jax.random.fold_in(rng, state.step)
      )
    chex.assert_trees_all_close(multi.params, state.params, rtol=1e-5, atol=1e-6)
    self.assertEqual(int(sums['count']), 16)
    self.assertEqual(int(sums['first_bad_step']), -1)


class EmaTest(chex.TestCase):
  def setUp(self):
    super().setUp()
    config = mnist.get_config()
    config.ema_decay = 0.99
    self.state = train.create_train_state(jax.random.key(0), config, 100)
    rng = np.random.default_rng(1)
    self.images = jnp.asarray(rng.integers(0, 256, (16, 28, 28), np.uint8))
    self.labels = jnp.asarray(rng.integers(0, 10, 16), jnp.int32)

  def test_no_average_is_carried_when_off(self):
    config = mnist.get_config()
    config.ema_decay = 0.0
    state = train.create_train_state(jax.random.key(0), config, 100)
    self.assertIsNone(state.ema)
    chex.assert_trees_all_equal(state.params, self.state.ema['params'])  # Same init either way.
    new, _ = train.train_step(state, self.images, self.labels, jax.random.key(2))
    self.assertIsNone(new.ema)

  def test_step_moves_the_average_toward_the_new_weights_only_when_on(self):
    key = jax.random.key(2)
    off, _ = train.train_step(self.state, self.images, self.labels, key)
    chex.assert_trees_all_equal(off.ema, self.state.ema)  # ema_decay = 0: untouched.
    on, _ = train.train_step(self.state, self.images, self.labels, key, ema_decay=0.99)
    chex.assert_trees_all_equal(on.params, off.params)  # The SGD step itself is unchanged.
    d = 1 / 10  # The cap at step 0.
    expected = jax.tree_util.tree_map(
      lambda e, n: d * e + (1 - d) * n,
      self.state.ema,
      {'params': on.params, 'batch_stats': on.batch_stats},
    )
    chex.assert_trees_all_close(on.ema, expected, rtol=1e-6)

  def test_step_function_starts_swa_at_the_first_step_of_its_epoch(self):
    config = mnist.get_config()
    config.swa_from_epoch = 11
    step = train.step_function(config, num_train=6_400)  # 100 steps an epoch.
    self.assertEqual(step.keywords['swa_from_step'], 1_000)
    config.swa_from_epoch = 1  # From the very first step.
    self.assertEqual(train.step_function(config, 6_400).keywords['swa_from_step'], 0)
    config.swa_from_epoch = 0
    self.assertIsNone(train.step_function(config, 6_400).keywords['swa_from_step'])

  def test_eval_uses_the_average_only_when_asked(self):
    mask = jnp.ones(16, bool)
    zeroed = self.state.replace(ema=jax.tree_util.tree_map(jnp.zeros_like, self.state.ema))
    raw = train.eval_step(zeroed, self.images, self.labels, mask)
    ema = train.eval_step(zeroed, self.images, self.labels, mask, ema=True)
    chex.assert_trees_all_equal(raw, train.eval_step(self.state, self.images, self.labels, mask))
    # All-zero weights give all-zero logits: loss exactly log(10) per example.
    np.testing.assert_allclose(float(ema['loss_sum']), 16 * np.log(10), rtol=1e-6)
    self.assertNotAlmostEqual(float(raw['loss_sum']), float(ema['loss_sum']), places=3)


class ConfigValidationTest(parameterized.TestCase):
  @parameterized.named_parameters(
    ('batch_zero', 'batch_size', 0),
    ('negative_lr', 'learning_rate', -0.1),
    ('zero_epochs', 'num_epochs', 0),
    ('smoothing', 'label_smoothing', 1.5),
    ('ema_decay', 'ema_decay', 1.0),
    ('swa_past_the_end', 'swa_from_epoch', 16),
    ('swa_learning_rate', 'swa_learning_rate', -0.01),
    ('arch', 'arch', 'resnet'),
    ('missing_data_dir', 'data_dir', '/no/such/folder'),
  )
  def test_bad_values_are_refused_naming_the_field(self, field, value):
    config = mnist.get_config()
    config[field] = value
    with mock.patch.object(jax, 'jit', side_effect=AssertionError('compiled')):
      with self.assertRaisesRegex(errors.ConfigError, rf'config\.{field}='):
        train.train_and_evaluate(config, self.create_tempdir().full_path)

  def test_swa_settings_that_would_do_nothing_are_refused(self):
    cases = {
      'config.swa_from_epoch=3 needs ema_decay > 0': {'swa_from_epoch': 3, 'ema_decay': 0.0},
      'config.swa_learning_rate=0.01 needs swa_from_epoch >= 1': {'swa_learning_rate': 0.01},
    }
    for message, overrides in cases.items():
      with self.subTest(message):
        config = mnist.get_config()
        config.update(overrides)
        with self.assertRaisesRegex(errors.ConfigError, message):
          preflight.validate_config(config)

  def test_data_that_cannot_train_is_refused_before_compiling(self):
    folder = self.create_tempdir().full_path
    cases = {
      'the test set holds no images': (16, 0, {}),
      'config.eval_batch_size=100 exceeds the 8 test images': (16, 8, {'eval_batch_size': 100}),
      'config.batch_size=32 exceeds the 16 training examples': (16, 8, {'batch_size': 32}),
    }
    for message, (num_train, num_test, overrides) in cases.items():
      with self.subTest(message):
        data_dir = testutil.write_idx_dir(os.path.join(folder, message[:12]), num_train, num_test)
        config = testutil.tiny_config(data_dir, **overrides)
        with mock.patch.object(train, 'compile_programs', side_effect=AssertionError('compiled')):
          with self.assertRaisesRegex(errors.ConfigError, message):
            train.train_and_evaluate(config, self.create_tempdir().full_path)

  def test_unwritable_workdir(self):
    blocker = self.create_tempfile('a_file').full_path
    config = mnist.get_config()
    with self.assertRaisesRegex(errors.ConfigError, 'not writable'):
      train.train_and_evaluate(config, os.path.join(blocker, 'workdir'))


class TrainAndEvaluateTest(absltest.TestCase):
  """Short runs on a small IDX folder: 48 train images (6 steps of 8), 20 test images."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.config, cls.workdir, cls.summary = testutil.reference_run()

  def test_outputs(self):
    s = self.summary
    self.assertEqual(s['epochs'], 2)
    self.assertEqual(s['params'], 17_946)
    self.assertEqual(s['device_count'], jax.device_count())
    self.assertEqual(s['cpu_cores'], multihost.usable_cores())
    self.assertEqual(s['cpu_model'], multihost.cpu_model())
    for key in (
      'best_test_accuracy',
      'final_test_accuracy',
      'train_seconds',
      'compile_seconds',
      'device_kind',
      'first_epoch_at_target',
      'train_seconds_to_target',
    ):
      self.assertIn(key, s)
    with open(os.path.join(self.workdir, 'summary.json')) as f:
      self.assertEqual(json.load(f)['final_test_accuracy'], s['final_test_accuracy'])
    records = _read_metrics(self.workdir)
    self.assertEqual([r['epoch'] for r in records], [1, 2])
    self.assertEqual(records[-1]['step'], 12)
    for key in ('train_loss', 'train_accuracy', 'test_loss', 'test_accuracy', 'learning_rate'):
      self.assertIn(key, records[0])
    self.assertTrue(os.listdir(os.path.join(self.workdir, 'tb')))
    self.assertEqual(sorted(os.listdir(os.path.join(self.workdir, 'checkpoints'))), ['1', '2'])
    # workdir/preempted appears only for a run stopped inside an epoch (multiprocess_test).
    self.assertFalse(os.path.exists(os.path.join(self.workdir, 'preempted')))
    # Every test image counted: 20 is not a multiple of the eval batch (8).
    self.assertAlmostEqual(s['final_test_accuracy'] * 20, round(s['final_test_accuracy'] * 20))

  def test_same_seed_same_metrics(self):
    workdir = self.create_tempdir().full_path
    train.train_and_evaluate(self.config, workdir)
    self.assertEqual(_read_metrics(workdir), _read_metrics(self.workdir))

  def test_resume_after_interruption_is_bit_identical(self):
    workdir = self.create_tempdir().full_path
    _train_killed_after_epoch_1(self.config, workdir)
    self.assertLen(_read_metrics(workdir), 1)
    with self.assertLogs(logger='absl', level='INFO') as logs:
      train.train_and_evaluate(self.config, workdir)
    self.assertTrue(any('Resuming from the checkpoint of epoch 1' in m for m in logs.output))
    self.assertEqual(_read_metrics(workdir), _read_metrics(self.workdir))
    resumed, _ = _final_params(workdir, self.config)
    reference, _ = _final_params(self.workdir, self.config)
    chex.assert_trees_all_equal(resumed.params, reference.params)
    chex.assert_trees_all_equal(resumed.batch_stats, reference.batch_stats)

  def test_non_finite_loss_stops_at_that_step_and_keeps_checkpoint(self):
    workdir = self.create_tempdir().full_path
    poison_step = 8  # Epoch 2 (steps 6-11).
    real_step = train.train_step

    def poisoned_step(state, images, labels, rng, **kw):
      new_state, metrics = real_step(state, images, labels, rng, **kw)
      bad = state.step == poison_step
      metrics['finite'] = metrics['finite'] & ~bad
      new_state = new_state.replace(
        params=jax.tree_util.tree_map(lambda p: jnp.where(bad, jnp.nan, p), new_state.params)
      )
      return new_state, metrics

    with mock.patch.object(train, 'train_step', poisoned_step):
      with self.assertRaisesRegex(errors.NonFiniteError, f'step {poison_step} .epoch 2') as cm:
        train.train_and_evaluate(self.config, workdir)
    self.assertIn('The last good checkpoint (epoch 1) is kept in', str(cm.exception))
    state, epoch = _final_params(workdir, self.config)
    self.assertEqual(epoch, 1)
    chex.assert_tree_all_finite(state.params)
    self.assertLen(_read_metrics(workdir), 1)

  def test_trains_on_downloaded_data(self):
    served = testutil.write_idx_dir(self.create_tempdir().full_path, 16, 8)
    url, requests, stop = testutil.serve(served)
    self.addCleanup(stop)
    self.enter_context(mock.patch.dict(input_pipeline.SHA256, testutil.content_sums(served)))
    config = testutil.tiny_config('', data_url=url, download_dir=self.create_tempdir().full_path)
    summary = train.train_and_evaluate(config, self.create_tempdir().full_path)
    self.assertEqual(summary['epochs'], 1)
    self.assertLen([r for r in requests if r.startswith('GET')], 4)


_SHARDED_SCRIPT = """
import functools, sys, jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
import compiled, input_pipeline, train
from tests import testutil
assert jax.device_count() == 4, jax.devices()
data_dir, workdir = sys.argv[1:]
cfg = testutil.tiny_config(data_dir, num_epochs=2, learning_rate=0.01)
train.train_and_evaluate(cfg, workdir)
# One step with the batch sharded over the 4 devices, and not sharded.
data = input_pipeline.get_datasets(data_dir)['train']
images, labels = jnp.asarray(data.images), jnp.asarray(data.labels)
mesh = jax.make_mesh((4,), ('data',), axis_types=(jax.sharding.AxisType.Auto,))
state = train.create_train_state(jax.random.key(0), cfg, 6)
state = jax.device_put(state, NamedSharding(mesh, P()))
idx = jnp.arange(8, dtype=jnp.int32).reshape(1, 8)
params = []
for sharding in (None, NamedSharding(mesh, P('data'))):
  run = jax.jit(functools.partial(compiled.train_steps, step_fn=train.train_step, unroll=True,
                                  batch_sharding=sharding))
  params.append(run(state, compiled.zero_sums(), images, labels, idx, jax.random.key(1))[0].params)
diff = max(jax.tree_util.tree_leaves(jax.tree_util.tree_map(
    lambda a, b: float(jnp.max(jnp.abs(a - b))), *params)))
print('MAX_PARAM_DIFF', diff)
"""


class FirstEpochCallsTest(absltest.TestCase):
  """The CPU default: epoch 1 one step per call, the K-step call compiled in the background."""

  def setUp(self):
    super().setUp()
    self.data_dir = testutil.write_idx_dir(self.create_tempdir().full_path, 48, 20)
    self.config = testutil.tiny_config(self.data_dir, steps_per_call=0)  # 6 steps per epoch.
    data = input_pipeline.get_datasets(self.data_dir)
    self.train_data = (data['train'].images, data['train'].labels)
    self.state = train.create_train_state(jax.random.key(0), self.config, 6)

  def _compile(self, epochs, release):
    """compile_programs with compile_one faked: a train call of K steps compiles to ('K', K),
    and the background thread's compiles wait for `release`."""

    def fake_compile_one(fn, args):
      if threading.current_thread().name.startswith('compile'):  # compiled's background worker.
        release.wait(10)
      k = args[4].shape[0] if len(args) == 6 else None
      return ('call', k), {'trace': 0.0, 'lower': 0.0, 'compile': 0.0}

    with mock.patch.object(compiled, 'compile_one', fake_compile_one):
      return train.compile_programs(self.config, self.state, *self.train_data, epochs=epochs)

  def test_the_first_step_waits_only_for_the_one_step_call(self):
    self.assertEqual(compiled.default_steps_per_call(6), (4, True))  # This suite runs on the CPU.
    release = threading.Event()
    programs = self._compile(range(1, 3), release)
    self.assertEqual(sorted(programs.train_calls), [1])  # Returned before the K-step calls.
    self.assertEqual(sorted(programs.pending), [2, 4])  # 6 steps = 4 + 2.
    self.assertFalse(programs.pending[4].done())
    self.assertEqual((programs.chunk_for(1), programs.chunk_for(2)), (1, 4))
    release.set()
    self.assertEqual(programs.train_call(4), ('call', 4))
    self.assertIn('train 4 (background)', programs.program_seconds)

  def test_only_the_calls_the_run_makes_are_compiled(self):
    release = threading.Event()
    release.set()
    one_epoch = self._compile(range(1, 2), release)
    self.assertEqual((sorted(one_epoch.train_calls), one_epoch.pending), ([1], {}))
    resumed = self._compile(range(2, 4), release)  # Epoch 1 done: the K-step calls first.
    self.assertEqual((sorted(resumed.train_calls), resumed.pending), ([2, 4], {}))
    finished = self._compile(range(3, 3), release)
    self.assertEqual((finished.train_calls, finished.make_batches), ({}, None))
    self.config.steps_per_call = 3  # Set by hand: every epoch as asked.
    fixed = self._compile(range(1, 3), release)
    self.assertEqual((sorted(fixed.train_calls), fixed.pending, fixed.chunk_for(1)), ([3], {}, 3))

  def test_a_run_resumed_after_epoch_1_is_bit_identical(self):
    data_dir = testutil.write_idx_dir(self.create_tempdir().full_path, 16, 8)  # 2 steps.
    config = testutil.tiny_config(data_dir, steps_per_call=0, num_epochs=2)
    whole = self.create_tempdir().full_path
    with self.assertLogs(logger='absl', level='INFO') as logs:
      train.train_and_evaluate(config, whole)
    self.assertTrue(any('Compiled train 2 in the background' in m for m in logs.output))
    resumed = self.create_tempdir().full_path
    _train_killed_after_epoch_1(config, resumed)
    train.train_and_evaluate(config, resumed)  # Epoch 2 only: its 2-step call compiled first.
    self.assertEqual(_read_metrics(resumed), _read_metrics(whole))
    chex.assert_trees_all_equal(
      _final_params(resumed, config)[0].params, _final_params(whole, config)[0].params
    )


class ShardedTest(absltest.TestCase):
  def test_four_cpu_devices_match_one(self):
    """The batch sharded over 4 host devices gives the same metrics as 1 device.

    Tolerances: sharding only reorders float32 sums (the BatchNorm statistics and the
    gradient all-reduce): in one process a sharded and an unsharded step agree to 1e-6.
    Over many steps with batch 8 such last-bit differences grow (at LR 0.1 to ~5e-3 in the
    parameters after 8 steps), so the whole runs use LR 0.01 and are compared by their
    metrics: losses agree to 1e-4 relative, accuracies to one test image. Per-device
    BatchNorm statistics (2 images per device) would change the losses by far more, so this
    also shows they are global.
    """
    data_dir = testutil.write_idx_dir(self.create_tempdir().full_path, 64, 24)
    workdir4 = self.create_tempdir().full_path
    env = dict(
      os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4', JAX_PLATFORMS='cpu'
    )
    proc = subprocess.run(
      [sys.executable, '-c', _SHARDED_SCRIPT, data_dir, workdir4], cwd=testutil.REPO_ROOT,
      env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
    diff = float(proc.stdout.split('MAX_PARAM_DIFF')[1])
    self.assertLess(diff, 1e-6)
    with open(os.path.join(workdir4, 'summary.json')) as f:
      self.assertEqual(json.load(f)['device_count'], 4)
    workdir1 = self.create_tempdir().full_path
    train.train_and_evaluate(
      testutil.tiny_config(data_dir, num_epochs=2, learning_rate=0.01), workdir1
    )
    for r4, r1 in zip(_read_metrics(workdir4), _read_metrics(workdir1), strict=True):
      self.assertEqual(r4['step'], r1['step'])
      for key in ('train_loss', 'test_loss'):
        np.testing.assert_allclose(r4[key], r1[key], rtol=1e-4, err_msg=key)
      self.assertAlmostEqual(r4['test_accuracy'], r1['test_accuracy'], delta=1 / 24 + 1e-9)


class CpuDevicesFlagTest(absltest.TestCase):
  def test_cpu_devices_splits_the_host_and_refuses_an_indivisible_batch(self):
    data_dir = testutil.write_idx_dir(self.create_tempdir().full_path, 16, 8)
    tmp = self.create_tempdir().full_path
    env = dict(os.environ, JAX_PLATFORMS='cpu')
    env.pop('XLA_FLAGS', None)
    common = [
      f'--config.data_dir={data_dir}', '--config.batch_size=8', '--config.eval_batch_size=8',
      '--config.num_epochs=1', '--config.steps_per_call=1', '--config.plots=False',
    ]  # fmt: skip

    def run(devices, workdir):
      return subprocess.run(
        [sys.executable, 'train.py', f'--workdir={workdir}', f'--cpu_devices={devices}', *common],
        cwd=testutil.REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
      )  # fmt: skip

    proc = run(2, f'{tmp}/two')
    self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
    with open(f'{tmp}/two/summary.json') as f:
      self.assertEqual(json.load(f)['device_count'], 2)
    proc = run(3, f'{tmp}/three')  # 8 images cannot be split over 3 devices.
    self.assertEqual(proc.returncode, 1)
    self.assertIn('config.batch_size=8 is not divisible by 3 devices', proc.stderr)


class RealMnistTest(absltest.TestCase):
  def test_one_epoch_reaches_98_percent(self):
    testutil.require_real_mnist(self)
    config = mnist.get_config()
    config.data_dir = testutil.MNIST_DIR
    config.num_epochs = 1
    config.plots = False
    summary = train.train_and_evaluate(config, self.create_tempdir().full_path)
    self.assertGreaterEqual(summary['final_test_accuracy'], 0.98)


if __name__ == '__main__':
  absltest.main()
