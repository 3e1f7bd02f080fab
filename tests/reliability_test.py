"""Faults a run must survive: SIGKILL anywhere, corrupt checkpoints, bad flags, NaN gradients.

Bad data files and the IDX fuzzer are in input_pipeline_test.py; a NaN loss stopping
training end to end and the in-process resume are in train_test.py.
"""

import concurrent.futures
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized

import checkpointing
import errors
import train
from configs import mnist
from tests import testutil


def _load_crash_resume():
  path = os.path.join(testutil.REPO_ROOT, 'scripts', 'crash_resume.py')
  spec = importlib.util.spec_from_file_location('crash_resume', path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # dataclasses look their module up while it loads.
  spec.loader.exec_module(module)
  return module


def _read_metrics(workdir):
  """metrics.jsonl without its timing fields."""
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  timing = ('train_seconds', 'images_per_second')
  return [{k: v for k, v in r.items() if k not in timing} for r in records]


def _files(folder):
  """Every file under `folder`, largest first."""
  paths = [os.path.join(r, f) for r, _, fs in os.walk(folder) for f in fs]
  return sorted(paths, key=os.path.getsize, reverse=True)


def _garble(path):
  """Inverts 16 bytes in the middle of `path`, leaving its size alone."""
  with open(path, 'rb') as f:
    data = bytearray(f.read())
  mid = len(data) // 2
  data[mid : mid + 16] = bytes(b ^ 0xFF for b in data[mid : mid + 16])
  with open(path, 'wb') as f:
    f.write(data)


def _array_data_files(checkpoint_dir):
  """The files of the checkpoint's array store (OCDBT `d/` folders: b-tree nodes and values).

  Which of them hold live data varies: orbax's writes split the arrays over a different number
  of files from run to run, and a file can hold superseded nodes that no read touches.
  """
  paths = [p for p in _files(checkpoint_dir) if os.path.basename(os.path.dirname(p)) == 'd']
  assert paths, f'no array data files under {checkpoint_dir}'
  return paths


def _invert_array_data(checkpoint_dir):
  """Inverts every byte of every array data file: whatever a restore reads is damaged."""
  for path in _array_data_files(checkpoint_dir):
    with open(path, 'rb') as f:
      data = f.read()
    with open(path, 'wb') as f:
      f.write(bytes(b ^ 0xFF for b in data))


def _swap_in_array_data_of_epoch_1(checkpoint_dir):
  """Epoch 1's whole array store over this checkpoint's: valid files, wrong numbers."""
  epoch_1 = os.path.join(os.path.dirname(checkpoint_dir), '1', 'default')
  shutil.copytree(epoch_1, os.path.join(checkpoint_dir, 'default'), dirs_exist_ok=True)


def _truncate(path):
  with open(path, 'rb') as f:
    data = f.read()
  with open(path, 'wb') as f:
    f.write(data[: len(data) // 2])


class CrashResumeTest(absltest.TestCase):
  def test_sigkill_in_a_step_and_in_a_checkpoint_write_then_resume_is_bit_identical(self):
    """A reduced scripts/crash_resume.py (its full run: 10 kills, see its docstring)."""
    crash_resume = _load_crash_resume()
    lines = []
    result = crash_resume.crash_resume(
      self.create_tempdir().full_path,
      epochs=1,
      moments=['train of epoch 1', 'save of epoch 1'],
      num_train=256,
      num_test=400,
      say=lines.append,
    )
    print('\n'.join(lines))
    self.assertTrue(result['ok'], '\n'.join(lines))
    self.assertLen(result['kills'], 2)


class CheckpointIntegrityTest(parameterized.TestCase):
  """The newest checkpoint damaged on disk: restore_latest falls back to the one before."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.template = train.create_train_state(jax.random.key(0), mnist.get_config(), 10)
    # Distinct states per epoch, so that loading the wrong one would show.
    cls.states = {
      e: cls.template.replace(
        step=e, params=jax.tree_util.tree_map(lambda p, e=e: p + e, cls.template.params)
      )
      for e in (1, 2)
    }

  def setUp(self):
    super().setUp()
    self.workdir = self.create_tempdir().full_path
    manager = checkpointing.checkpoint_manager(self.workdir, 3)
    for epoch, state in self.states.items():
      checkpointing.save_checkpoint(manager, epoch, state, {'epoch': epoch})
    manager.close()
    self.newest = os.path.join(self.workdir, 'checkpoints', '2')

  def _restore(self):
    manager = checkpointing.checkpoint_manager(self.workdir, 3)
    try:
      return checkpointing.restore_latest(manager, self.template)
    finally:
      manager.close()

  def test_intact_checkpoint_loads_exactly(self):
    state, epoch = self._restore()
    self.assertEqual(epoch, 2)
    chex.assert_trees_all_equal(state.params, self.states[2].params)
    self.assertEqual(int(state.step), 2)

  def test_orbax_alone_loads_another_checkpoints_arrays_silently(self):
    """Why the checksums exist: orbax 0.12.8 checks no array content. Epoch 1's array files
    under epoch 2's name load without a word, as epoch 1's numbers; flipped bytes in an array
    file (the cases below) may likewise decode to other numbers."""
    _swap_in_array_data_of_epoch_1(self.newest)
    manager = checkpointing.checkpoint_manager(self.workdir, 3)
    abstract = jax.tree_util.tree_map(
      lambda x: checkpointing.ocp.utils.to_shape_dtype_struct(jnp.asarray(x)), self.template
    )
    try:
      loaded = manager.restore(2, args=checkpointing.ocp.args.StandardRestore(abstract))
    finally:
      manager.close()
    chex.assert_trees_all_equal(loaded.params, self.states[1].params)
    self.assertEqual(int(loaded.step), 1)

  @parameterized.named_parameters(
    # Flipped bytes decode to other numbers (caught by the checksums) or to nothing (a file or
    # b-tree node that does not parse), depending on where they land.
    (
      'garbled_array_data',
      lambda d: [_garble(p) for p in _array_data_files(d)],
      'checksum|does not load',
    ),
    ('inverted_array_data', _invert_array_data, 'checksum|does not load'),
    # Valid array files of another checkpoint: they load, only the checksums can tell.
    ('array_data_of_epoch_1', _swap_in_array_data_of_epoch_1, 'checksum'),
    (
      'truncated_array_data',
      lambda d: [_truncate(p) for p in _array_data_files(d)],
      'does not load',
    ),
    ('missing_array_data', lambda d: [os.remove(p) for p in _array_data_files(d)], 'does not load'),
    ('missing_manifest', lambda d: os.remove(f'{d}/default/manifest.ocdbt'), 'does not load'),
    ('truncated_tree_metadata', lambda d: _truncate(f'{d}/default/_METADATA'), 'does not load'),
    ('missing_tree_metadata', lambda d: os.remove(f'{d}/default/_METADATA'), 'does not load'),
    ('missing_checksums', lambda d: os.remove(f'{d}/_CHECKPOINT_METADATA'), 'unreadable'),
    ('garbled_checksums', lambda d: _garble(f'{d}/_CHECKPOINT_METADATA'), 'unreadable'),
  )
  def test_damaged_newest_checkpoint_falls_back_to_the_one_before(self, damage, problem):
    damage(self.newest)
    with self.assertLogs(logger='absl', level='WARNING') as logs:
      state, epoch = self._restore()
    self.assertEqual(epoch, 1)
    chex.assert_trees_all_equal(state.params, self.states[1].params)
    log = '\n'.join(logs.output)
    self.assertIn('Checkpoint of epoch 2 is corrupt', log)
    self.assertRegex(log, problem)
    self.assertIn('Resuming from the checkpoint of epoch 1, the newest good one', log)

  def test_every_checkpoint_damaged_is_an_error_not_a_fresh_start(self):
    for epoch in (1, 2):
      _invert_array_data(os.path.join(self.workdir, 'checkpoints', str(epoch)))
    with self.assertRaisesRegex(errors.CheckpointError, 'no usable checkpoint.*epoch 2.*epoch 1'):
      self._restore()

  def test_checkpoint_without_checksums_loads_with_a_warning(self):
    """Checkpoints saved before the checksums existed still resume (unverified)."""
    workdir = self.create_tempdir().full_path
    manager = checkpointing.checkpoint_manager(workdir, 3)
    manager.save(1, args=checkpointing.ocp.args.StandardSave(self.states[1]))
    manager.close()
    with self.assertLogs(logger='absl', level='WARNING') as logs:
      manager = checkpointing.checkpoint_manager(workdir, 3)
      state, epoch = checkpointing.restore_latest(manager, self.template)
    self.assertEqual(epoch, 1)
    chex.assert_trees_all_equal(state.params, self.states[1].params)
    self.assertIn('no checksums', '\n'.join(logs.output))

  def test_keeps_the_newest_few(self):
    manager = checkpointing.checkpoint_manager(self.workdir, 3)
    for epoch in (3, 4, 5):
      checkpointing.save_checkpoint(manager, epoch, self.states[1], {'epoch': epoch})
    self.assertEqual(manager.all_steps(), [3, 4, 5])
    self.assertEqual(sorted(os.listdir(os.path.join(self.workdir, 'checkpoints'))), ['3', '4', '5'])


class RecoveryTest(absltest.TestCase):
  """train_and_evaluate on a damaged workdir ends as if nothing had happened."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.config, cls.reference, _ = testutil.reference_run()

  def _copy_reference(self):
    workdir = os.path.join(self.create_tempdir().full_path, 'run')
    shutil.copytree(self.reference, workdir)
    return workdir

  def _assert_same_as_reference(self, workdir):
    self.assertEqual(_read_metrics(workdir), _read_metrics(self.reference))
    states = []
    for w in (workdir, self.reference):
      template = train.create_train_state(jax.random.key(9), self.config, 6)
      manager = checkpointing.checkpoint_manager(w, 10)
      states.append(checkpointing.restore_latest(manager, template))
      manager.close()
    self.assertEqual(states[0][1], 2)
    # Every leaf (params, BatchNorm statistics, optimizer state, step), bit for bit.
    self.assertEqual(
      checkpointing.leaf_digests(states[0][0]), checkpointing.leaf_digests(states[1][0])
    )

  def test_corrupt_newest_checkpoint_is_set_aside_and_its_epoch_retrained(self):
    workdir = self._copy_reference()
    _invert_array_data(os.path.join(workdir, 'checkpoints', '2'))
    with self.assertLogs(logger='absl', level='WARNING') as logs:
      train.train_and_evaluate(self.config, workdir)
    log = '\n'.join(logs.output)
    self.assertIn('Checkpoint of epoch 2 is corrupt', log)
    self.assertIn('Resuming from the checkpoint of epoch 1, the newest good one', log)
    (rejected,) = os.listdir(os.path.join(workdir, 'rejected_checkpoints'))
    self.assertTrue(rejected.startswith('2-'), rejected)
    self._assert_same_as_reference(workdir)

  def test_killed_between_checkpoint_and_metrics_line(self):
    """The checkpoint of an epoch carries its metrics line, so the line is not lost."""
    workdir = self._copy_reference()
    path = os.path.join(workdir, 'metrics.jsonl')
    with open(path) as f:
      lines = f.readlines()
    with open(path, 'w') as f:
      f.writelines(lines[:-1])  # As if killed right after saving epoch 2.
    train.train_and_evaluate(self.config, workdir)
    self._assert_same_as_reference(workdir)


class NonFiniteGradientTest(absltest.TestCase):
  def test_nan_gradient_with_finite_loss_stops_at_that_step(self):
    """sqrt'(0) = inf: the forward pass adds 0 * sqrt(0) = 0, the gradient is NaN."""
    config = mnist.get_config()
    config.arch = 'tiny'  # Compiles faster; the check does not depend on the net.
    state = train.create_train_state(jax.random.key(0), config, 10)
    real_apply = state.apply_fn

    def apply_fn(variables, *args, **kwargs):
      logits, updates = real_apply(variables, *args, **kwargs)
      p = jax.tree_util.tree_leaves(variables['params'])[0]
      return logits + 0.0 * jnp.sqrt(jnp.sum(p) - jnp.sum(p)), updates

    state = state.replace(apply_fn=apply_fn)
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 256, (8, 28, 28), np.uint8))
    labels = jnp.asarray(rng.integers(0, 10, 8), jnp.int32)
    _, metrics = jax.jit(train.train_step)(state, images, labels, jax.random.key(1))
    self.assertTrue(np.isfinite(float(metrics['loss_sum'])))
    # `finite` False is what train_steps turns into 'stop at this step, keep the old state'
    # (train_test.py: test_non_finite_loss_stops_at_that_step_and_keeps_checkpoint).
    self.assertFalse(bool(metrics['finite']))


class CommandLineTest(parameterized.TestCase):
  """`python train.py` refuses bad flags with one line naming the field, before compiling."""

  def test_bad_configuration_is_refused_naming_the_field(self):
    tmp = self.create_tempdir().full_path
    blocker = os.path.join(tmp, 'a_file')
    open(blocker, 'w').close()
    data = f'--config.data_dir={testutil.MNIST_DIR}'
    bad_configs = self.create_tempdir().full_path
    for name, text in (
      ('syntax.py', 'def get_config(:\n'),
      ('no_get_config.py', 'x = 1\n'),
      ('raises.py', 'def get_config():\n  raise ValueError("broken on purpose")\n'),
    ):
      with open(os.path.join(bad_configs, name), 'w') as f:
        f.write(text)
    cases = {
      ('--config.nonsense=1',): "unknown config field in --config.nonsense=1: 'nonsense'",
      ('--config.batch_sise=8',): 'Did you mean "batch_size"',
      ('--config.batch_size=abc',): 'flag --config.batch_size=abc: invalid literal for int()',
      ('--config.batch_size=0',): 'config.batch_size=0 must be >= 1',
      ('--config.learning_rate=-0.1',): 'config.learning_rate=-0.1 must be a finite number > 0',
      ('--config.learning_rate=inf',): 'config.learning_rate=inf must be a finite number > 0',
      ('--config.num_epochs=0',): 'config.num_epochs=0 must be >= 1',
      ('--config.checkpoints_to_keep=0',): 'config.checkpoints_to_keep=0 must be >= 1',
      ('--config.data_dir=/no/such/folder',): "config.data_dir='/no/such/folder' is not an",
      ('--config=configs/no_such.py',): 'the --config file could not be loaded',
      ('--config=configs/mnist.py', '--config.nonsense=1'): 'unknown config field in',
      ('--config=configs/mnist.py', '--config.batch_sise=8'): 'Did you mean "batch_size"',
      (f'--config={bad_configs}/syntax.py',): '--config: SyntaxError: invalid syntax',
      (f'--config={bad_configs}/no_get_config.py',): "has no attribute 'get_config'",
      (f'--config={bad_configs}/raises.py',): 'config file: ValueError: broken on purpose',
      (data, f'--workdir={blocker}/sub'): 'is not writable',
    }

    def run(args):
      argv = [sys.executable, 'train.py', *args]
      if not any(a.startswith('--workdir') for a in args):
        argv.append(f'--workdir={tmp}/run')
      return subprocess.run(
        argv, cwd=testutil.REPO_ROOT, capture_output=True, text=True, timeout=300
      )

    with concurrent.futures.ThreadPoolExecutor(4) as pool:  # Each is mostly Python start-up.
      procs = dict(zip(cases, pool.map(run, cases), strict=True))
    for args, message in cases.items():
      with self.subTest(' '.join(args)):
        proc = procs[args]
        self.assertEqual(proc.returncode, 1, proc.stderr[-2000:])
        self.assertIn(message, proc.stderr)
        self.assertNotIn('Traceback', proc.stderr)
        self.assertNotIn('Compiled', proc.stderr)
    self.assertFalse(os.path.exists(f'{tmp}/run/checkpoints'))


if __name__ == '__main__':
  absltest.main()
