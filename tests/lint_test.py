"""The formatter and linter run with the tests, so style never drifts (config: pyproject.toml)."""

import subprocess
import sys

from absl.testing import absltest

from tests import testutil


class LintTest(absltest.TestCase):
  def _ruff(self, *args):
    proc = subprocess.run(
      [sys.executable, '-m', 'ruff', *args], cwd=testutil.REPO_ROOT, capture_output=True, text=True
    )
    self.assertEqual(proc.returncode, 0, f'ruff {" ".join(args)}:\n{proc.stdout}{proc.stderr}')

  def test_ruff_format(self):
    self._ruff('format', '--check', '.')

  def test_ruff_check(self):
    self._ruff('check', '.')


if __name__ == '__main__':
  absltest.main()
