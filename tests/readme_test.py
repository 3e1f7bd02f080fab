"""The README's quoted numbers and paths come from the code; this keeps them from drifting."""

import os
import re

from absl.testing import absltest

from nets import cnn
from tests import testutil


def _readme() -> str:
  with open(os.path.join(testutil.REPO_ROOT, 'README.md')) as f:
    return f.read()


class ReadmeTest(absltest.TestCase):
  def test_model_table_is_what_summary_prints(self):
    table = cnn.format_summary(cnn.summary(cnn.build('default')))
    self.assertIn(table, _readme(), 'README model table is stale: paste format_summary output')

  def test_parameter_count_quoted(self):
    self.assertIn(f'{cnn.param_count(cnn.build("default")):,} parameters', _readme())

  def test_paths_exist(self):
    for path in sorted(
      set(re.findall(r'`((?:configs|nets|scripts|bench|tests|docs)/[\w./-]+)`', _readme()))
    ):
      with self.subTest(path=path):
        self.assertTrue(os.path.exists(os.path.join(testutil.REPO_ROOT, path)), path)

  def test_ci_runs_the_readme_test_command(self):
    with open(os.path.join(testutil.REPO_ROOT, '.ci', 'run')) as f:
      self.assertIn('make test', f.read())
    self.assertIn('make test', _readme())


if __name__ == '__main__':
  absltest.main()
