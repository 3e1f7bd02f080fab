"""Tests for backprop_check.py: the sweep, its files, LibreOffice's recompute, --check_workbook."""

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
from nets import toy

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAST_EPOCH = toy.COURSE_EPOCHS - 1
# LibreOffice stores 15 significant digits in xlsx; everything else is float64 arithmetic.
SPREADSHEET_RTOL, SPREADSHEET_ATOL = 1e-12, 1e-15


@functools.cache
def _course_sweep() -> tuple[bc.Trajectory, ...]:
  """The default run (6 learning rates × 68 rows, float64), every row checked."""
  return tuple(bc.run_sweep(toy.COURSE_LEARNING_RATES))


def _swapped_gradients(params, inputs, targets):
  """A broken hand gradient: the formulas of ∂E/∂w5 and ∂E/∂w6 swapped."""
  grads = toy.hand_gradients(params, inputs, targets)
  return grads | {'w5': grads['w6'], 'w6': grads['w5']}


def _slipped_gradients(params, inputs, targets):
  """The classic slip: a_h1·(1 − a_h1) where a_h2·(1 − a_h2) belongs, in ∂E/∂w3 and ∂E/∂w4."""
  f = toy.forward(params, inputs, targets)
  grads = toy.hand_gradients(params, inputs, targets)
  factor = f['a_h1'] * (1 - f['a_h1']) / (f['a_h2'] * (1 - f['a_h2']))
  return grads | {'w3': grads['w3'] * factor, 'w4': grads['w4'] * factor}


def _require_soffice(test: absltest.TestCase) -> None:
  if bc.find_soffice() is None:
    if os.environ.get('CI') == 'true':
      test.fail('LibreOffice (soffice) is required in CI: apt-get install libreoffice-calc')
    test.skipTest('LibreOffice (soffice) is not installed')


def _sheet_values(path: str, sheet: str) -> dict[str, np.ndarray]:
  """The data rows of one sheet of a recomputed workbook, by column name."""
  ws = openpyxl.load_workbook(path, data_only=True)[sheet]
  n = toy.COURSE_EPOCHS
  out = {}
  for c, letter in bc.SHEET_LETTERS.items():
    cells = ws[f'{letter}{bc.SHEET_FIRST_ROW}:{letter}{bc.SHEET_FIRST_ROW + n - 1}']
    out[c] = np.array([row[0].value for row in cells], dtype=np.float64)
  return out


def _assert_sheet_matches(values: dict[str, np.ndarray], trajectory: bc.Trajectory, where: str):
  np.testing.assert_array_equal(values['epoch'], np.arange(trajectory.epochs), err_msg=where)
  for c in bc.CSV_COLUMNS[2:]:
    np.testing.assert_allclose(
      values[c],
      trajectory.columns[c],
      rtol=SPREADSHEET_RTOL,
      atol=SPREADSHEET_ATOL,
      err_msg=f'{where}, column {c}',
    )


def _value_workbook(path: str, trajectory: bc.Trajectory, headers: dict[str, str] | None = None):
  """A workbook of plain values, as a student's sheet looks to openpyxl once saved by Excel.

  Uses other header spellings than ours (∂E_total/∂w1, dE/dw2, dE_dw3, ...) and a 'learning
  rate' label, to exercise the header matching.
  """
  spellings = ['∂E_total/∂w{}', 'dE/dw{}', 'dE_dw{}', '∂E/∂w{}']
  headers = headers or {
    **{c: c for c in bc.CSV_COLUMNS[2:]},
    'a_h1': 'out_h1',
    'E_total': 'E_tot',
    **{f'dE_dw{k}': spellings[k % 4].format(k) for k in range(1, 9)},
  }
  wb = openpyxl.Workbook()
  ws = wb.active
  ws.append(['i1', toy.COURSE_INPUTS[0], 't1', toy.COURSE_TARGETS[0]])
  ws.append(['i2', toy.COURSE_INPUTS[1], 't2', toy.COURSE_TARGETS[1]])
  ws.append(['Learning Rate', trajectory.learning_rate])
  ws.append([])
  ws.append(list(headers.values()))
  for epoch in range(trajectory.epochs):
    ws.append([float(trajectory.columns[c][epoch]) for c in headers])
  wb.save(path)


class SweepTest(chex.TestCase):
  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.trajectories = _course_sweep()
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
    ('w5_w6_swapped', _swapped_gradients, "'w5'"),
    ('w3_w4_slip', _slipped_gradients, "'w3'"),
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

  def test_workbook_layout_and_live_formulas(self):
    wb = openpyxl.load_workbook(self.paths[bc.XLSX_NAME])
    self.assertEqual(wb.sheetnames, [f'lr={lr:g}' for lr in toy.COURSE_LEARNING_RATES])
    ws = wb['lr=0.5']
    self.assertEqual(ws['A6'].value, 'η')
    self.assertEqual(ws['B6'].value, 0.5)
    header = [c.value for c in ws[bc.SHEET_HEADER_ROW]][: len(bc.SHEET_COLUMNS)]
    self.assertEqual(header[:3], ['epoch', 'w1', 'w2'])
    self.assertEqual(header[-1], '∂E/∂w8')
    first, last = bc.SHEET_FIRST_ROW, bc.SHEET_FIRST_ROW + LAST_EPOCH
    self.assertEqual(ws[f'B{first}'].value, 0.15)  # epoch-0 weights are the editable inputs
    self.assertEqual(ws[f'B{first + 1}'].value, f'=B{first}-$B$6*U{first}')
    for c in bc.SHEET_COLUMNS[9:]:  # every intermediate and gradient is a formula, every row
      for r in (first, last):
        self.assertTrue(str(ws[f'{bc.SHEET_LETTERS[c]}{r}'].value).startswith('='), (c, r))
    self.assertIsNone(ws[f'A{last + 1}'].value)
    self.assertLen(ws._charts, 1)  # E_total chart; openpyxl has no public accessor

  def test_format_final_table(self):
    table = bc.format_final_table(self.trajectories)
    self.assertIn(f'epoch {LAST_EPOCH}', table)
    for t in self.trajectories:
      self.assertIn(repr(float(t.columns['E_total'][-1])), table)

  def test_write_atomically_keeps_the_old_file_when_writing_fails(self):
    d = self.create_tempdir().full_path
    path = os.path.join(d, 'out.csv')
    with open(path, 'w') as f:
      f.write('old complete file\n')

    def half_write(tmp):
      with open(tmp, 'w') as f:
        f.write('half a fi')
      raise KeyboardInterrupt  # as if killed mid-write

    with self.assertRaises(KeyboardInterrupt):
      bc.write_atomically(path, half_write)
    with open(path) as f:
      self.assertEqual(f.read(), 'old complete file\n')
    self.assertEqual(os.listdir(d), ['out.csv'])  # no temp file left behind
    bc.write_atomically(path, lambda tmp: open(tmp, 'w').write('new\n'))
    self.assertEqual(open(path).read(), 'new\n')
    self.assertEqual(os.listdir(d), ['out.csv'])


class CheckWorkbookTest(parameterized.TestCase):
  """--check_workbook on value-only workbooks (what openpyxl sees in a sheet saved by Excel)."""

  @parameterized.parameters(
    ('∂E/∂w1', 'dE_dw1'),
    ('dE/dw1', 'dE_dw1'),
    ('∂E_total/∂w1', 'dE_dw1'),
    ('dE_dw1', 'dE_dw1'),
    ('DE/DW7', 'dE_dw7'),
    ('∂Etot / ∂w8', 'dE_dw8'),
    ('a_h1', 'a_h1'),
    ('A H1', 'a_h1'),
    ('out_h2', 'a_h2'),
    ('E_total', 'E_total'),
    ('E tot', 'E_total'),
    ('w3', 'w3'),
    ('η', 'lr'),
    ('learning rate', 'lr'),
    ('dE/dw9', None),
    ('weight', None),
  )
  def test_header_matching(self, header, name):
    self.assertEqual(bc.canonical_name(header), name)

  def _check(self, trajectory):
    path = os.path.join(self.create_tempdir().full_path, 'student.xlsx')
    _value_workbook(path, trajectory)
    (report,) = bc.check_workbook(path)
    return report, bc.format_report(path, [report])

  def test_right_sheet_agrees(self):
    report, text = self._check(_course_sweep()[2])
    self.assertEqual(report.mismatches, ())
    self.assertIsNone(report.problem)
    self.assertIn(f'all {toy.COURSE_EPOCHS} rows agree', text)

  def test_w3_w4_slip_is_named(self):
    # A self-consistent wrong sheet: the slipped gradients also drive its weight updates.
    slipped = bc.run_learning_rate(0.5, hand_grad_fn=_slipped_gradients, check=False)
    report, text = self._check(slipped)
    self.assertEqual([m.column for m in report.mismatches], ['dE_dw3', 'dE_dw4'])
    for m in report.mismatches:
      self.assertEqual(m.epoch, 0)
      self.assertEqual(m.cell[-1:], '6')  # first data row, below the header in row 5
      self.assertEqual(m.bad_rows, toy.COURSE_EPOCHS)
      # openpyxl writes 16 significant digits, so the found value is within an ulp or two.
      np.testing.assert_allclose(m.found, slipped.columns[m.column][0], rtol=1e-15)
      np.testing.assert_allclose(m.expected, _course_sweep()[2].columns[m.column][0], rtol=1e-15)
      self.assertIn('a_h2·(1 − a_h2)', m.formula)
    self.assertIn(f'{report.mismatches[0].header}: first wrong at', text)
    self.assertIn('expected formula', text)

  def test_wrong_learning_rate_on_one_row_is_named(self):
    lrs = np.full(toy.COURSE_EPOCHS, 0.5)
    lrs[9] = 0.8  # row 9's update uses the wrong η, so row 10's weights are wrong
    sheet = bc.run_learning_rate(lrs, check=False)
    report, text = self._check(sheet)
    self.assertEqual([m.column for m in report.mismatches], list(toy.WEIGHT_NAMES))
    self.assertEqual({(m.epoch, m.bad_rows) for m in report.mismatches}, {(10, 1)})
    self.assertIn('w ← w − η·∂E_total/∂w', text)

  def test_unrecognisable_headers_list_what_was_looked_for(self):
    path = os.path.join(self.create_tempdir().full_path, 'other.xlsx')
    wb = openpyxl.Workbook()
    wb.active.append(['weight one', 'weight two', 'loss'])
    wb.active.append([0.1, 0.2, 0.3])
    wb.save(path)
    (report,) = bc.check_workbook(path)
    self.assertIn('no recognisable headers', report.problem)
    text = bc.format_report(path, [report])
    for looked_for in ('w1..w8', 'a_h1', 'E_total', '∂E/∂w1', 'dE/dw1', '∂E_total/∂w1', 'dE_dw1'):
      self.assertIn(looked_for, text)
    self.assertFalse(bc.workbook_agrees([report]))

  def test_partial_headers_say_which_weights_are_missing(self):
    path = os.path.join(self.create_tempdir().full_path, 'partial.xlsx')
    wb = openpyxl.Workbook()
    wb.active.append(['w1', 'w2', 'h1', 'weight 3'])
    wb.active.append([0.1, 0.2, 0.3, 0.4])
    wb.save(path)
    (report,) = bc.check_workbook(path)
    self.assertIn("found 'w1' (A1), 'w2' (B1), 'h1' (C1)", report.problem)
    self.assertIn('no header row with w3, w4, w5, w6, w7, w8', report.problem)

  def test_own_workbook_without_cached_values_says_so(self):
    path = os.path.join(self.create_tempdir().full_path, 'ours.xlsx')
    bc.build_workbook([0.5], epochs=3).save(path)
    (report,) = bc.check_workbook(path)
    self.assertEqual(report.problem, bc.NO_CACHED_VALUES)


class LibreOfficeTest(absltest.TestCase):
  """The workbook recomputed by a real spreadsheet engine equals JAX, cell by cell."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.recomputed = None
    if bc.find_soffice() is None:
      return
    src, out = tempfile.mkdtemp(), tempfile.mkdtemp()
    lrs = toy.COURSE_LEARNING_RATES
    bc.build_workbook(lrs).save(os.path.join(src, 'own.xlsx'))

    # Edited as a person would: η of sheet lr=0.5 set to 0.3, w1 at epoch 0 of sheet lr=2.
    wb = bc.build_workbook(lrs)
    wb['lr=0.5']['B6'] = 0.3
    wb['lr=2'][f'B{bc.SHEET_FIRST_ROW}'] = 0.35
    wb.save(os.path.join(src, 'edited.xlsx'))

    # Planted formula slips: a_h1 for a_h2 in ∂E/∂w3 and ∂E/∂w4 on every row; and a literal
    # 0.8 for η in the weight formulas of one row (epoch 10).
    letters = bc.SHEET_LETTERS
    wb = bc.build_workbook([0.5])
    ws = wb.active
    for r in range(bc.SHEET_FIRST_ROW, bc.SHEET_FIRST_ROW + toy.COURSE_EPOCHS):
      for c in ('dE_dw3', 'dE_dw4'):
        cell = ws[f'{letters[c]}{r}']
        cell.value = cell.value.replace(f'{letters["a_h2"]}{r}', f'{letters["a_h1"]}{r}')
    wb.save(os.path.join(src, 'slip_w3w4.xlsx'))
    wb = bc.build_workbook([0.5])
    ws = wb.active
    for w in toy.WEIGHT_NAMES:
      cell = ws[f'{letters[w]}{bc.SHEET_FIRST_ROW + 10}']
      cell.value = cell.value.replace('$B$6', '0.8')
    wb.save(os.path.join(src, 'slip_lr.xlsx'))

    names = ('own', 'edited', 'slip_w3w4', 'slip_lr')
    paths = bc.recalculate_with_libreoffice([os.path.join(src, f'{n}.xlsx') for n in names], out)
    cls.recomputed = dict(zip(names, paths, strict=True))

  def setUp(self):
    super().setUp()
    _require_soffice(self)

  def test_every_recomputed_cell_equals_jax(self):
    for t in _course_sweep():
      name = bc.sheet_name(t.learning_rate)
      _assert_sheet_matches(_sheet_values(self.recomputed['own'], name), t, name)

  def test_edited_workbook_recomputes_like_jax(self):
    eta_edited = bc.run_learning_rate(0.3)
    _assert_sheet_matches(_sheet_values(self.recomputed['edited'], 'lr=0.5'), eta_edited, 'η=0.3')
    weights = (0.35, *tuple(toy.COURSE_WEIGHTS.values())[1:])
    w1_edited = bc.run_learning_rate(2.0, weights=weights)
    _assert_sheet_matches(_sheet_values(self.recomputed['edited'], 'lr=2'), w1_edited, 'w1=0.35')
    # The untouched sheets still match the course run.
    t = _course_sweep()[0]
    _assert_sheet_matches(_sheet_values(self.recomputed['edited'], 'lr=0.1'), t, 'lr=0.1')

  def test_check_workbook_on_own_recomputed_workbook(self):
    reports = bc.check_workbook(self.recomputed['own'])
    self.assertTrue(bc.workbook_agrees(reports), bc.format_report('own', reports))
    self.assertLen(reports, len(toy.COURSE_LEARNING_RATES))
    self.assertIn(f'all {toy.COURSE_EPOCHS} rows agree', bc.format_report('own', reports))

  def test_check_workbook_names_the_planted_formula_slips(self):
    (w3w4,) = bc.check_workbook(self.recomputed['slip_w3w4'])
    self.assertEqual([(m.column, m.epoch) for m in w3w4.mismatches], [('dE_dw3', 0), ('dE_dw4', 0)])
    self.assertEqual(w3w4.mismatches[0].cell, f'{bc.SHEET_LETTERS["dE_dw3"]}{bc.SHEET_FIRST_ROW}')
    (lr,) = bc.check_workbook(self.recomputed['slip_lr'])
    self.assertEqual([m.column for m in lr.mismatches], list(toy.WEIGHT_NAMES))
    self.assertEqual({(m.epoch, m.bad_rows) for m in lr.mismatches}, {(10, 1)})


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

  def test_check_workbook_command(self):
    path = os.path.join(self.create_tempdir().full_path, 'student.xlsx')
    _value_workbook(path, bc.run_learning_rate(0.5, hand_grad_fn=_slipped_gradients, check=False))
    proc = self._run(f'--check_workbook={path}')
    self.assertEqual(proc.returncode, 1)
    self.assertIn('∂E/∂w3: first wrong at', proc.stdout)
    self.assertNotIn('Traceback', proc.stderr)


if __name__ == '__main__':
  absltest.main()
