"""The README's quoted numbers and paths come from the code; this keeps them from drifting."""

import glob
import importlib
import json
import os
import re

from absl.testing import absltest

import metrics
from configs import mnist
from nets import cnn
from tests import testutil

RUNS = os.path.join(testutil.REPO_ROOT, 'docs', 'runs')
# Where a run's data came from and which seed it was: not part of the recipe.
RUN_LOCAL_FIELDS = {'seed', 'data_dir', 'data_url', 'download_dir', 'tfds_data_dir'}
# Fields added to the configs after some runs were made, with the value that means "as before".
FIELDS_ADDED_LATER = {'ema_decay': 0.0}
# Architectures renamed after some runs were made (same layers): old name -> name now.
RENAMED_ARCHS = {'default': 'gap', 'tiny6h': 'tiny6'}
GPU_RUNS = os.path.join(testutil.REPO_ROOT, 'docs', 'gpu')


def gpu_row(run_dir: str) -> str:
  """The README's GPU-table row for one config's runs (docs/gpu/<machine>/[...]/<config>)."""
  summaries = []
  for path in sorted(glob.glob(os.path.join(run_dir, 'seed*', 'summary.json'))):
    with open(path) as f:
      summaries.append(json.load(f))
  return metrics.timing_row(
    summaries, metrics.read_history(os.path.join(run_dir, 'seed0', 'metrics.jsonl'))
  )


def _readme() -> str:
  with open(os.path.join(testutil.REPO_ROOT, 'README.md')) as f:
    return f.read()


class ReadmeTest(absltest.TestCase):
  def test_model_table_is_what_summary_prints(self):
    config = mnist.get_config()
    table = cnn.format_summary(cnn.summary(cnn.build(config.arch, config.dropout_rate)))
    self.assertIn(table, _readme(), 'README model table is stale: paste format_summary output')

  def test_parameter_count_quoted(self):
    config = mnist.get_config()
    params = cnn.param_count(cnn.build(config.arch, config.dropout_rate))
    self.assertIn(f'the default ({params:,} parameters', _readme())

  def test_paths_exist(self):
    for path in sorted(
      set(re.findall(r'`((?:configs|nets|scripts|bench|tests|docs)/[\w./-]+)`', _readme()))
    ):
      with self.subTest(path=path):
        self.assertTrue(os.path.exists(os.path.join(testutil.REPO_ROOT, path)), path)

  def test_seed_tables_quote_the_committed_runs(self):
    paths = sorted(glob.glob(os.path.join(RUNS, '*', 'seed*', 'summary.json')))
    self.assertGreaterEqual(len(paths), 10)
    for path in paths:
      with open(path) as f:
        row = metrics.row(json.load(f))
      self.assertIn(row, _readme(), f'README lacks the row of {os.path.relpath(path, RUNS)}')

  def test_config_summary_rows_agree_with_the_committed_runs(self):
    for run_dir in sorted(glob.glob(os.path.join(RUNS, '*'))):
      name = os.path.basename(run_dir)
      summaries = []
      for path in sorted(glob.glob(os.path.join(run_dir, 'seed*', 'summary.json'))):
        with open(path) as f:
          summaries.append(json.load(f))
      t = metrics.totals(summaries)
      line = re.search(rf'(?m)^\| `configs/{name}\.py`.*$', _readme())
      self.assertIsNotNone(line, f'no summary row for configs/{name}.py')
      cells = [c.strip() for c in line.group(0).strip('|').split('|')]
      self.assertEqual(cells[1], f'{summaries[0]["params"]:,}', name)
      self.assertEqual(cells[2], str(summaries[0]['epochs']), name)
      self.assertEqual(cells[3], f'{t["reached"]}/{t["runs"]}', name)
      self.assertTrue(cells[4].startswith(f'{t["steady"]}/{t["runs"]}'), name)
      self.assertEqual(cells[5], f'{t["mean_final"]:.2f}', name)
      self.assertEqual(cells[6], f'{t["min_final"]:.2f}', name)
      self.assertIn(f'(lowest {t["lowest_last3"]:.2f} %)', cells[4], name)
      self.assertIn(metrics.footer(summaries), _readme(), f'README lacks the footer of {name}')

  def test_committed_runs_are_runs_of_their_config(self):
    """docs/runs/NAME holds runs of configs/NAME.py as it is now, field for field."""
    for run_dir in sorted(glob.glob(os.path.join(RUNS, '*'))):
      name = os.path.basename(run_dir)
      expected = importlib.import_module(f'configs.{name}').get_config().to_dict()
      expected['arch'] = cnn.layers_of(expected['arch'])
      for path in sorted(glob.glob(os.path.join(run_dir, 'seed*', 'summary.json'))):
        with open(path) as f:
          saved = json.load(f)['config']
        saved = {**FIELDS_ADDED_LATER, **saved}
        # The same layers under a name or a spec: nets.cnn.layers_of resolves both.
        saved['arch'] = cnn.layers_of(RENAMED_ARCHS.get(saved['arch'], saved['arch']))
        with self.subTest(run=os.path.relpath(path, RUNS)):
          self.assertEqual(
            {k: v for k, v in saved.items() if k not in RUN_LOCAL_FIELDS},
            {k: v for k, v in expected.items() if k not in RUN_LOCAL_FIELDS},
          )

  def test_gpu_rows_quote_the_committed_gpu_runs(self):
    dirs = sorted({os.path.dirname(p) for p in glob.glob(f'{GPU_RUNS}/**/seed0', recursive=True)})
    self.assertGreaterEqual(len(dirs), 3)
    for run_dir in dirs:
      with self.subTest(run=os.path.relpath(run_dir, GPU_RUNS)):
        self.assertIn(gpu_row(run_dir), _readme())

  def test_ci_runs_the_readme_test_command(self):
    with open(os.path.join(testutil.REPO_ROOT, '.ci', 'run')) as f:
      self.assertIn('make test', f.read())
    self.assertIn('make test', _readme())


if __name__ == '__main__':
  absltest.main()
