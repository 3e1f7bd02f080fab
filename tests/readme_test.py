"""The README's and docs/results.md's numbers and paths come from the code and the committed runs.

README.md is the front page: one summary row per config. docs/results.md holds every seed's
row, each config's footer and its summary row; docs/scaling.md the GPU rows. Each is recomputed
here from docs/runs/ and docs/gpu/, so none can drift from the runs it quotes.
"""

import glob
import importlib
import json
import os
import re
import statistics

from absl.testing import absltest

import checkpointing
import metrics
from configs import mnist
from nets import cnn
from tests import testutil

RUNS = os.path.join(testutil.REPO_ROOT, 'docs', 'runs')
# Where a run's data came from and which seed it was: not part of the recipe.
RUN_LOCAL_FIELDS = {'seed', 'data_dir', 'data_url', 'download_dir', 'tfds_data_dir'}
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


# The H200 run behind each config's cell in the README's table (docs/gpu/h200_2026-11-28/...): the
# folders carry that day's config names (mnist/ was today's gap.py, best/ today's mnist.py).
GPU_SEED0 = {
  'mnist': 'h200_2026-11-28/best/seed0',
  'fast': 'h200_2026-11-28/after_26ddb39/fast/seed0',
  'gap': 'h200_2026-11-28/after_26ddb39/mnist/seed0',
}


def _read(*path: str) -> str:
  with open(os.path.join(testutil.REPO_ROOT, *path)) as f:
    return f.read()


def _readme() -> str:
  return _read('README.md')


def _results() -> str:
  return _read('docs', 'results.md')


def _summaries(run_dir: str) -> list[dict]:
  summaries = []
  for path in sorted(glob.glob(os.path.join(run_dir, 'seed*', 'summary.json'))):
    with open(path) as f:
      summaries.append(json.load(f))
  return summaries


def _row_cells(text: str, name: str) -> list[str] | None:
  """The cells of the table row that starts with `configs/NAME.py`, or None."""
  line = re.search(rf'(?m)^\| `configs/{name}\.py`.*$', text)
  return None if line is None else [c.strip() for c in line.group(0).strip('|').split('|')]


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

  def test_links_resolve(self):
    """Every relative link of the README and of docs/*.md names a file that exists."""
    pages = ['README.md', *(os.path.relpath(p, testutil.REPO_ROOT) for p in glob.glob(
      os.path.join(testutil.REPO_ROOT, 'docs', '*.md')))]  # fmt: skip
    for page in pages:
      for target in re.findall(r'\]\(([^)#:]+)(?:#[^)]*)?\)', _read(page)):
        with self.subTest(page=page, link=target):
          path = os.path.join(testutil.REPO_ROOT, os.path.dirname(page), target)
          self.assertTrue(os.path.exists(path), f'{page} links to {target}, which is missing')

  def test_the_front_page_is_short(self):
    lines = _readme().splitlines()
    self.assertLessEqual(len(lines), 200)
    self.assertIn('make train', '\n'.join(lines[:40]))
    self.assertIn('make test', '\n'.join(lines[:40]))

  def test_every_config_has_its_seeds_committed(self):
    """The README's table claims every config in configs/ over ten seeds."""
    configs = {os.path.basename(p)[:-3] for p in glob.glob(f'{testutil.REPO_ROOT}/configs/*.py')}
    self.assertEqual(configs - {'__init__'}, {os.path.basename(p) for p in glob.glob(f'{RUNS}/*')})
    for run_dir in sorted(glob.glob(os.path.join(RUNS, '*'))):
      self.assertLen(_summaries(run_dir), 10, run_dir)

  def test_front_table_rows_agree_with_the_committed_runs(self):
    for run_dir in sorted(glob.glob(os.path.join(RUNS, '*'))):
      name = os.path.basename(run_dir)
      summaries, t = _summaries(run_dir), metrics.totals(_summaries(run_dir))
      cells = _row_cells(_readme(), name)
      self.assertIsNotNone(cells, f'README has no row for configs/{name}.py')
      minutes = [s['train_seconds'] / 60 for s in summaries]
      gpu = GPU_SEED0.get(name)
      if gpu:
        with open(os.path.join(GPU_RUNS, gpu, 'summary.json')) as f:
          gpu = f'{json.load(f)["train_seconds_to_target"]:.2f}'
      expected = [
        f'{summaries[0]["params"]:,}',
        str(summaries[0]['epochs']),
        f'{t["mean_final"]:.2f}',
        f'{t["min_final"]:.2f}',
        f'{t["lowest_last3"]:.2f}',
        f'{t["steady"]}/{t["runs"]}',
        f'{min(minutes):.1f} / {statistics.median(minutes):.1f}',
        gpu or '—',
      ]
      self.assertEqual(cells[1:], expected, name)

  def test_seed_tables_quote_the_committed_runs(self):
    paths = sorted(glob.glob(os.path.join(RUNS, '*', 'seed*', 'summary.json')))
    self.assertGreaterEqual(len(paths), 10)
    for path in paths:
      with open(path) as f:
        summary = json.load(f)
      # With the seconds-to-target column where the run records it (the default's runs do).
      row = metrics.table_row(summary, metrics.has_wall_seconds([summary]))
      self.assertIn(row, _results(), f'results.md lacks the row of {os.path.relpath(path, RUNS)}')

  def test_config_summary_rows_agree_with_the_committed_runs(self):
    for run_dir in sorted(glob.glob(os.path.join(RUNS, '*'))):
      name = os.path.basename(run_dir)
      summaries = _summaries(run_dir)
      t = metrics.totals(summaries)
      cells = _row_cells(_results(), name)
      self.assertIsNotNone(cells, f'no summary row for configs/{name}.py in docs/results.md')
      self.assertEqual(cells[1], f'{summaries[0]["params"]:,}', name)
      self.assertEqual(cells[2], str(summaries[0]['epochs']), name)
      self.assertEqual(cells[3], f'{t["reached"]}/{t["runs"]}', name)
      self.assertTrue(cells[4].startswith(f'{t["steady"]}/{t["runs"]}'), name)
      self.assertEqual(cells[5], f'{t["mean_final"]:.2f}', name)
      self.assertEqual(cells[6], f'{t["min_final"]:.2f}', name)
      self.assertIn(f'(lowest {t["lowest_last3"]:.2f} %)', cells[4], name)
      self.assertIn(metrics.footer(summaries), _results(), f'results.md lacks the footer of {name}')

  def test_committed_runs_are_runs_of_their_config(self):
    """docs/runs/NAME holds runs of configs/NAME.py as it is now, field for field."""
    for run_dir in sorted(glob.glob(os.path.join(RUNS, '*'))):
      name = os.path.basename(run_dir)
      expected = importlib.import_module(f'configs.{name}').get_config().to_dict()
      expected['arch'] = cnn.layers_of(expected['arch'])
      for path in sorted(glob.glob(os.path.join(run_dir, 'seed*', 'summary.json'))):
        with open(path) as f:
          saved = json.load(f)['config']
        saved = {**checkpointing.FIELDS_ADDED_LATER, **saved}
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
        self.assertIn(gpu_row(run_dir), _read('docs', 'scaling.md'))

  def test_cnn_backprop_table_quotes_the_committed_runs(self):
    """docs/cnn_backprop.md's hand-against-autodiff table, epoch by epoch, from its two runs."""
    runs = os.path.join(testutil.REPO_ROOT, 'docs', 'cnn_backprop')
    hand = metrics.read_history(os.path.join(runs, 'hand_seed0', 'metrics.jsonl'))
    auto = metrics.read_history(os.path.join(runs, 'autodiff_seed0', 'metrics.jsonl'))
    self.assertLen(hand, 15)
    for gradients in ('hand', 'autodiff'):
      with open(os.path.join(runs, f'{gradients}_seed0', 'summary.json')) as f:
        self.assertEqual(json.load(f)['config']['gradients'], gradients)
    page = _read('docs', 'cnn_backprop.md')
    for h, a in zip(hand, auto, strict=True):
      row = (
        f'| {h["epoch"]} | {100 * h["test_accuracy"]:.2f} | {100 * a["test_accuracy"]:.2f} '
        f'| {h["images_per_second"]:,.0f} | {a["images_per_second"]:,.0f} |'
      )
      self.assertIn(row, page)
    for gradients, history in (('hand', hand), ('autodiff', auto)):
      cells = ' | '.join(f'{100 * r["test_accuracy"]:.2f}' for r in history)
      self.assertIn(f'| {gradients} | {cells} |', _readme(), 'README: the per-epoch row')

  def test_ci_runs_the_readme_test_command(self):
    with open(os.path.join(testutil.REPO_ROOT, '.ci', 'run')) as f:
      self.assertIn('make test', f.read())
    self.assertIn('make test', _readme())


if __name__ == '__main__':
  absltest.main()
