"""checkpointing.py: checkpoints damaged on disk, swapped, or from another run fall back to
the newest good one; restore_latest never loads the wrong numbers silently."""

import os
import shutil
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
from absl.testing import absltest, parameterized

import checkpointing
import errors
import train
from configs import mnist
from tests import testutil


def _garble(path):
  """Inverts 16 bytes in the middle of `path`, leaving its size alone."""
  with open(path, 'rb') as f:
    data = bytearray(f.read())
  mid = len(data) // 2
  data[mid : mid + 16] = bytes(b ^ 0xFF for b in data[mid : mid + 16])
  with open(path, 'wb') as f:
    f.write(data)


def _swap_in_array_data_of_epoch_1(checkpoint_dir):
  """Epoch 1's whole array store over this checkpoint's: valid files, wrong numbers."""
  epoch_1 = os.path.join(os.path.dirname(checkpoint_dir), '1', 'default')
  shutil.copytree(epoch_1, os.path.join(checkpoint_dir, 'default'), dirs_exist_ok=True)


def _truncate(path):
  with open(path, 'rb') as f:
    data = f.read()
  with open(path, 'wb') as f:
    f.write(data[: len(data) // 2])


@testutil.IGNORE_CLOSED_EVENT_LOOP
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
      lambda d: [_garble(p) for p in testutil.array_data_files(d)],
      'checksum|does not load',
    ),
    ('inverted_array_data', testutil.invert_array_data, 'checksum|does not load'),
    # Valid array files of another checkpoint: they load, only the checksums can tell.
    ('array_data_of_epoch_1', _swap_in_array_data_of_epoch_1, 'checksum'),
    (
      'truncated_array_data',
      lambda d: [_truncate(p) for p in testutil.array_data_files(d)],
      'does not load',
    ),
    (
      'missing_array_data',
      lambda d: [os.remove(p) for p in testutil.array_data_files(d)],
      'does not load',
    ),
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
    self.assertIn('Checkpoint of epoch 2 is unusable', log)
    self.assertRegex(log, problem)
    self.assertIn('Resuming from the checkpoint of epoch 1, the newest good one', log)

  def test_every_checkpoint_damaged_is_an_error_not_a_fresh_start(self):
    for epoch in (1, 2):
      testutil.invert_array_data(os.path.join(self.workdir, 'checkpoints', str(epoch)))
    with self.assertRaisesRegex(
      errors.CheckpointError, r'no usable checkpoint.*\(2 tried; the newest: epoch 2'
    ):
      self._restore()

  def test_another_epochs_checkpoint_in_a_folder_is_refused(self):
    """A step folder replaced by a copy of an older one loads fine with orbax alone; its saved
    identity gives it away."""
    shutil.copytree(
      os.path.join(self.workdir, 'checkpoints', '1'), os.path.join(self.workdir, 'checkpoints', '3')
    )
    with self.assertLogs(logger='absl', level='WARNING') as logs:
      state, epoch = self._restore()
    self.assertEqual(epoch, 2)
    chex.assert_trees_all_equal(state.params, self.states[2].params)
    self.assertIn(
      'Checkpoint of epoch 3 is unusable: it is the checkpoint of epoch 1, in the folder of '
      'epoch 3',
      '\n'.join(logs.output),
    )

  @parameterized.named_parameters(
    ('empty', lambda d: None),
    ('without_its_item', lambda d: shutil.copy(f'{d}/../2/_CHECKPOINT_METADATA', d)),
  )
  def test_a_broken_step_folder_costs_only_that_step(self, fill):
    broken = os.path.join(self.workdir, 'checkpoints', '3')
    os.makedirs(broken)
    fill(broken)
    state, epoch = self._restore()
    self.assertEqual(epoch, 2)
    chex.assert_trees_all_equal(state.params, self.states[2].params)

  def test_a_checkpoint_saved_with_other_settings_is_not_resumed(self):
    workdir = self.create_tempdir().full_path
    manager = checkpointing.checkpoint_manager(workdir, 3)
    run = {'learning_rate': 0.1, 'seed': 0}
    checkpointing.save_checkpoint(manager, 1, self.states[1], {'epoch': 1}, run)
    state, epoch = checkpointing.restore_latest(manager, self.template, run)
    self.assertEqual(epoch, 1)
    other = {'learning_rate': 0.2, 'seed': 0}
    with self.assertRaisesRegex(
      errors.CheckpointError, r'other settings: learning_rate=0.1 \(now 0.2\)'
    ):
      checkpointing.restore_latest(manager, self.template, other)
    manager.close()

  def test_a_run_saved_before_the_zoom_and_intensity_fields_still_resumes(self):
    """Settings saved before max_scale/max_brightness/max_contrast existed match a config that
    leaves them off (they trained the same images); one that turns a jitter on is refused."""
    config = mnist.get_config()
    old = checkpointing.run_settings(config)
    for field in checkpointing.ADDED_FIELDS:
      self.assertIn(field, config)
      self.assertNotIn(field, old)  # Off, so left out: as a run saved before they existed.
    workdir = self.create_tempdir().full_path
    manager = checkpointing.checkpoint_manager(workdir, 3)
    checkpointing.save_checkpoint(manager, 1, self.states[1], {'epoch': 1}, old)
    _, epoch = checkpointing.restore_latest(manager, self.template, old)
    self.assertEqual(epoch, 1)
    config.max_scale = 0.09
    with self.assertRaisesRegex(errors.CheckpointError, r'max_scale=None \(now 0.09\)'):
      checkpointing.restore_latest(manager, self.template, checkpointing.run_settings(config))
    manager.close()

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


# Two asyncio tasks fail and are dropped unretrieved, as orbax's per-array reads are when one
# read of a damaged checkpoint fails first: one with a tensorstore read error, one other.
_UNRETRIEVED_TASKS = """
import asyncio, gc, logging, sys
import checkpointing
logging.basicConfig(stream=sys.stderr)
if sys.argv[1] == 'quiet':
  checkpointing.ignore_failed_read_noise()

async def read():
  raise ValueError('NOT_FOUND: Error reading [tensorstore_spec={}]')

async def other():
  raise KeyError('a bug of its own')

async def main():
  tasks = [asyncio.ensure_future(read()), asyncio.ensure_future(other())]
  await asyncio.sleep(0.01)
  del tasks

asyncio.run(main())
gc.collect()
"""


class FailedReadNoiseTest(absltest.TestCase):
  def _stderr(self, mode):
    argv = [sys.executable, '-c', _UNRETRIEVED_TASKS, mode]
    proc = subprocess.run(argv, cwd=testutil.REPO_ROOT, capture_output=True, text=True, timeout=300)
    self.assertEqual(proc.returncode, 0, proc.stderr)
    return proc.stderr

  def test_drops_unretrieved_tensorstore_reads_and_keeps_other_task_errors(self):
    loud = self._stderr('loud')
    self.assertEqual(loud.count('Task exception was never retrieved'), 2, loud)
    quiet = self._stderr('quiet')
    self.assertEqual(quiet.count('Task exception was never retrieved'), 1, quiet)
    self.assertNotIn('tensorstore_spec', quiet)
    self.assertIn('a bug of its own', quiet)


if __name__ == '__main__':
  absltest.main()
