"""startup.py: the persistent compilation cache on by default, where it goes, its failures as
warnings, the hit count for the log; the TPU probe line dropped."""

import errno
import logging
import os
from unittest import mock

import jax
import jax.numpy as jnp
from absl.testing import absltest
from jax.experimental.compilation_cache import compilation_cache

import startup

_SETTINGS = (
  'jax_enable_compilation_cache',
  'jax_compilation_cache_dir',
  'jax_persistent_cache_min_compile_time_secs',
)


class CompileCacheTest(absltest.TestCase):
  def setUp(self):
    super().setUp()
    # The session's own cache settings (tests/conftest.py) come back after each test.
    saved = {name: getattr(jax.config, name) for name in _SETTINGS}

    def restore():
      for name, value in saved.items():
        jax.config.update(name, value)
      compilation_cache.reset_cache()

    self.addCleanup(restore)
    jax.config.update('jax_enable_compilation_cache', True)
    jax.config.update('jax_compilation_cache_dir', None)

  def test_default_folder_is_the_users_cache_folder(self):
    home = self.create_tempdir().full_path
    with mock.patch.dict(os.environ, {'XDG_CACHE_HOME': home}):
      self.assertEqual(startup.enable_compile_cache(), os.path.join(home, 's6jax'))
    self.assertEqual(jax.config.jax_compilation_cache_dir, os.path.join(home, 's6jax'))
    self.assertTrue(os.path.isdir(os.path.join(home, 's6jax')))
    with mock.patch.dict(os.environ, {'HOME': home}):
      os.environ.pop('XDG_CACHE_HOME', None)
      self.assertEqual(startup.default_cache_dir(), os.path.join(home, '.cache', 's6jax'))

  def test_jax_compilation_cache_dir_wins_over_the_default_and_the_flag_over_both(self):
    env_folder, flag_folder = (self.create_tempdir().full_path for _ in range(2))
    jax.config.update('jax_compilation_cache_dir', env_folder)  # As JAX reads the variable.
    self.assertEqual(startup.enable_compile_cache(), env_folder)
    self.assertEqual(startup.enable_compile_cache(flag_folder), flag_folder)
    self.assertEqual(jax.config.jax_compilation_cache_dir, flag_folder)

  def test_off_and_a_disabled_cache_stay_off(self):
    self.assertIsNone(startup.enable_compile_cache('off'))
    self.assertFalse(jax.config.jax_enable_compilation_cache)
    # JAX_ENABLE_COMPILATION_CACHE=false: no folder turns it back on.
    self.assertIsNone(startup.enable_compile_cache(self.create_tempdir().full_path))
    self.assertEqual(startup.describe_cache((0, 0)), 'compilation cache off')

  def test_a_read_only_folder_is_a_warning_and_the_run_compiles_without_it(self):
    folder = self.create_tempdir().full_path
    denied = PermissionError(errno.EACCES, 'Permission denied')
    with mock.patch('tempfile.NamedTemporaryFile', side_effect=denied):  # Even for root.
      with self.assertLogs(logger='absl', level='WARNING') as logs:
        self.assertIsNone(startup.enable_compile_cache(folder))
    self.assertIn(f'{folder} cannot be written (Permission denied)', logs.output[0])
    self.assertFalse(jax.config.jax_enable_compilation_cache)
    self.assertEqual(float(jax.jit(lambda x: x + 1)(jnp.float32(1))), 2.0)

  def test_a_folder_that_is_a_file_is_a_warning(self):
    blocker = self.create_tempfile('not_a_folder').full_path
    with self.assertLogs(logger='absl', level='WARNING') as logs:
      self.assertIsNone(startup.enable_compile_cache(blocker))
    self.assertIn(f'{blocker} cannot be written', logs.output[0])

  def test_hits_are_counted(self):
    folder = self.create_tempdir().full_path
    startup.enable_compile_cache(folder)
    x = jnp.ones(7)
    before = startup.cache_counts()
    for _ in range(2):  # A new function each time: the second compile reads the first's entry.
      jax.jit(lambda x: jnp.sin(x) * 3.0 + 0.25).lower(x).compile()
    hits, requests = (b - a for a, b in zip(before, startup.cache_counts(), strict=True))
    self.assertEqual((hits, requests), (1, 2))
    self.assertEqual(startup.describe_cache((1, 2)), '1 of 2 from the compilation cache')


class QuietStartTest(absltest.TestCase):
  def test_the_tpu_probe_line_is_dropped_and_other_lines_stay(self):
    logger = logging.getLogger('jax._src.xla_bridge')
    before = list(logger.filters)
    self.addCleanup(lambda: [logger.removeFilter(f) for f in logger.filters if f not in before])
    with mock.patch('importlib.util.find_spec', return_value=None):
      startup.quiet_start()
    with self.assertLogs(logger, level='INFO') as logs:
      logger.info("Unable to initialize backend 'tpu': INTERNAL: Failed to open libtpu.so")
      logger.warning('something else')
    self.assertEqual(logs.output, ['WARNING:jax._src.xla_bridge:something else'])

  def test_orbax_temp_folder_line_is_dropped(self):
    logger = logging.getLogger('absl')
    before = list(logger.filters)
    self.addCleanup(lambda: [logger.removeFilter(f) for f in logger.filters if f not in before])
    startup.quiet_start()
    with self.assertLogs(logger, level='INFO') as logs:
      logger.info('Cleaning up existing temporary directories at /w/checkpoints.')
      logger.info('Saved.')
    self.assertEqual(logs.output, ['INFO:absl:Saved.'])


if __name__ == '__main__':
  absltest.main()
