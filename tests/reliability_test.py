"""Faults a whole run must survive: SIGKILL anywhere, a damaged workdir, two trainers, bad
flags, Ctrl-C, NaN gradients, a full disk, and what the terminal shows when checkpoints fail.

Damage to single checkpoints is in checkpointing_test.py; bad data files and the IDX fuzzer
in input_pipeline_test.py; a NaN loss stopping training end to end and the in-process resume
in train_test.py.
"""

import concurrent.futures
import fcntl
import functools
import json
import os
import shutil
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized

import checkpointing
import errors
import input_pipeline
import metrics
import train
from configs import mnist
from scripts import crash_resume
from tests import testutil


def _read_metrics(workdir):
  """metrics.jsonl without its timing fields."""
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  timing = metrics.TIMING_FIELDS
  return [{k: v for k, v in r.items() if k not in timing} for r in records]


class CrashResumeTest(absltest.TestCase):
  def test_sigkill_in_a_step_and_in_a_checkpoint_write_then_resume_is_bit_identical(self):
    """A reduced scripts/crash_resume.py (its full run: 10 kills, see its docstring)."""
    lines = []
    data_dir = testutil.write_idx_dir(self.create_tempdir().full_path, 256, 400)
    result = crash_resume.crash_resume(
      self.create_tempdir().full_path,
      data_dir,
      epochs=1,
      moments=['train of epoch 1', 'save of epoch 1'],
      say=lines.append,
    )
    print('\n'.join(lines))
    self.assertTrue(result['ok'], '\n'.join(lines))
    self.assertLen(result['kills'], 2)


@testutil.IGNORE_CLOSED_EVENT_LOOP
class RecoveryTest(parameterized.TestCase):
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
    testutil.invert_array_data(os.path.join(workdir, 'checkpoints', '2'))
    with self.assertLogs(logger='absl', level='WARNING') as logs:
      train.train_and_evaluate(self.config, workdir)
    log = '\n'.join(logs.output)
    self.assertIn('Checkpoint of epoch 2 is unusable', log)
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

  @parameterized.named_parameters(
    ('half_written', lambda line: line[: len(line) // 2]),
    ('garbage', lambda line: '\x00\xff not json\n'),
  )
  def test_damaged_metrics_tail_is_rebuilt_from_the_checkpoints(self, damage):
    workdir = self._copy_reference()
    path = os.path.join(workdir, 'metrics.jsonl')
    with open(path) as f:
      lines = f.readlines()
    with open(path, 'w') as f:
      f.writelines([*lines[:-1], damage(lines[-1])])
    with self.assertLogs(logger='absl', level='WARNING') as logs:
      train.train_and_evaluate(self.config, workdir)
    self.assertIn('line 2 is damaged', '\n'.join(logs.output))
    self._assert_same_as_reference(workdir)

  def test_an_older_checkpoint_copied_over_the_newest_is_retrained(self):
    workdir = self._copy_reference()
    checkpoints = os.path.join(workdir, 'checkpoints')
    shutil.rmtree(os.path.join(checkpoints, '2'))
    shutil.copytree(os.path.join(checkpoints, '1'), os.path.join(checkpoints, '2'))
    with self.assertLogs(logger='absl', level='WARNING') as logs:
      train.train_and_evaluate(self.config, workdir)
    self.assertIn(
      'it is the checkpoint of epoch 1, in the folder of epoch 2', '\n'.join(logs.output)
    )
    self._assert_same_as_reference(workdir)

  def test_a_second_trainer_on_the_workdir_is_refused(self):
    workdir = self._copy_reference()
    with open(os.path.join(workdir, '.lock'), 'a+') as held:
      fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # As a running trainer holds it.
      held.truncate(0)
      held.write('pid 1 on another-host\n')
      held.flush()
      with self.assertRaisesRegex(errors.ConfigError, r'in use by another trainer \(pid 1 on'):
        train.train_and_evaluate(self.config, workdir)
    # Released (as when its holder exits, SIGKILL included): the next trainer goes ahead.
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
      ('--config.max_scale=1.5',): 'config.max_scale=1.5 must be in [0, 1) (0 = off)',
      ('--config.clean_epochs=15',): 'config.clean_epochs=15 must be in [0, num_epochs)',
      ('--config.elastic_sigma=0',): 'config.elastic_sigma=0.0 must be in (0, 14] pixels',
      ('--config.data_dir=/no/such/folder',): "config.data_dir='/no/such/folder' is not an",
      ('--config=configs/no_such.py',): 'the --config file could not be loaded',
      ('--config=configs/mnist.py', '--config.nonsense=1'): 'unknown config field in',
      ('--config=configs/mnist.py', '--config.batch_sise=8'): 'Did you mean "batch_size"',
      (f'--config={bad_configs}/syntax.py',): '--config: SyntaxError: invalid syntax',
      (f'--config={bad_configs}/no_get_config.py',): "has no attribute 'get_config'",
      (f'--config={bad_configs}/raises.py',): 'config file: ValueError: broken on purpose',
      (data, f'--workdir={blocker}/sub'): 'is not writable',
      ('--config.seed=18446744073709551616',): 'config.seed=18446744073709551616 must be an '
      'integer in [-9223372036854775808, 9223372036854775807]',
      ('--config.seed=9223372036854775808',): 'config.seed=9223372036854775808 must be an',
      (data, '--workdir='): '--workdir is empty',
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
    # An empty --workdir trained into the folder the command ran from.
    self.assertFalse(os.path.exists(os.path.join(testutil.REPO_ROOT, 'checkpoints')))


def _train(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, 'train.py', *args],
    cwd=testutil.REPO_ROOT, capture_output=True, text=True, timeout=timeout,
  )  # fmt: skip


def _error_lines(proc: subprocess.CompletedProcess) -> list[str]:
  return [line for line in proc.stderr.splitlines() if line.startswith('error:')]


class BadInputTest(absltest.TestCase):
  """Data a user really has, and values a user really types: each ends in one true sentence."""

  def setUp(self):
    super().setUp()
    self.tmp = self.create_tempdir().full_path
    self.data = testutil.write_idx_dir(os.path.join(self.tmp, 'data'), 64, 16)
    self.flags = [
      '--config=configs/gap.py', f'--workdir={self.tmp}/run', '--config.batch_size=8',
      '--config.eval_batch_size=8', '--config.num_epochs=1', '--config.plots=False',
    ]  # fmt: skip

  def test_a_stale_raw_file_beside_a_different_gz_is_refused_naming_both(self):
    stem = 'train-labels-idx1-ubyte'
    with open(os.path.join(self.data, stem), 'wb') as f:  # An old copy: other labels.
      f.write(bytes([0, 0, 8, 1, 0, 0, 0, 64]) + bytes(64))
    proc = _train(*self.flags, f'--config.data_dir={self.data}')
    self.assertEqual(proc.returncode, 1, proc.stderr[-2000:])
    (line,) = _error_lines(proc)
    self.assertIn(f'{self.data}/{stem} and {self.data}/{stem}.gz both hold {stem}', line)
    self.assertNotIn('Compiled', proc.stderr)

  def test_a_directory_named_like_the_file_is_called_a_directory(self):
    path = os.path.join(self.data, 'train-images-idx3-ubyte.gz')
    os.remove(path)
    os.mkdir(path)
    proc = _train(*self.flags, f'--config.data_dir={self.data}')
    self.assertEqual(proc.returncode, 1, proc.stderr[-2000:])
    expected = (
      f'error: {path} is a directory, not the MNIST file train-images-idx3-ubyte.gz: remove or '
      'rename it, and put the file there.'
    )
    self.assertEqual(_error_lines(proc), [expected])

  def test_standard_sizes_with_other_content_warn_naming_the_file(self):
    rng = np.random.default_rng(0)
    test = input_pipeline.Split(
      rng.integers(0, 256, (10_000, 28, 28), np.uint8), rng.integers(0, 10, 10_000)
    )
    input_pipeline.write_idx_dir(self.data, {'test': test})
    # batch_size over the 64 training images stops the run once the data is read.
    proc = _train(*self.flags, f'--config.data_dir={self.data}', '--config.batch_size=128')
    self.assertEqual(proc.returncode, 1, proc.stderr[-2000:])
    for stem in input_pipeline.IDX_FILES['test']:
      warned = [line for line in proc.stderr.splitlines() if f'{self.data}/{stem}.gz' in line]
      self.assertLen(warned, 1, proc.stderr[-3000:])
      self.assertIn('not its published content', warned[0])

  def test_a_small_test_set_warns_of_its_resolution_and_is_recorded(self):
    proc = _train(*self.flags, f'--config.data_dir={self.data}', '--config.steps_per_call=2')
    self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
    self.assertIn("The test set has 16 images, not MNIST's 10,000: its accuracy moves in steps "
                  'of 6.25 %', proc.stderr)  # fmt: skip
    with open(f'{self.tmp}/run/summary.json') as f:
      self.assertEqual(json.load(f)['test_images'], 16)

  def test_a_blow_up_before_any_checkpoint_says_so_and_names_the_cause(self):
    proc = _train(
      *self.flags, f'--config.data_dir={self.data}', '--config.learning_rate=1e6',
      '--config.steps_per_call=1',
    )  # fmt: skip
    self.assertEqual(proc.returncode, 1, proc.stderr[-2000:])
    (line,) = _error_lines(proc)
    self.assertIn('(epoch 1); training stopped. No checkpoint was saved yet', line)
    self.assertIn("config.learning_rate=1e+06 is 1e+07x the default config's 0.1", line)
    self.assertNotIn('last good checkpoint', line)

  def test_a_file_the_server_lacks_is_named_with_its_http_status(self):
    served = testutil.write_idx_dir(os.path.join(self.tmp, 'served'), 16, 8)
    os.remove(os.path.join(served, 't10k-images-idx3-ubyte.gz'))  # The first one fetched.
    url, _, stop = testutil.serve(served)
    self.addCleanup(stop)
    proc = _train(*self.flags, f'--config.data_url={url}', f'--config.download_dir={self.tmp}/dl')
    self.assertEqual(proc.returncode, 1, proc.stderr[-2000:])
    (line,) = _error_lines(proc)
    self.assertIn(f'{url}t10k-images-idx3-ubyte.gz: the server answered HTTP 404', line)
    self.assertIn('--config.data_dir', line)


def _small_run_flags(tmp: str, epochs: int) -> list[str]:
  """train.py flags for a run of `epochs` on 64 generated images, its workdir TMP/run."""
  data_dir = testutil.write_idx_dir(os.path.join(tmp, 'data'), 64, 16)
  return [
    '--config=configs/gap.py', f'--workdir={tmp}/run', f'--config.data_dir={data_dir}',
    '--config.batch_size=8', '--config.eval_batch_size=8', f'--config.num_epochs={epochs}',
    '--config.steps_per_call=2', '--config.plots=False',
  ]  # fmt: skip


# train.py's command line, with the disk filling up as epoch 2's metrics line is written.
_FULL_DISK = """
import errno, os, sys
from absl import app
import cli, metrics, train

real_write_text, calls = metrics.write_text, []

def write_text(path, text):
  calls.append(path) if path.endswith('metrics.jsonl') else None
  if len(calls) != 3 or not path.endswith('metrics.jsonl'):  # Calls: open, epoch 1, epoch 2.
    return real_write_text(path, text)

  def half_then_full(tmp):
    with open(tmp, 'w') as f:
      f.write(text[: len(text) // 2])
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), tmp)

  metrics.write_atomically(path, half_then_full)

metrics.write_text = write_text
cli.define_flags()
app.run(train.main, flags_parser=cli.parse_flags)
"""


class FullDiskTest(absltest.TestCase):
  def test_a_full_disk_is_one_line_and_the_rerun_resumes_losing_nothing(self):
    tmp = self.create_tempdir().full_path
    flags = _small_run_flags(tmp, epochs=3)
    run = functools.partial(
      subprocess.run, cwd=testutil.REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    full = run([sys.executable, '-c', _FULL_DISK, *flags])
    self.assertEqual(full.returncode, 1, full.stderr[-2000:])
    self.assertNotIn('Traceback', full.stderr)
    metrics_path = f'{tmp}/run/metrics.jsonl'
    self.assertEqual(
      full.stderr.strip().splitlines()[-1],
      f'error: No space left on device ({metrics_path}); fix it and rerun to resume.',
    )
    self.assertEqual([r['epoch'] for r in _read_metrics(f'{tmp}/run')], [1])  # Intact.
    self.assertEqual([f for f in os.listdir(f'{tmp}/run') if f.endswith('.tmp')], [])
    done = run([sys.executable, 'train.py', *flags])
    self.assertEqual(done.returncode, 0, done.stderr[-2000:])
    self.assertIn('Resuming from the checkpoint of epoch 2', done.stderr)  # Saved before the line.
    self.assertEqual([r['epoch'] for r in _read_metrics(f'{tmp}/run')], [1, 2, 3])


class TerminalTest(absltest.TestCase):
  def test_every_checkpoint_damaged_is_one_error_line_without_library_noise(self):
    """orbax/tensorstore's failures, and asyncio's echoes of them, stay off the terminal.

    The echoes come from reads racing the failure, so a run shows them only sometimes (about
    one in ten on a loaded 2-core CPU); checkpointing_test.FailedReadNoiseTest holds the
    filter to them every time.
    """
    tmp = self.create_tempdir().full_path
    argv = [sys.executable, 'train.py', *_small_run_flags(tmp, epochs=1)]
    run = functools.partial(
      subprocess.run, argv, cwd=testutil.REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    self.assertEqual(run().returncode, 0)
    for path in testutil.array_data_files(os.path.join(tmp, 'run', 'checkpoints', '1')):
      os.unlink(path)
    rerun = run()
    self.assertEqual(rerun.returncode, 1, rerun.stderr[-2000:])
    lines = rerun.stderr.strip().splitlines()
    self.assertStartsWith(lines[-1], 'error: ', rerun.stderr[-2000:])
    self.assertIn('checkpoint', lines[-1])
    for noise in ('Traceback', 'Exception ignored', 'Event loop is closed', 'never retrieved'):
      self.assertNotIn(noise, rerun.stderr, rerun.stderr[-2000:])
    self.assertLess(len(lines), 40, rerun.stderr)


class FinishedRunTest(absltest.TestCase):
  def test_a_finished_run_stays_finished_and_a_longer_one_is_refused(self):
    tmp = self.create_tempdir().full_path
    flags = _small_run_flags(tmp, epochs=1)
    run = functools.partial(
      subprocess.run, cwd=testutil.REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    first = run([sys.executable, 'train.py', *flags])
    self.assertEqual(first.returncode, 0, first.stderr[-2000:])
    # A quiet start: JAX's TPU probe on a machine without a TPU is not what a run prints first.
    self.assertNotIn("Unable to initialize backend 'tpu'", first.stderr)
    self.assertIn('from the compilation cache', first.stderr)  # The compile line says so.
    with open(f'{tmp}/run/summary.json') as f:
      self.assertIn('seconds_to_target', json.load(f))
    again = run([sys.executable, 'train.py', *flags])
    self.assertEqual(again.returncode, 0, again.stderr[-2000:])
    self.assertEqual(again.stdout, f'already trained 1 epochs; summary: {tmp}/run/summary.json\n')
    self.assertEqual(again.stderr, '')  # No compile, no other line.
    longer = run([sys.executable, 'train.py', *flags, '--config.num_epochs=2'])
    self.assertEqual(longer.returncode, 1, longer.stderr[-2000:])
    last = longer.stderr.strip().splitlines()[-1]
    self.assertStartsWith(last, 'error: no usable checkpoint')
    self.assertIn('saved by a run with other settings: num_epochs=1 (now 2)', last)
    self.assertNotIn('Compiled', longer.stderr)
    self.assertNotIn('Cleaning up existing temporary directories', longer.stderr)  # orbax INFO


class InterruptTest(parameterized.TestCase):
  @parameterized.named_parameters(
    ('mid_epoch', 'S6JAX_PHASE train 2', 'Resuming from the checkpoint of epoch 1'),
    ('while_compiling', 'S6JAX_PHASE resumed 0', 'Compiled'),  # Compilation follows the marker.
  )
  def test_ctrl_c_is_one_line_then_the_rerun_resumes(self, marker, rerun_says):
    tmp = self.create_tempdir().full_path
    argv = [sys.executable, 'train.py', *_small_run_flags(tmp, epochs=2)]
    # No compilation cache: a cache hit could finish compiling before the signal lands.
    env = {**os.environ, 'S6JAX_PHASE_MARKERS': '1', 'JAX_ENABLE_COMPILATION_CACHE': 'false'}
    proc = subprocess.Popen(
      argv, cwd=testutil.REPO_ROOT, env=env, stderr=subprocess.PIPE, text=True
    )
    for line in proc.stderr:
      if line.startswith(marker):
        proc.send_signal(signal.SIGINT)
        break
    _, rest = proc.communicate(timeout=120)
    self.assertEqual(proc.returncode, 130, rest[-2000:])
    self.assertNotIn('Traceback', rest)
    self.assertNotIn('S6JAX_PHASE', rest)  # Nothing ran after the interrupt.
    self.assertEqual(
      rest.strip().splitlines()[-1], 'error: interrupted; rerun the same command to resume.'
    )
    done = subprocess.run(argv, cwd=testutil.REPO_ROOT, capture_output=True, text=True, timeout=300)
    self.assertEqual(done.returncode, 0, done.stderr[-2000:])
    self.assertIn(rerun_says, done.stderr)
    self.assertEqual([r['epoch'] for r in _read_metrics(f'{tmp}/run')], [1, 2])


if __name__ == '__main__':
  absltest.main()
