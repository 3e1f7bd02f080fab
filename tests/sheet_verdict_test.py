"""Tests for sheet_reader.py and sheet_verdict.py: the layouts of hand-made sheets, each built
right and wrong with openpyxl, and the verdict (text and exit status) on each.

The values are written directly (computed with nets.toy through backprop_check), as a sheet
saved by a spreadsheet app looks to openpyxl. SheetCommandTest runs the command itself."""

import contextlib
import io
import os
import subprocess
import sys

import numpy as np
import openpyxl
from absl.testing import absltest, parameterized

import backprop_check as bc
import sheet_reader as sr
import sheet_verdict as sv
from nets import toy
from tests import testutil
from tests.backprop_check_test import course_sweep, slipped_gradients

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADERS = {**{q: q for q in sr.QUANTITIES}, **{f'dE_d{w}': f'∂E/∂{w}' for w in toy.WEIGHT_NAMES}}
INPUTS = dict(zip(('i1', 'i2', 't1', 't2'), (*toy.COURSE_INPUTS, *toy.COURSE_TARGETS), strict=True))


def course(lr: float = 0.5) -> bc.Trajectory:
  return course_sweep()[toy.COURSE_LEARNING_RATES.index(lr)]


def slipped(lr: float = 0.5) -> bc.Trajectory:
  """A self-consistent wrong sheet: a_h1·(1 − a_h1) for a_h2·(1 − a_h2) in ∂E/∂w3, ∂E/∂w4."""
  return bc.run_learning_rate(lr, hand_grad_fn=slipped_gradients, check=False)


def write_table(ws, t: bc.Trajectory, row: int, col: int = 1, headers=None, value=float) -> None:
  """t's rows as a table with its header at (row, col); `headers`: name -> header text (inputs
  i1..t2 as columns too), `value`: what each number is stored as (e.g. rounded)."""
  for j, (name, text) in enumerate((headers or HEADERS).items()):
    ws.cell(row, col + j, text)
    for e in range(t.epochs):
      v = INPUTS[name] if name in INPUTS else t.columns[name][e]
      ws.cell(row + 1 + e, col + j, value(float(v)))


def write_labels(ws, row: int, lr: float | None, lr_label: str = 'η', col: int = 1) -> None:
  """i1, i2, t1, t2 and η as labels in column `col` with the value right of each."""
  for k, (name, v) in enumerate(INPUTS.items()):
    ws.cell(row + k, col, name)
    ws.cell(row + k, col + 1, v)
  if lr is not None:
    ws.cell(row + 4, col, lr_label)
    ws.cell(row + 4, col + 1, lr)


def cell(name: str, header_row: int, epoch: int, col: int = 1, headers=None) -> str:
  letter = openpyxl.utils.get_column_letter(col + list(headers or HEADERS).index(name))
  return f'{letter}{header_row + 1 + epoch}'


def sheet(path: str, build) -> str:
  """A one-sheet workbook at `path`, filled by build(ws); returns path."""
  wb = openpyxl.Workbook()
  build(wb.active)
  wb.save(path)
  return path


def simple(t: bc.Trajectory, lr: float | None = 0.5, headers=None, value=float):
  """The plain layout: labels in rows 1-5, the table's header in row 7."""

  def build(ws):
    write_labels(ws, 1, lr)
    write_table(ws, t, 7, headers=headers, value=value)

  return build


def run_command(path: str) -> tuple[int, str]:
  """`backprop_check.py --check_workbook` in this process: (exit status, stdout)."""
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    status = bc._main_check_workbook(path)
  return status, out.getvalue()


def verdict_line(text: str) -> str:
  return text.strip().splitlines()[-1]


class VerdictTestCase(parameterized.TestCase):
  def path(self, name: str = 'sheet.xlsx') -> str:
    return os.path.join(self.create_tempdir().full_path, name)

  def check(self, build, status: int):
    """The command's verdict on a one-sheet workbook built by `build`: asserts the exit status;
    returns (reports, text)."""
    path = sheet(self.path(), build)
    got, text = run_command(path)
    self.assertEqual(got, status, text)
    return sv.check_workbook(path), text


def issue_layout(t):
  """Gradients headed δE_tot/δw1.., η as 'learning rate:  η =' in merged cells, value right."""
  headers = HEADERS | {f'dE_d{w}': f'δE_tot/δ{w}' for w in toy.WEIGHT_NAMES}

  def build(ws):
    write_labels(ws, 1, None)
    ws['D2'] = 'learning rate:  η ='
    ws.merge_cells('D2:F2')
    ws['H2'] = t.learning_rate
    write_table(ws, t, 7, headers=headers)

  return build


UNRECOGNISED_GRADIENTS = HEADERS | {f'dE_d{w}': f'slope {w[1]}' for w in toy.WEIGHT_NAMES}


class CoverageTest(VerdictTestCase):
  """A verdict says what it covered: exit 0 only when every quantity was checked."""

  def test_right_sheet_in_the_missed_layout_agrees(self):
    reports, text = self.check(issue_layout(course()), 0)
    self.assertEqual(reports[0].checked, len(sr.QUANTITIES))
    self.assertIn('η = 0.5 (H2)', text)
    self.assertIn('agree: all 68 rows agree, every quantity checked (27 of 27 columns)', text)

  def test_wrong_sheet_in_the_missed_layout_disagrees(self):
    reports, text = self.check(issue_layout(slipped()), 1)
    self.assertEqual([m.column for m in reports[0].mismatches], ['dE_dw3', 'dE_dw4'])
    self.assertIn(f'δE_tot/δw3: first wrong at {cell("dE_dw3", 7, 0)}', text)

  @parameterized.parameters((course,), (slipped,))
  def test_unrecognised_gradients_and_no_eta_are_not_checked_right_or_wrong(self, make):
    (report,), text = self.check(simple(make(), lr=None, headers=UNRECOGNISED_GRADIENTS), 2)
    self.assertEqual(report.outcome, sv.NOT_CHECKED)
    self.assertEqual(report.checked, 11)
    self.assertIn(
      'not fully checked: checked 11 of 27 columns; not checked: ∂E/∂w1..∂E/∂w8 (no header '
      f"matched; headers seen: 'slope 1' ({cell('dE_dw1', 7, -1)}), ",
      text,
    )
    self.assertIn('the weight updates w1..w8 (no η found)', text)
    self.assertNotIn('agree', verdict_line(text))
    self.assertTrue(verdict_line(text).startswith('verdict: not fully checked (exit 2)'))

  def test_a_missing_column_is_not_checked(self):
    headers = {k: v for k, v in HEADERS.items() if k != 'E2'}
    (report,), text = self.check(simple(course(), headers=headers), 2)
    self.assertIn('checked 26 of 27 columns; not checked: E2 (no header matched', text)


def legend_layout(t):
  def build(ws):
    for j, w in enumerate(toy.WEIGHT_NAMES):
      ws.cell(1, 3 + j, w)
      ws.cell(2, 3 + j, toy.COURSE_WEIGHTS[w])
    write_labels(ws, 4, 0.5)
    write_table(ws, t, 30)

  return build


class LegendTest(VerdictTestCase):
  """A one-row w1..w8 legend above the table is not the table."""

  def test_right_sheet_under_a_legend_agrees(self):
    (report,), text = self.check(legend_layout(course()), 0)
    self.assertEqual((report.header_row, report.rows), (30, toy.COURSE_EPOCHS))
    self.assertIn('headers naming w1..w8 with too few rows under them', text)
    self.assertIn('row 1 (1 row(s) under it)', text)

  def test_wrong_sheet_under_a_legend_disagrees_in_the_real_table(self):
    (report,), text = self.check(legend_layout(slipped()), 1)
    self.assertEqual(report.mismatches[0].cell, cell('dE_dw3', 30, 0))
    self.assertNotIn('all 1 rows agree', text)

  def test_a_legend_alone_is_not_a_table(self):
    def build(ws):
      ws.append(list(toy.WEIGHT_NAMES))
      ws.append(list(toy.COURSE_WEIGHTS.values()))

    (report,), text = self.check(build, 2)
    self.assertIn('only 1 row of numbers below the header row 1: one row is a legend', text)


def stacked(first, second):
  def build(ws):
    write_labels(ws, 1, first.learning_rate)
    write_table(ws, first, 7)
    ws.cell(80, 1, 'η')
    ws.cell(80, 2, second.learning_rate)
    write_table(ws, second, 82)

  return build


class SeveralTablesTest(VerdictTestCase):
  """One table per η on one sheet, stacked or side by side: each is checked and reported."""

  def test_every_stacked_table_is_checked(self):
    reports, text = self.check(stacked(course(0.5), course(2.0)), 0)
    self.assertEqual(
      [(r.header_row, r.lr) for r in reports], [(7, 'η = 0.5 (B5)'), (82, 'η = 2 (B80)')]
    )
    self.assertIn("sheet 'Sheet', table at row 82 (η = 2 (B80), 68 rows): agree", text)

  def test_the_wrong_second_table_is_named(self):
    reports, text = self.check(stacked(course(0.5), slipped(2.0)), 1)
    self.assertEqual([r.outcome for r in reports], [sv.AGREE, sv.DISAGREE])
    self.assertIn('table at row 82 (η = 2 (B80), 68 rows): disagree', text)
    self.assertIn(f'first wrong at {cell("dE_dw3", 82, 0)}', text)

  def test_tables_side_by_side(self):
    def build(ws):
      write_labels(ws, 1, 0.5)
      ws['AF5'], ws['AG5'] = 'η', 2.0
      write_table(ws, course(0.5), 7)
      write_table(ws, slipped(2.0), 7, col=len(HEADERS) + 5)

    reports, text = self.check(build, 1)
    self.assertEqual(
      [(r.lr, r.outcome) for r in reports],
      [('η = 0.5 (B5)', sv.AGREE), ('η = 2 (AG5)', sv.DISAGREE)],
    )


def with_summary(t):
  def build(ws):
    simple(t)(ws)
    last = 7 + t.epochs
    ws.cell(last + 1, 1, 'η')
    ws.cell(last + 1, 2, 'final E_total')
    for k, lr in enumerate(toy.COURSE_LEARNING_RATES):
      ws.cell(last + 2 + k, 1, lr)
      ws.cell(last + 2 + k, 2, float(course(lr).columns['E_total'][-1]))

  return build


class BlockBelowTest(VerdictTestCase):
  """A summary block right under the last row ends the table."""

  def test_right_sheet_with_a_summary_below_agrees(self):
    (report,), _ = self.check(with_summary(course()), 0)
    self.assertEqual(report.rows, toy.COURSE_EPOCHS)

  def test_wrong_sheet_with_a_summary_below_names_only_its_error(self):
    (report,), _ = self.check(with_summary(slipped()), 1)
    self.assertEqual(report.rows, toy.COURSE_EPOCHS)
    self.assertEqual([m.column for m in report.mismatches], ['dE_dw3', 'dE_dw4'])


def names_layout(t, lr_label='η'):
  headers = HEADERS | {
    'i1': 'x1',
    'i2': 'x2',
    't1': 't1 ( output of out_o1)',
    't2': 'y2',
    'a_h1': 'act_h1',
    'a_h2': 'σ(h2)',
    'a_o1': 'sigmoid(o1)',
    'a_o2': 'out_o2',
    'E_total': 'Etotal',
    'dE_dw1': 'δE_tot/δw1',
    'dE_dw2': 'dEtotal/dw2',
    'dE_dw3': 'dE_total/dw3',
    'dE_dw4': 'dEt/dw4',
    'dE_dw5': 'grad w5',
  }

  def build(ws):
    ws['A1'], ws['B1'] = lr_label, t.learning_rate
    write_table(ws, t, 3, headers=headers)

  return build, headers


ETA_LABELS = {
  'eta': 'eta',
  'lr': 'lr',
  'learning_rate': 'Learning Rate',
  'georgian': 'ⴄ',
  'georgian_capital': 'Ⴄ',
  'armenian': 'ղ',
  'pamphylian': 'ͷ',
  'pamphylian_capital': 'Ͷ',
}


class NamesTest(VerdictTestCase):
  """The names people use for columns, inputs and η."""

  @parameterized.parameters(
    ('x1', 'i1'),
    ('y2', 't2'),
    ('t1 ( output of out_o1)', 't1'),
    ('act_h1', 'a_h1'),
    ('out_h1', 'a_h1'),
    ('σ(h1)', 'a_h1'),
    ('sigmoid(h2)', 'a_h2'),
    ('net_o1', 'o1'),
    ('δE_tot/δw1', 'dE_dw1'),
    ('∂Etotal/∂w2', 'dE_dw2'),
    ('dE_total/dw3', 'dE_dw3'),
    ('dEt/dw4', 'dE_dw4'),
    ('grad w5', 'dE_dw5'),
    ('𝜕E/𝜕w6', 'dE_dw6'),
    ('ΔW7', None),
    ('Etotal', 'E_total'),
    ('learningRate=', 'lr'),
    ('learning rate:  η =', 'lr'),
    ('ⴄ', 'lr'),
    ('Ͷ', 'lr'),
    ('epoch', None),
  )
  def test_header_names(self, header, name):
    self.assertEqual(sr.canonical_name(header), name)

  @parameterized.named_parameters(*ETA_LABELS.items())
  def test_right_sheet_agrees_whatever_eta_is_called(self, label):
    (report,), _ = self.check(names_layout(course(), label)[0], 0)
    self.assertEqual(report.lr, 'η = 0.5 (B1)')

  @parameterized.named_parameters(*ETA_LABELS.items())
  def test_wrong_sheet_disagrees_whatever_eta_is_called(self, label):
    build, headers = names_layout(slipped(), label)
    (report,), text = self.check(build, 1)
    self.assertIn(f'dE_total/dw3: first wrong at {cell("dE_dw3", 3, 0, headers=headers)}', text)

  @parameterized.named_parameters(
    ('equals_then_gap', ['learningRate=', None, 0.5]),
    ('equals_cell', ['η', '=', 0.5]),
    ('in_one_cell', ['η = 0.5']),
  )
  def test_eta_label_forms(self, cells):
    def build(ws):
      write_labels(ws, 1, None)
      for j, v in enumerate(cells):
        ws.cell(6, 4 + j, v)
      write_table(ws, course(), 8)

    (report,), _ = self.check(build, 0)
    self.assertIsNotNone(report.lr)

  def test_wrong_eta_value_disagrees(self):
    (report,), _ = self.check(simple(course(), lr=0.8), 1)
    self.assertEqual([m.column for m in report.mismatches], list(toy.WEIGHT_NAMES))


class RoundingTest(VerdictTestCase):
  """Values pasted with rounding agree; a systematic error of the same size does not."""

  @parameterized.named_parameters(
    ('six_digits', testutil.rounded_to(6), '6 significant digits'),
    ('eight_digits', testutil.rounded_to(8), '8 significant digits'),
    ('ten_digits', testutil.rounded_to(10), '10 significant digits'),
    ('nine_decimals', lambda v: round(v, 9), '9 decimal places'),
  )
  def test_right_sheet_pasted_with_rounding_agrees(self, value, how):
    for lr in (0.5, 2.0):
      (report,), text = self.check(simple(course(lr), lr=lr, value=value), 0)
      self.assertIn('values stored rounded (columns by their stored digits: ', text)
      self.assertRegex(text, f'{how} in [0-9]+')

  def test_constant_relative_error_within_rounding_is_a_formula_error(self):
    t = course()
    wrong = bc.Trajectory(
      t.learning_rate, t.precision, t.columns | {'E1': t.columns['E1'] * (1 + 3e-6)}, t.autodiff
    )
    (report,), text = self.check(simple(wrong, value=testutil.rounded_to(6)), 1)
    (m,) = report.mismatches
    self.assertEqual(m.column, 'E1')
    self.assertAlmostEqual(m.systematic, 3e-6, delta=1e-6)
    self.assertRegex(
      text, r'systematic: the same relative error, \+3(\.[0-9])?e-06, down the column'
    )
    self.assertIn('a formula error, not rounding', text)

  def test_rounding_is_no_licence_for_a_wrong_row(self):
    write = simple(course(), value=testutil.rounded_to(6))
    (report,), _ = self.check(lambda ws: (write(ws), ws.__setitem__(cell('h1', 7, 20), 0.0)), 1)
    self.assertEqual([(m.column, m.cell) for m in report.mismatches][0], ('h1', cell('h1', 7, 20)))


class TinyGradientTest(VerdictTestCase):
  """Gradients of ~2e-10 late in a long run are held to the column's relative standard."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.long = bc.run_learning_rate(2.0, epochs=300)

  def test_right_long_run_agrees(self):
    self.check(simple(self.long, lr=2.0), 0)

  def test_small_relative_error_on_tiny_gradients_disagrees(self):
    g = self.long.columns['dE_dw5']
    tail = np.abs(g) < 3e-10
    self.assertGreater(tail.sum(), 10)
    wrong = g * np.where(tail, 1 + 7.6e-4, 1.0)
    t = bc.Trajectory(2.0, 'float64', self.long.columns | {'dE_dw5': wrong}, self.long.autodiff)
    (report,), text = self.check(simple(t, lr=2.0), 1)
    (m,) = report.mismatches
    self.assertEqual((m.column, m.epoch, m.bad_rows), ('dE_dw5', int(np.argmax(tail)), tail.sum()))


INPUT_HEADERS = {'i1': 'i1', 'i2': 'i2', 't1': 't1', 't2': 't2'} | HEADERS


def input_typo(t2_header: str = 'i2'):
  """Inputs as columns (and η as a label), the t2 column headed `t2_header`."""

  def build(ws):
    ws['A1'], ws['B1'] = 'η', 0.5
    write_table(ws, course(), 3, headers=INPUT_HEADERS | {'t2': t2_header})

  return build


class HeaderTypoTest(VerdictTestCase):
  """Two columns with one name and none with another: the duplicate is named and suggested."""

  def test_right_sheet_with_input_columns_agrees(self):
    self.check(input_typo('t2'), 0)

  def test_input_typo_names_the_duplicate(self):
    (report,), text = self.check(input_typo(), 2)
    self.assertIn(
      "cannot find t2; 2 columns are headed 'i2' (B3, D3) and none t2: if D3 is t2, head it so",
      report.problem,
    )
    self.assertIn('cannot check: cannot find t2', text)

  def test_quantity_typo_names_the_duplicate(self):
    headers = HEADERS | {'a_h2': 'a_h1'}
    (report,), text = self.check(simple(course(), headers=headers), 2)
    a_h2 = cell('a_h2', 7, -1)
    self.assertIn(
      f"a_h2 (2 columns are headed 'a_h1' ({cell('a_h1', 7, -1)}, {a_h2}) and none a_h2: "
      f'if {a_h2} is a_h2, head it so)',
      text,
    )


class SheetCommandTest(VerdictTestCase):
  """`backprop_check.py --check_workbook` as a command: one sheet of each layout, wrong or not
  fully checked, each with its exit status and its line."""

  def test_each_layout_through_the_command(self):
    cases = {
      'coverage': (
        simple(slipped(), lr=None, headers=UNRECOGNISED_GRADIENTS),
        2,
        'not checked: ∂E/∂w1..∂E/∂w8 (no header matched',
      ),
      'legend': (legend_layout(slipped()), 1, f'first wrong at {cell("dE_dw3", 30, 0)}'),
      'several': (stacked(course(0.5), slipped(2.0)), 1, 'table at row 82'),
      'below': (with_summary(slipped()), 1, 'of 68 rows'),
      'names': (names_layout(slipped(), 'ⴄ')[0], 1, 'dE_total/dw3: first wrong'),
      'typo': (input_typo(), 2, 'if D3 is t2'),
    }
    tmp = self.create_tempdir().full_path
    procs = {
      name: subprocess.Popen(
        [sys.executable, 'backprop_check.py', f'--check_workbook={sheet(f"{tmp}/{name}.xlsx", b)}'],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
      )
      for name, (b, _, _) in cases.items()
    }
    for name, (_, status, line) in cases.items():
      with self.subTest(name):
        stdout, stderr = procs[name].communicate()
        self.assertEqual(procs[name].returncode, status, stdout + stderr)
        self.assertIn(line, stdout)
        self.assertIn(
          f'verdict: {[sv.AGREE, sv.DISAGREE, sv.NOT_CHECKED][status]} (exit {status})', stdout
        )
        self.assertNotIn('Traceback', stderr)


if __name__ == '__main__':
  absltest.main()
