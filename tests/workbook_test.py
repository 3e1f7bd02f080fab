"""Tests for workbook.py: the built sheet, its LibreOffice recompute, checking a hand-made sheet."""

import os
import subprocess
import sys
import tempfile
import unittest
from unittest import mock

import numpy as np
import openpyxl
from absl.testing import absltest, parameterized
from openpyxl.utils import get_column_letter

import backprop_check as bc
import workbook
from nets import toy
from tests.backprop_check_test import course_sweep, slipped_gradients

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAST_EPOCH = toy.COURSE_EPOCHS - 1
# LibreOffice stores 15 significant digits in xlsx; everything else is float64 arithmetic.
SPREADSHEET_RTOL, SPREADSHEET_ATOL = 1e-12, 1e-15
VALUE_FIRST_ROW = 6  # First data row of `value_workbook`'s sheet, below its header in row 5.


def require_soffice(test: absltest.TestCase) -> None:
  """Skips `test` without LibreOffice, except under CI=true, where its absence fails."""
  if workbook.find_soffice() is not None:
    return
  if os.environ.get('CI') == 'true':
    test.fail(f'LibreOffice (soffice) is required in CI: {workbook.LIBREOFFICE_INSTALL}')
  test.skipTest(
    f'LibreOffice (soffice) is not installed; it is the Debian/Ubuntu package '
    f'{workbook.LIBREOFFICE_PACKAGE}: {workbook.LIBREOFFICE_INSTALL}'
  )


def _sheet_values(path: str, sheet: str) -> dict[str, np.ndarray]:
  """The data rows of one sheet of a recomputed workbook, by column name."""
  ws = openpyxl.load_workbook(path, data_only=True)[sheet]
  n = toy.COURSE_EPOCHS
  out = {}
  for c, letter in workbook.SHEET_LETTERS.items():
    cells = ws[f'{letter}{workbook.SHEET_FIRST_ROW}:{letter}{workbook.SHEET_FIRST_ROW + n - 1}']
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


def value_cell(column: str, epoch: int) -> str:
  """Where `value_workbook` (default headers) puts a column's value of one epoch, e.g. 'C16'."""
  return f'{get_column_letter(workbook.SHEET_COLUMNS.index(column))}{VALUE_FIRST_ROW + epoch}'


def value_workbook(
  path: str,
  trajectory: bc.Trajectory,
  headers: dict[str, str] | None = None,
  cells: dict[str, object] | None = None,
):
  """A workbook of plain values, as a student's sheet looks to openpyxl once saved by Excel.

  Uses other header spellings than ours (∂E_total/∂w1, dE/dw2, dE_dw3, ...) and a 'learning
  rate' label, to exercise the header matching. `cells` then overwrites single cells (by
  coordinate), e.g. with an error value such as '#DIV/0!', as a spreadsheet app saves it.
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
  for coordinate, value in (cells or {}).items():
    ws[coordinate] = value
  wb.save(path)


class BuildWorkbookTest(absltest.TestCase):
  def test_workbook_layout_and_live_formulas(self):
    path = os.path.join(self.create_tempdir().full_path, 'course.xlsx')
    workbook.build_workbook(toy.COURSE_LEARNING_RATES).save(path)
    wb = openpyxl.load_workbook(path)
    self.assertEqual(wb.sheetnames, [f'lr={lr:g}' for lr in toy.COURSE_LEARNING_RATES])
    ws = wb['lr=0.5']
    self.assertEqual(ws['A6'].value, 'η')
    self.assertEqual(ws['B6'].value, 0.5)
    header = [c.value for c in ws[workbook.SHEET_HEADER_ROW]][: len(workbook.SHEET_COLUMNS)]
    self.assertEqual(header[:3], ['epoch', 'w1', 'w2'])
    self.assertEqual(header[-1], '∂E/∂w8')
    first, last = workbook.SHEET_FIRST_ROW, workbook.SHEET_FIRST_ROW + LAST_EPOCH
    self.assertEqual(ws[f'B{first}'].value, 0.15)  # epoch-0 weights are the editable inputs
    self.assertEqual(ws[f'B{first + 1}'].value, f'=B{first}-$B$6*U{first}')
    for c in workbook.SHEET_COLUMNS[9:]:  # every intermediate and gradient is a formula, every row
      for r in (first, last):
        self.assertTrue(str(ws[f'{workbook.SHEET_LETTERS[c]}{r}'].value).startswith('='), (c, r))
    self.assertIsNone(ws[f'A{last + 1}'].value)
    self.assertLen(ws._charts, 1)  # E_total chart; openpyxl has no public accessor

  def test_more_rows_than_a_sheet_holds_are_refused(self):
    fits = workbook.MAX_SHEET_ROWS - workbook.SHEET_FIRST_ROW + 1
    with self.assertRaisesRegex(ValueError, 'do not fit in a sheet of 1,048,576 rows'):
      workbook.build_workbook([0.5], epochs=fits + 1)


class RequireSofficeTest(absltest.TestCase):
  """The LibreOffice tests' guard: a skip that says how to install it; a failure in CI."""

  def test_skips_outside_ci_naming_the_package_and_the_command(self):
    env = {k: v for k, v in os.environ.items() if k != 'CI'}
    with mock.patch.object(workbook, 'find_soffice', return_value=None):
      with mock.patch.dict(os.environ, env, clear=True):
        with self.assertRaises(unittest.SkipTest) as caught:
          require_soffice(self)
    reason = str(caught.exception)
    self.assertIn('libreoffice-calc-nogui', reason)
    self.assertIn('sudo apt-get install -y --no-install-recommends libreoffice-calc-nogui', reason)

  def test_fails_under_ci(self):
    with mock.patch.object(workbook, 'find_soffice', return_value=None):
      with mock.patch.dict(os.environ, {'CI': 'true'}):
        with self.assertRaisesRegex(AssertionError, 'required in CI'):
          require_soffice(self)


class CheckWorkbookTest(parameterized.TestCase):
  """check_workbook on value-only workbooks (what openpyxl sees in a sheet saved by Excel)."""

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
    self.assertEqual(workbook.canonical_name(header), name)

  def _check(self, trajectory, cells=None):
    path = os.path.join(self.create_tempdir().full_path, 'student.xlsx')
    value_workbook(path, trajectory, cells=cells)
    (report,) = workbook.check_workbook(path)
    return report, workbook.format_report(path, [report])

  def test_right_sheet_agrees(self):
    report, text = self._check(course_sweep()[2])
    self.assertEqual(report.mismatches, ())
    self.assertIsNone(report.problem)
    self.assertIn(f'all {toy.COURSE_EPOCHS} rows agree', text)

  def test_w3_w4_slip_is_named(self):
    # A self-consistent wrong sheet: the slipped gradients also drive its weight updates.
    slipped = bc.run_learning_rate(0.5, hand_grad_fn=slipped_gradients, check=False)
    report, text = self._check(slipped)
    self.assertEqual([m.column for m in report.mismatches], ['dE_dw3', 'dE_dw4'])
    for m in report.mismatches:
      self.assertEqual(m.epoch, 0)
      self.assertEqual(m.cell[-1:], '6')  # first data row, below the header in row 5
      self.assertEqual(m.bad_rows, toy.COURSE_EPOCHS)
      # openpyxl writes 16 significant digits, so the found value is within an ulp or two.
      np.testing.assert_allclose(m.found, slipped.columns[m.column][0], rtol=1e-15)
      np.testing.assert_allclose(m.expected, course_sweep()[2].columns[m.column][0], rtol=1e-15)
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

  @parameterized.named_parameters(
    ('div0', '#DIV/0!', 'the error value #DIV/0!'),
    ('value', '#VALUE!', 'the error value #VALUE!'),
    ('ref', '#REF!', 'the error value #REF!'),
    ('na', '#N/A', 'the error value #N/A'),
    ('empty', None, 'an empty cell'),
    ('text', 'n/a', "'n/a', not a number"),
  )
  def test_a_weight_cell_without_a_number_disagrees_and_the_rows_below_are_checked(
    self, value, described
  ):
    # One weight cell replaced, and E1 1 % off further down: both are reported.
    t = course_sweep()[2]
    off = value_cell('E1', 30)
    cells = {value_cell('w3', 10): value, off: 1.01 * float(t.columns['E1'][30])}
    report, text = self._check(t, cells)
    self.assertEqual(report.rows, toy.COURSE_EPOCHS)
    self.assertEqual(
      [(m.column, m.cell, m.bad_rows) for m in report.mismatches],
      [('w3', value_cell('w3', 10), 1), ('E1', off, 1)],
    )
    self.assertEqual(report.mismatches[0].found, value)
    self.assertIn(f'w3: first wrong at {value_cell("w3", 10)} (row 10 of the table), found ', text)
    self.assertIn(f'found {described}, expected ', text)
    self.assertIn('1 row(s) could not be recomputed', text)
    self.assertIn(f'{value_cell("w3", 10)} holds {described}', text)
    self.assertFalse(workbook.workbook_agrees([report]))

  def test_an_error_spread_as_a_spreadsheet_spreads_it_fails_from_its_row(self):
    # `=1/0` in w1 at row 10, recomputed: every cell that depends on it holds #DIV/0!, that is
    # all of row 10 but w2..w8, h2 and a_h2, and every cell of the rows below.
    t = course_sweep()[2]
    independent = {*toy.WEIGHT_NAMES[1:], 'h2', 'a_h2'}
    cells = {
      value_cell(c, epoch): '#DIV/0!'
      for epoch in range(10, toy.COURSE_EPOCHS)
      for c in workbook.SHEET_COLUMNS[1:]
      if epoch > 10 or c not in independent
    }
    report, text = self._check(t, cells)
    self.assertEqual(report.rows, toy.COURSE_EPOCHS)
    first = {m.column: m.epoch for m in report.mismatches}
    self.assertEqual(list(first), list(workbook.SHEET_COLUMNS[1:]))
    self.assertEqual(first, {c: 11 if c in independent else 10 for c in first})
    self.assertIn(f'w1: first wrong at {value_cell("w1", 10)}', text)
    self.assertNotIn('rows agree', text)

  def test_an_input_label_without_a_number_is_named(self):
    path = os.path.join(self.create_tempdir().full_path, 'student.xlsx')
    value_workbook(path, course_sweep()[2], cells={'B1': '#REF!'})
    (report,) = workbook.check_workbook(path)
    self.assertIn('cannot find i1', report.problem)
    self.assertIn('B1 holds the error value #REF!', report.problem)
    self.assertFalse(workbook.workbook_agrees([report]))

  def test_empty_workbook_fails_and_says_why(self):
    path = os.path.join(self.create_tempdir().full_path, 'empty.xlsx')
    openpyxl.Workbook().save(path)
    reports = workbook.check_workbook(path)
    self.assertEqual(reports, [])
    self.assertFalse(workbook.workbook_agrees(reports))
    self.assertIn(workbook.EMPTY_WORKBOOK, workbook.format_report(path, reports))

  def test_header_without_data_rows_says_so(self):
    path = os.path.join(self.create_tempdir().full_path, 'header_only.xlsx')
    wb = openpyxl.Workbook()
    wb.active.append(list(toy.WEIGHT_NAMES))
    wb.save(path)
    (report,) = workbook.check_workbook(path)
    self.assertEqual(report.problem, 'no data rows below the header row 1')

  def test_unrecognisable_headers_list_what_was_looked_for(self):
    path = os.path.join(self.create_tempdir().full_path, 'other.xlsx')
    wb = openpyxl.Workbook()
    wb.active.append(['weight one', 'weight two', 'loss'])
    wb.active.append([0.1, 0.2, 0.3])
    wb.save(path)
    (report,) = workbook.check_workbook(path)
    self.assertIn('no recognisable headers', report.problem)
    text = workbook.format_report(path, [report])
    for looked_for in ('w1..w8', 'a_h1', 'E_total', '∂E/∂w1', 'dE/dw1', '∂E_total/∂w1', 'dE_dw1'):
      self.assertIn(looked_for, text)
    self.assertFalse(workbook.workbook_agrees([report]))

  def test_partial_headers_say_which_weights_are_missing(self):
    path = os.path.join(self.create_tempdir().full_path, 'partial.xlsx')
    wb = openpyxl.Workbook()
    wb.active.append(['w1', 'w2', 'h1', 'weight 3'])
    wb.active.append([0.1, 0.2, 0.3, 0.4])
    wb.save(path)
    (report,) = workbook.check_workbook(path)
    self.assertIn("found 'w1' (A1), 'w2' (B1), 'h1' (C1)", report.problem)
    self.assertIn('no header row with w3, w4, w5, w6, w7, w8', report.problem)

  def test_own_workbook_without_cached_values_says_so(self):
    path = os.path.join(self.create_tempdir().full_path, 'ours.xlsx')
    workbook.build_workbook([0.5], epochs=3).save(path)
    (report,) = workbook.check_workbook(path)
    self.assertEqual(report.problem, workbook.NO_CACHED_VALUES)


class LibreOfficeTest(absltest.TestCase):
  """The workbook recomputed by a real spreadsheet engine equals JAX, cell by cell."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.recomputed = None
    if workbook.find_soffice() is None:
      return
    src, out = tempfile.mkdtemp(), tempfile.mkdtemp()
    lrs = toy.COURSE_LEARNING_RATES
    workbook.build_workbook(lrs).save(os.path.join(src, 'own.xlsx'))

    # Edited as a person would: η of sheet lr=0.5 set to 0.3, w1 at epoch 0 of sheet lr=2.
    wb = workbook.build_workbook(lrs)
    wb['lr=0.5']['B6'] = 0.3
    wb['lr=2'][f'B{workbook.SHEET_FIRST_ROW}'] = 0.35
    wb.save(os.path.join(src, 'edited.xlsx'))

    # Planted formula slips: a_h1 for a_h2 in ∂E/∂w3 and ∂E/∂w4 on every row; and a literal
    # 0.8 for η in the weight formulas of one row (epoch 10).
    letters = workbook.SHEET_LETTERS
    wb = workbook.build_workbook([0.5])
    ws = wb.active
    for r in range(workbook.SHEET_FIRST_ROW, workbook.SHEET_FIRST_ROW + toy.COURSE_EPOCHS):
      for c in ('dE_dw3', 'dE_dw4'):
        cell = ws[f'{letters[c]}{r}']
        cell.value = cell.value.replace(f'{letters["a_h2"]}{r}', f'{letters["a_h1"]}{r}')
    wb.save(os.path.join(src, 'slip_w3w4.xlsx'))
    wb = workbook.build_workbook([0.5])
    ws = wb.active
    for w in toy.WEIGHT_NAMES:
      cell = ws[f'{letters[w]}{workbook.SHEET_FIRST_ROW + 10}']
      cell.value = cell.value.replace('$B$6', '0.8')
    wb.save(os.path.join(src, 'slip_lr.xlsx'))
    # A division by zero typed into the w1 cell of epoch 10.
    wb = workbook.build_workbook([0.5])
    wb.active[f'{letters["w1"]}{workbook.SHEET_FIRST_ROW + 10}'] = '=1/0'
    wb.save(os.path.join(src, 'div0.xlsx'))

    names = ('own', 'edited', 'slip_w3w4', 'slip_lr', 'div0')
    paths = workbook.recalculate_with_libreoffice(
      [os.path.join(src, f'{n}.xlsx') for n in names], out
    )
    cls.recomputed = dict(zip(names, paths, strict=True))

  def setUp(self):
    super().setUp()
    require_soffice(self)

  def test_every_recomputed_cell_equals_jax(self):
    for t in course_sweep():
      name = workbook.sheet_name(t.learning_rate)
      _assert_sheet_matches(_sheet_values(self.recomputed['own'], name), t, name)

  def test_edited_workbook_recomputes_like_jax(self):
    eta_edited = bc.run_learning_rate(0.3)
    _assert_sheet_matches(_sheet_values(self.recomputed['edited'], 'lr=0.5'), eta_edited, 'η=0.3')
    weights = (0.35, *tuple(toy.COURSE_WEIGHTS.values())[1:])
    w1_edited = bc.run_learning_rate(2.0, weights=weights)
    _assert_sheet_matches(_sheet_values(self.recomputed['edited'], 'lr=2'), w1_edited, 'w1=0.35')
    # The untouched sheets still match the course run.
    t = course_sweep()[0]
    _assert_sheet_matches(_sheet_values(self.recomputed['edited'], 'lr=0.1'), t, 'lr=0.1')

  def test_check_workbook_on_own_recomputed_workbook(self):
    reports = workbook.check_workbook(self.recomputed['own'])
    self.assertTrue(workbook.workbook_agrees(reports), workbook.format_report('own', reports))
    self.assertLen(reports, len(toy.COURSE_LEARNING_RATES))
    self.assertIn(f'all {toy.COURSE_EPOCHS} rows agree', workbook.format_report('own', reports))

  def test_check_workbook_names_the_planted_formula_slips(self):
    (w3w4,) = workbook.check_workbook(self.recomputed['slip_w3w4'])
    self.assertEqual([(m.column, m.epoch) for m in w3w4.mismatches], [('dE_dw3', 0), ('dE_dw4', 0)])
    self.assertEqual(
      w3w4.mismatches[0].cell, f'{workbook.SHEET_LETTERS["dE_dw3"]}{workbook.SHEET_FIRST_ROW}'
    )
    (lr,) = workbook.check_workbook(self.recomputed['slip_lr'])
    self.assertEqual([m.column for m in lr.mismatches], list(toy.WEIGHT_NAMES))
    self.assertEqual({(m.epoch, m.bad_rows) for m in lr.mismatches}, {(10, 1)})

  def test_check_workbook_names_a_division_by_zero(self):
    (report,) = workbook.check_workbook(self.recomputed['div0'])
    self.assertEqual(report.rows, toy.COURSE_EPOCHS)
    w1 = report.mismatches[0]
    self.assertEqual((w1.column, w1.epoch, w1.found), ('w1', 10, '#DIV/0!'))
    self.assertEqual(w1.cell, f'{workbook.SHEET_LETTERS["w1"]}{workbook.SHEET_FIRST_ROW + 10}')
    self.assertFalse(workbook.workbook_agrees([report]))


class CheckWorkbookCommandTest(absltest.TestCase):
  """`backprop_check.py --check_workbook`: the report on stdout, exit status 0 only if right."""

  def _run(self, path):
    return subprocess.run(
      [sys.executable, 'backprop_check.py', f'--check_workbook={path}'],
      cwd=REPO,
      capture_output=True,
      text=True,
    )

  def test_check_workbook_command(self):
    path = os.path.join(self.create_tempdir().full_path, 'student.xlsx')
    value_workbook(path, bc.run_learning_rate(0.5, hand_grad_fn=slipped_gradients, check=False))
    proc = self._run(path)
    self.assertEqual(proc.returncode, 1)
    self.assertIn('∂E/∂w3: first wrong at', proc.stdout)
    self.assertNotIn('Traceback', proc.stderr)

  def test_error_value_in_a_weight_cell_fails(self):
    path = os.path.join(self.create_tempdir().full_path, 'student.xlsx')
    value_workbook(path, course_sweep()[2], cells={value_cell('w1', 10): '#DIV/0!'})
    proc = self._run(path)
    self.assertEqual(proc.returncode, 1, proc.stdout)
    self.assertIn(f'w1: first wrong at {value_cell("w1", 10)}', proc.stdout)
    self.assertIn('found the error value #DIV/0!', proc.stdout)
    self.assertNotIn('Traceback', proc.stderr)

  def test_empty_workbook_fails(self):
    path = os.path.join(self.create_tempdir().full_path, 'empty.xlsx')
    openpyxl.Workbook().save(path)
    proc = self._run(path)
    self.assertEqual(proc.returncode, 2, proc.stdout)  # Nothing checked: not fully checked.
    self.assertIn(workbook.EMPTY_WORKBOOK, proc.stdout)


if __name__ == '__main__':
  absltest.main()
