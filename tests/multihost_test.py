"""multihost's single-process side: the CPU device count, and the calls that must be no-ops
when there is one process (the multi-process side is tests/multiprocess_test.py)."""

import builtins
import io
import types
from unittest import mock

from absl.testing import absltest, parameterized

import multihost


class DefaultCpuDevicesTest(parameterized.TestCase):
  @parameterized.parameters(
    (64, 2, 2),  # This project's machine.
    (64, 3, 2),  # 3 does not divide 64.
    (64, 16, 8),  # At most 8.
    (100, 8, 5),  # The largest count <= 8 that divides 100.
    (7, 4, 1),  # A prime batch: one device.
    (64, 1, 1),
  )
  def test_one_per_core_dividing_the_batch(self, batch, cores, expected):
    self.assertEqual(multihost.default_cpu_devices(batch, cores), expected)

  def test_counts_the_cores_this_process_may_use(self):
    n = multihost.default_cpu_devices(64)
    self.assertBetween(n, 1, 8)
    self.assertEqual(64 % n, 0)

  def test_without_sched_getaffinity_uses_the_cpu_count(self):  # macOS
    with mock.patch.object(multihost, 'os', types.SimpleNamespace(cpu_count=lambda: 4)):
      self.assertEqual(multihost.default_cpu_devices(64), 4)


class CpuModelTest(absltest.TestCase):
  CPUINFO = 'processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9R45\nflags\t: fpu\n'

  def test_the_model_name_line_of_proc_cpuinfo(self):
    with mock.patch.object(builtins, 'open', lambda *a, **k: io.StringIO(self.CPUINFO)):
      self.assertEqual(multihost.cpu_model(), 'AMD EPYC 9R45')

  def test_without_proc_cpuinfo_asks_the_platform(self):  # macOS, Windows
    def missing(*args, **kwargs):
      raise FileNotFoundError(args[0])

    with mock.patch.object(builtins, 'open', missing):
      with mock.patch.object(multihost.platform, 'processor', lambda: 'arm'):
        self.assertEqual(multihost.cpu_model(), 'arm')


class SingleProcessTest(absltest.TestCase):
  def test_barriers_and_agreement_are_no_ops(self):
    multihost.sync('nothing to wait for')
    multihost.agree(3, 'anything')  # One process always agrees with itself.
    self.assertTrue(multihost.is_primary())

  def test_sigterm_is_a_request_then_a_kill(self):
    self.addCleanup(multihost._sigterm.clear)
    self.assertFalse(multihost.preempted())
    multihost._on_sigterm(15, None)
    self.assertTrue(multihost.preempted())
    with mock.patch.object(multihost.os, '_exit', side_effect=SystemExit) as exit_:
      with self.assertRaises(SystemExit):
        multihost._on_sigterm(15, None)
    exit_.assert_called_once_with(143)


if __name__ == '__main__':
  absltest.main()
