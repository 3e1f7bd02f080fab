"""Tests for backprop_check.py: the sweep, the gradient check, its files, the command line.

The workbook it writes and `--check_workbook` are tested in tests/workbook_test.py."""

import csv
import functools
import os
import subprocess
import sys
import tempfile

import chex
import numpy as np
import openpyxl
from absl.testing import absltest, parameterized

import backprop_check as bc
import workbook
from nets import toy

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAST_EPOCH = toy.COURSE_EPOCHS - 1


@functools.cache
def course_sweep() -> tuple[bc.Trajectory, ...]:
  """The default run (6 learning rates × 68 rows, float64), every row checked."""
  return tuple(bc.run_sweep(toy.COURSE_LEARNING_RATES))


def swapped_gradients(params, inputs, targets):
  """A broken hand gradient: the formulas of ∂E/∂w5 and ∂E/∂w6 swapped."""
  grads = toy.hand_gradients(params, inputs, targets)
  return grads | {'w5': grads['w6'], 'w6': grads['w5']}


def slipped_gradients(params, inputs, targets):
  """The classic slip: a_h1·(1 − a_h1) where a_h2·(1 − a_h2) belongs, in ∂E/∂w3 and ∂E/∂w4."""
  f = toy.forward(params, inputs, targets)
  grads = toy.hand_gradients(params, inputs, targets)
  factor = f['a_h1'] * (1 - f['a_h1']) / (f['a_h2'] * (1 - f['a_h2']))
  return grads | {'w3': grads['w3'] * factor, 'w4': grads['w4'] * factor}


class SweepTest(chex.TestCase):
  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.trajectories = course_sweep()
    cls.out_dir = tempfile.mkdtemp()
    cls.paths = bc.write_outputs(cls.trajectories, cls.out_dir)

  def test_course_start_and_simultaneous_update(self):
    for t in self.trajectories:
      self.assertEqual(t.epochs, toy.COURSE_EPOCHS)
      np.testing.assert_allclose(t.columns['E_total'][0], toy.COURSE_E_TOTAL, rtol=1e-15)
      # Row 1's weights are row 0's minus η times row 0's gradients, all eight at once.
      for w in toy.WEIGHT_NAMES:
        expected = t.columns[w][0] - t.learning_rate * t.columns[f'dE_d{w}'][0]
        self.assertEqual(t.columns[w][1], expected)
      # E_total falls at every step for these learning rates.
      self.assertTrue(np.all(np.diff(t.columns['E_total']) < 0))

  def test_every_row_was_checked_against_autodiff(self):
    for t in self.trajectories:
      rtol, atol = bc.GRAD_TOLERANCES['float64']
      # The whole (68-row) history at once, as a second look at what check_gradients asserted.
      chex.assert_trees_all_close(
        t.autodiff, {w: t.columns[f'dE_d{w}'] for w in t.autodiff}, rtol=rtol, atol=atol
      )

  @parameterized.named_parameters(
    ('w5_w6_swapped', swapped_gradients, "'w5'"),
    ('w3_w4_slip', slipped_gradients, "'w3'"),
  )
  def test_broken_hand_gradient_fails_naming_the_weight(self, broken, weight):
    with self.assertRaisesRegex(AssertionError, f'(?s){weight}.*lr=0.5, epoch=0'):
      bc.run_learning_rate(0.5, epochs=3, hand_grad_fn=broken)

  def test_float32_run(self):
    t32 = bc.run_learning_rate(2.0, precision='float32')
    self.assertEqual(t32.columns['E_total'].dtype, np.float32)
    t64 = self.trajectories[toy.COURSE_LEARNING_RATES.index(2.0)]
    # 67 float32 updates drift from float64 by far less than the change they make.
    np.testing.assert_allclose(t32.columns['E_total'], t64.columns['E_total'], rtol=1e-4)

  def test_csv_header_and_values(self):
    with open(self.paths[bc.CSV_NAME], newline='') as f:
      rows = list(csv.reader(f))
    header = (
      'lr,epoch,w1,w2,w3,w4,w5,w6,w7,w8,h1,a_h1,h2,a_h2,o1,a_o1,o2,a_o2,E1,E2,E_total,'
      'dE_dw1,dE_dw2,dE_dw3,dE_dw4,dE_dw5,dE_dw6,dE_dw7,dE_dw8'
    )
    self.assertEqual(','.join(rows[0]), header)
    self.assertLen(rows, 1 + len(toy.COURSE_LEARNING_RATES) * toy.COURSE_EPOCHS)
    # Full precision: every value reads back bit-exact.
    for row in rows[1:]:
      lr, epoch = float(row[0]), int(row[1])
      t = self.trajectories[toy.COURSE_LEARNING_RATES.index(lr)]
      got = np.array(row[2:], dtype=np.float64)
      want = np.array([t.columns[c][epoch] for c in bc.CSV_COLUMNS[2:]])
      np.testing.assert_array_equal(got, want)

  def test_png_has_one_line_per_learning_rate(self):
    with open(self.paths[bc.PNG_NAME], 'rb') as f:
      self.assertEqual(f.read(8), b'\x89PNG\r\n\x1a\n')
    fig = bc.plot_loss(self.trajectories)
    lines = fig.axes[0].get_lines()
    self.assertEqual(
      [ln.get_label() for ln in lines], [f'η = {lr:g}' for lr in toy.COURSE_LEARNING_RATES]
    )
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    self.assertEqual(legend, [ln.get_label() for ln in lines])
    for ln, t in zip(lines, self.trajectories, strict=True):
      np.testing.assert_array_equal(ln.get_ydata(), t.columns['E_total'])

  def test_xlsx_is_the_course_workbook(self):
    # The layout and formulas are tested in workbook_test; here, that they reach the file.
    written = openpyxl.load_workbook(self.paths[bc.XLSX_NAME])
    built = workbook.build_workbook(toy.COURSE_LEARNING_RATES)
    self.assertEqual(written.sheetnames, built.sheetnames)
    for ws in built.worksheets:
      cells = [(c.coordinate, c.value) for row in ws.iter_rows() for c in row]
      self.assertEqual(
        [(c, written[ws.title][c].value) for c, _ in cells], cells, f'sheet {ws.title}'
      )

  def test_format_final_table(self):
    table = bc.format_final_table(self.trajectories)
    self.assertIn(f'epoch {LAST_EPOCH}', table)
    for t in self.trajectories:
      self.assertIn(repr(float(t.columns['E_total'][-1])), table)


class ScriptTest(parameterized.TestCase):
  """backprop_check.py as a command."""

  def _run(self, *args):
    return subprocess.run(
      [sys.executable, 'backprop_check.py', *args], cwd=REPO, capture_output=True, text=True
    )

  def test_runs_and_writes_its_files(self):
    out = self.create_tempdir().full_path
    proc = self._run(f'--out_dir={out}', '--epochs=3', '--learning_rates=0.5,2')
    self.assertEqual(proc.returncode, 0, proc.stderr)
    self.assertIn('final E_total (epoch 2, float64)', proc.stdout)
    self.assertEqual(sorted(os.listdir(out)), sorted([bc.CSV_NAME, bc.PNG_NAME, bc.XLSX_NAME]))

  def test_bad_flags_give_one_clear_error(self):
    tmp = self.create_tempdir().full_path
    not_a_dir = os.path.join(tmp, 'file')
    open(not_a_dir, 'w').close()
    cases = {
      '--learning_rates=0.1,abc': "'abc' is not a number",
      '--learning_rates=0.1,-0.5': '-0.5 is not > 0',
      '--weights=0.1,0.2,0.3': 'needs exactly 8 comma-separated numbers, got 3',
      '--epochs=0': '--epochs=0',
      '--epochs=100000000': f'--epochs must be at most {bc.MAX_EPOCHS:,}',
      f'--out_dir={not_a_dir}/sub': 'is not a writable directory',
    }
    # Started together: each one is mostly Python start-up.
    procs = {
      arg: subprocess.Popen(
        [sys.executable, 'backprop_check.py', f'--out_dir={tmp}', arg],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
      )
      for arg in cases
    }
    for arg, message in cases.items():
      with self.subTest(arg):
        stdout, stderr = procs[arg].communicate()
        self.assertNotEqual(procs[arg].returncode, 0)
        self.assertIn(message, stderr)
        self.assertNotIn('Traceback', stderr + stdout)
        errors = [ln for ln in stderr.splitlines() if 'error' in ln.lower()]
        self.assertLen(errors, 1, stderr)
        self.assertStartsWith(errors[0], 'backprop_check.py: error: ')

  def test_epochs_bound_is_checked_before_any_work(self):
    out = os.path.join(self.create_tempdir().full_path, 'not_made')
    proc = subprocess.run(
      [sys.executable, 'backprop_check.py', '--epochs=100000000', f'--out_dir={out}'],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=60,  # Unbounded, this run would need ~29 GB and about a day.
    )
    self.assertEqual(proc.returncode, 1)
    self.assertIn(f'--epochs must be at most {bc.MAX_EPOCHS:,}', proc.stderr)
    self.assertFalse(os.path.exists(out))
    # The bound leaves room in a sheet for the rows above the table.
    self.assertLessEqual(workbook.SHEET_FIRST_ROW + bc.MAX_EPOCHS - 1, workbook.MAX_SHEET_ROWS)


if __name__ == '__main__':
  absltest.main()
