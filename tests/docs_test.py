"""The docs cannot drift: their numbers, tables, figures and commands are regenerated here.

docs/make_docs.py writes the blocks between `<!-- BEGIN generated:… -->` markers in
docs/backprop.md and docs/model.md; these tests regenerate them from the code (and from the run
summaries committed under docs/runs/mnist) and compare, redraw the figures and check the data
they plot, and run every command quoted in the docs in a shortened form. A failure here means
the code changed under the docs: rerun `python -m docs.make_docs` and read the diff.
"""

import functools
import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from unittest import mock

import numpy as np
from absl.testing import absltest

import backprop_check as bc
import plots
from docs import cnn_worked
from docs import make_docs as md
from nets import toy
from tests import testutil

DOCS = os.path.join(testutil.REPO_ROOT, 'docs')
DOC_FILES = ('backprop.md', 'model.md', 'cnn_backprop.md')
REGENERATE = 'The committed docs are stale: run `python -m docs.make_docs` and commit the diff.'


def _read(name: str, docs: str = DOCS) -> str:
  with open(os.path.join(docs, name)) as f:
    return f.read()


@functools.cache
def _backprop() -> md.Backprop:
  return md.compute_backprop()


class GeneratedBlocksTest(absltest.TestCase):
  def _assert_blocks(self, doc: str, expected: dict[str, str]):
    committed = md.read_blocks(_read(doc))
    self.assertEqual(sorted(committed), sorted(expected), f'{doc}: blocks. {REGENERATE}')
    for name, body in expected.items():
      self.assertMultiLineEqual(committed[name], body, f'{doc}: block {name}. {REGENERATE}')

  def test_backprop_blocks_equal_the_code(self):
    self._assert_blocks('backprop.md', md.backprop_blocks(_backprop()))

  def test_model_blocks_equal_the_code_and_committed_runs(self):
    self._assert_blocks('model.md', md.model_blocks(md.load_runs(DOCS)))

  def test_cnn_backprop_blocks_equal_the_code(self):
    self._assert_blocks('cnn_backprop.md', md.cnn_backprop_blocks())

  def test_starting_error_is_the_course_value(self):
    # The page's headline number, against the constant the toy tests pin.
    self.assertIn(f'E_total = {md.g(toy.COURSE_E_TOTAL)}**', _read('backprop.md'))

  def test_committed_runs_are_whole(self):
    runs = md.load_runs(DOCS)
    self.assertNotEmpty(runs, 'no runs under docs/runs/mnist')
    for seed, run in runs.items():
      s, h = run['summary'], run['history']
      self.assertEqual(s['seed'], seed)
      self.assertEqual(s['epochs'], len(h), f'seed {seed}: metrics.jsonl is not the whole run')
      self.assertEqual(s['best_test_accuracy'], max(r['test_accuracy'] for r in h))

  def test_fill_blocks_refuses_missing_or_unknown_blocks(self):
    text = f'{md.BEGIN.format("a")}\nold\n{md.END.format("a")}\n'
    self.assertEqual(md.fill_blocks(text, {'a': 'new\n'}), text.replace('old', 'new'))
    with self.assertRaisesRegex(ValueError, 'do not match'):
      md.fill_blocks(text, {'a': 'x\n', 'b': 'y\n'})


class FiguresTest(absltest.TestCase):
  def test_network_figure_labels_the_eight_starting_weights(self):
    fig = md.draw_network(_backprop().start)
    self.assertEqual(md.weight_labels(fig), toy.COURSE_WEIGHTS)
    neurons = sorted(t.get_text() for t in fig.axes[0].texts if t.get_gid() == 'neuron')
    self.assertEqual(neurons, ['h1 | σ', 'h2 | σ', 'i1', 'i2', 'o1 | σ', 'o2 | σ'])

  def test_loss_figures_plot_each_learning_rates_e_total(self):
    b = _backprop()
    for trajectories in (b.sweep, b.large):
      lines = bc.plot_loss(trajectories).axes[0].get_lines()
      self.assertLen(lines, len(trajectories))
      for line, t in zip(lines, trajectories, strict=True):
        self.assertEqual(line.get_label(), f'η = {t.learning_rate:g}')
        np.testing.assert_array_equal(line.get_ydata(), t.columns['E_total'])
    self.assertEqual([t.learning_rate for t in b.sweep], list(toy.COURSE_LEARNING_RATES))

  def test_the_frontier_has_every_committed_config_and_its_seeds(self):
    configs = {c['name']: c for c in md.frontier_configs(DOCS)}
    self.assertEqual(set(configs), {os.path.basename(p) for p in glob.glob(f'{DOCS}/runs/*')})
    for name, c in configs.items():
      seeds = glob.glob(f'{DOCS}/runs/{name}/seed*/summary.json')
      self.assertLen(c['finals'], len(seeds), name)
    out = os.path.join(self.create_tempdir().full_path, 'frontier.png')
    plots.plot_frontier(list(configs.values()), out)
    with open(out, 'rb') as f:
      self.assertEqual(f.read(8), b'\x89PNG\r\n\x1a\n')

  def test_cnn_worked_figure_shows_the_pages_maps(self):
    w = cnn_worked.compute()
    shown = {
      im.get_gid(): im.get_array() for ax in cnn_worked.figure(w).axes for im in ax.get_images()
    }
    self.assertLen(shown, 8)
    values = {name: np.asarray(value) for name, _, value in w.steps}
    for name, data in shown.items():
      np.testing.assert_array_equal(data, values[name].reshape(data.shape), err_msg=name)

  def test_cnn_worked_example_refuses_a_wrong_rule(self):
    # A ReLU backward that lets the gradient through everywhere: the steps no longer give
    # jax.grad's gradients, and the page is not written.
    wrong = mock.patch.object(cnn_worked.cb, 'relu_backward', lambda x, dy: dy)
    with wrong, self.assertRaisesRegex(AssertionError, 'disagrees'):
      cnn_worked.markdown(cnn_worked.compute())

  def test_figures_regenerate(self):
    out = self.create_tempdir().full_path
    written = [*md.write_backprop_figures(_backprop(), out)]
    written += md.write_run_figures(md.load_runs(DOCS), out)
    self.assertCountEqual(
      written, ['network.png', 'loss_vs_epoch.png', 'large_lr.png', 'curves.png', 'frontier.png']
    )
    for name in written:
      with open(os.path.join(out, md.FIGURES, name), 'rb') as f:
        self.assertEqual(f.read(8), b'\x89PNG\r\n\x1a\n', name)

  def test_images_and_links_in_the_docs_exist_and_are_small(self):
    for doc in DOC_FILES:
      for target in re.findall(r'\]\(([^)#\s]+)(?:#L\d+)?\)', _read(doc)):
        if '://' not in target:
          path = os.path.normpath(os.path.join(DOCS, target))
          self.assertTrue(os.path.exists(path), f'{doc} links {target}, which does not exist')
    for png in glob.glob(os.path.join(DOCS, '**', '*.png'), recursive=True):
      self.assertLess(os.path.getsize(png), 300_000, f'{png} is too big to commit')

  def test_code_references_name_real_definitions(self):
    # `path.py: name` in the prose must name a def or assignment in that file.
    for doc in DOC_FILES:
      for path, name in re.findall(r'`([\w/]+\.py): (\w+)`', _read(doc)):
        with open(os.path.join(testutil.REPO_ROOT, path)) as f:
          source = f.read()
        self.assertRegex(
          source, rf'(?m)^\s*(def {name}\(|{name} = )', f'{doc}: `{path}: {name}` not found'
        )


def doc_commands() -> list[str]:
  """Every command line in a ```bash block of the docs, in order, without repeats."""
  commands = []
  for doc in DOC_FILES:
    for block in re.findall(r'```bash\n(.*?)```', _read(doc), re.S):
      for line in block.replace('\\\n', ' ').splitlines():
        line = line.split('  #')[0].strip()
        if line and not line.startswith('#') and line not in commands:
          commands.append(line)
  return commands


class CommandsTest(absltest.TestCase):
  """Each command in the docs runs, shortened: 3 rows of the sheet, one tiny training run."""

  def shorten(self, command: str, tmp: str) -> list[str]:
    argv = shlex.split(command)
    self.assertEqual(argv[0], 'python', command)
    if argv[1] == '-m':  # `python -m scripts.seeds` is the script scripts/seeds.py.
      argv = ['python', argv[2].replace('.', '/') + '.py', *argv[3:]]
    script = argv[1]
    argv = [a.replace('workdirs/gap', f'{tmp}/runs') for a in argv]
    if script == 'docs/make_docs.py':
      return [*argv, f'--docs_dir={tmp}/docs']
    if script == 'backprop_check.py':
      argv = [re.sub(r'^--out_dir=/tmp/', f'--out_dir={tmp}/', a) for a in argv]
      return [a for a in argv if not a.startswith('--epochs=')] + ['--epochs=3']
    if script == 'scripts/seeds.py':
      argv = ['--seeds=0' if a.startswith('--seeds=') else a for a in argv]
      argv = [
        f'--config.data_dir={tmp}/idx' if a.startswith('--config.data_dir=') else a for a in argv
      ]
      overrides = ('num_epochs=1', 'batch_size=8', 'eval_batch_size=8', 'steps_per_call=1')
      return argv + [f'--config.{o}' for o in overrides]
    if script == '-c':
      return argv
    self.fail(f'no shortened form for {command!r}: add one in tests/docs_test.py')

  def test_every_command_in_the_docs_runs(self):
    commands = doc_commands()
    self.assertGreaterEqual(len(commands), 5, commands)
    tmp = self.create_tempdir().full_path
    os.makedirs(f'{tmp}/docs')
    for name in DOC_FILES:
      shutil.copy(os.path.join(DOCS, name), f'{tmp}/docs')
    testutil.write_idx_dir(f'{tmp}/idx', num_train=16, num_test=8)
    env = dict(os.environ, JAX_PLATFORMS='cpu')
    for command in commands:
      argv = [sys.executable, *self.shorten(command, tmp)[1:]]
      if argv[1:] == ['docs/make_docs.py', f'--docs_dir={tmp}/docs']:
        # In this process, where the sweeps are compiled already (saves ~10 s); the form with
        # --runs below runs as a subprocess and covers the script's own start-up.
        self.assertCountEqual(md.regenerate(f'{tmp}/docs'), DOC_FILES)
        continue
      if '/' in argv[1]:  # A script in a folder runs as a module: python -m scripts.seeds.
        run = [argv[0], '-m', argv[1].removesuffix('.py').replace('/', '.'), *argv[2:]]
      else:
        run = argv
      proc = subprocess.run(
        run, cwd=testutil.REPO_ROOT, capture_output=True, text=True, env=env, timeout=300
      )
      self.assertEqual(proc.returncode, 0, f'{command}\n(ran {argv})\n{proc.stderr[-3000:]}')
      if argv[1] == '-c':  # The layer-table one-liner prints the page's table.
        blocks = md.read_blocks(_read('model.md'))
        self.assertEqual(proc.stdout, blocks['model-layers'], command)
      if argv[1] == 'scripts/seeds.py':
        with open(f'{tmp}/runs/seed0/summary.json') as f:
          self.assertEqual(json.load(f)['epochs'], 1)

    # The generator, run from the command line on copies, rewrote the same backprop page and a
    # model page whose run blocks now come from the tiny run.
    self.assertEqual(_read('backprop.md'), _read('backprop.md', f'{tmp}/docs'))
    tiny = md.read_blocks(_read('model.md', f'{tmp}/docs'))
    self.assertIn('| 0 | 17,946 |', tiny['model-seeds'])
    self.assertTrue(os.path.exists(f'{tmp}/docs/runs/gap/seed0/misclassified.png'))


if __name__ == '__main__':
  absltest.main()
