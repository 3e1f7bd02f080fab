"""The course sheet as an .xlsx workbook: built with live formulas, recomputed, and checked.

  build_workbook([0.5, 2]).save('course.xlsx')  # one sheet per learning rate, every cell a formula
  recalculate_with_libreoffice(['course.xlsx'], out_dir)  # cached values from a real spreadsheet
  print(format_report(path, check_workbook(path)))  # a sheet made by hand, recomputed with JAX

backprop_check.py writes the built workbook beside its CSV and plot, and runs the check for
`--check_workbook`. The formulas are the course's, as written in nets/toy.py.
"""

import dataclasses
import math
import os
import pathlib
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import openpyxl
from openpyxl.chart import LineChart, Reference
from openpyxl.styles import Font
from openpyxl.utils import get_column_letter

from nets import toy

# (rtol, atol) for check_workbook. Spreadsheets compute in float64 and store 15-17 significant
# digits, so a right cell agrees to ~1e-14; a wrong factor (a_h1(1−a_h1) for a_h2(1−a_h2) at the
# course values) moves a value by ~2e-3 relative, far outside 1e-9.
WORKBOOK_TOLERANCES = (1e-9, 1e-12)
MAX_SHEET_ROWS = 1_048_576  # Rows in one sheet of Excel and of LibreOffice Calc.

# ---------------------------------------------------------------------------------------------
# Building the course sheet with live formulas.

# Layout of each sheet, like the course's: inputs, targets and η at the top (label in column A,
# value in column B), then one row per epoch.
SHEET_INPUT_CELLS = {'i1': '$B$2', 'i2': '$B$3', 't1': '$B$4', 't2': '$B$5', 'lr': '$B$6'}
SHEET_INPUT_LABELS = {'i1': 'i1', 'i2': 'i2', 't1': 't1', 't2': 't2', 'lr': 'η'}
SHEET_HEADER_ROW = 8
SHEET_FIRST_ROW = SHEET_HEADER_ROW + 1
SHEET_COLUMNS = ('epoch', *toy.WEIGHT_NAMES, *toy.INTERMEDIATE_NAMES, *toy.GRADIENT_NAMES)
SHEET_HEADERS = {
  **{c: c for c in SHEET_COLUMNS},
  **{f'dE_d{w}': f'∂E/∂{w}' for w in toy.WEIGHT_NAMES},
}
SHEET_LETTERS = {c: get_column_letter(i + 1) for i, c in enumerate(SHEET_COLUMNS)}

# The course's formulas (see nets/toy.py) as spreadsheet formulas over the names of a row.
SHEET_FORMULAS = {
  'h1': '{w1}*{i1}+{w2}*{i2}',
  'a_h1': '1/(1+EXP(-{h1}))',
  'h2': '{w3}*{i1}+{w4}*{i2}',
  'a_h2': '1/(1+EXP(-{h2}))',
  'o1': '{w5}*{a_h1}+{w6}*{a_h2}',
  'a_o1': '1/(1+EXP(-{o1}))',
  'o2': '{w7}*{a_h1}+{w8}*{a_h2}',
  'a_o2': '1/(1+EXP(-{o2}))',
  'E1': '0.5*({t1}-{a_o1})^2',
  'E2': '0.5*({t2}-{a_o2})^2',
  'E_total': '{E1}+{E2}',
  'dE_dw1': '(({a_o1}-{t1})*{a_o1}*(1-{a_o1})*{w5}+({a_o2}-{t2})*{a_o2}*(1-{a_o2})*{w7})'
  '*{a_h1}*(1-{a_h1})*{i1}',
  'dE_dw2': '(({a_o1}-{t1})*{a_o1}*(1-{a_o1})*{w5}+({a_o2}-{t2})*{a_o2}*(1-{a_o2})*{w7})'
  '*{a_h1}*(1-{a_h1})*{i2}',
  'dE_dw3': '(({a_o1}-{t1})*{a_o1}*(1-{a_o1})*{w6}+({a_o2}-{t2})*{a_o2}*(1-{a_o2})*{w8})'
  '*{a_h2}*(1-{a_h2})*{i1}',
  'dE_dw4': '(({a_o1}-{t1})*{a_o1}*(1-{a_o1})*{w6}+({a_o2}-{t2})*{a_o2}*(1-{a_o2})*{w8})'
  '*{a_h2}*(1-{a_h2})*{i2}',
  'dE_dw5': '({a_o1}-{t1})*{a_o1}*(1-{a_o1})*{a_h1}',
  'dE_dw6': '({a_o1}-{t1})*{a_o1}*(1-{a_o1})*{a_h2}',
  'dE_dw7': '({a_o2}-{t2})*{a_o2}*(1-{a_o2})*{a_h1}',
  'dE_dw8': '({a_o2}-{t2})*{a_o2}*(1-{a_o2})*{a_h2}',
}


def sheet_name(learning_rate: float) -> str:
  return f'lr={learning_rate:g}'


def sheet_row_formulas(row: int) -> dict[str, str]:
  """The formulas of sheet row `row` (not the first data row): weights from the row above."""
  refs = {c: f'{SHEET_LETTERS[c]}{row}' for c in SHEET_COLUMNS} | SHEET_INPUT_CELLS
  formulas = {c: '=' + f.format(**refs) for c, f in SHEET_FORMULAS.items()}
  for w in toy.WEIGHT_NAMES:
    prev_w, prev_g = f'{SHEET_LETTERS[w]}{row - 1}', f'{SHEET_LETTERS["dE_d" + w]}{row - 1}'
    formulas[w] = f'={prev_w}-{SHEET_INPUT_CELLS["lr"]}*{prev_g}'
  formulas['epoch'] = f'={SHEET_LETTERS["epoch"]}{row - 1}+1'
  return formulas


def build_workbook(
  learning_rates: Sequence[float],
  epochs: int = toy.COURSE_EPOCHS,
  weights: Sequence[float] = tuple(toy.COURSE_WEIGHTS.values()),
  inputs: Sequence[float] = toy.COURSE_INPUTS,
  targets: Sequence[float] = toy.COURSE_TARGETS,
) -> openpyxl.Workbook:
  """The course sheet, one per learning rate, every computed cell a live formula."""
  if SHEET_FIRST_ROW + epochs - 1 > MAX_SHEET_ROWS:
    raise ValueError(f'{epochs} epochs do not fit in a sheet of {MAX_SHEET_ROWS:,} rows')
  wb = openpyxl.Workbook()
  wb.remove(wb.active)
  for lr in learning_rates:
    ws = wb.create_sheet(sheet_name(lr))
    values = dict(zip(('i1', 'i2'), inputs, strict=True))
    values |= dict(zip(('t1', 't2'), targets, strict=True)) | {'lr': lr}
    _write_sheet(ws, values, weights, epochs)
    _add_loss_chart(ws, lr, epochs)
  return wb


def _write_sheet(ws, values: dict[str, float], weights: Sequence[float], epochs: int) -> None:
  """The title, the labelled inputs, the header row and `epochs` rows of formulas."""
  bold = Font(bold=True)
  ws['A1'] = 'Backpropagation, 2-2-2 sigmoid network: edit η or the epoch-0 weights to recompute'
  ws['A1'].font = bold
  for name, cell in SHEET_INPUT_CELLS.items():
    label_cell = 'A' + cell.rsplit('$', 1)[1]
    ws[label_cell] = SHEET_INPUT_LABELS[name]
    ws[label_cell].font = bold
    ws[cell.replace('$', '')] = float(values[name])
  ws['C6'] = 'learning rate'
  for c in SHEET_COLUMNS:
    cell = ws[f'{SHEET_LETTERS[c]}{SHEET_HEADER_ROW}']
    cell.value, cell.font = SHEET_HEADERS[c], bold
  first = SHEET_FIRST_ROW
  ws[f'{SHEET_LETTERS["epoch"]}{first}'] = 0
  for w, v in zip(toy.WEIGHT_NAMES, weights, strict=True):
    ws[f'{SHEET_LETTERS[w]}{first}'] = float(v)
  for row in range(first, first + epochs):
    for c, formula in sheet_row_formulas(row).items():
      if row > first or (c not in toy.WEIGHT_NAMES and c != 'epoch'):
        ws[f'{SHEET_LETTERS[c]}{row}'] = formula
  ws.freeze_panes = f'B{first}'


def _add_loss_chart(ws, learning_rate: float, epochs: int) -> None:
  """A line chart of E_total against epoch, right of the table."""
  chart = LineChart()
  chart.title = f'E_total, η = {learning_rate:g}'
  chart.x_axis.title, chart.y_axis.title = 'epoch', 'E_total'
  col = SHEET_COLUMNS.index('E_total') + 1
  last = SHEET_FIRST_ROW + epochs - 1
  chart.add_data(
    Reference(ws, min_col=col, min_row=SHEET_HEADER_ROW, max_row=last), titles_from_data=True
  )
  chart.set_categories(Reference(ws, min_col=1, min_row=SHEET_FIRST_ROW, max_row=last))
  ws.add_chart(chart, f'{get_column_letter(len(SHEET_COLUMNS) + 2)}2')


# ---------------------------------------------------------------------------------------------
# Recomputing a workbook with a real spreadsheet engine.

LIBREOFFICE_PACKAGE = 'libreoffice-calc-nogui'  # Debian/Ubuntu: Calc, headless, no GUI.
LIBREOFFICE_INSTALL = f'sudo apt-get install -y --no-install-recommends {LIBREOFFICE_PACKAGE}'

# Forces LibreOffice to recompute every formula on load: by default it trusts an xlsx file's
# cached values, which would hide a formula that no longer matches its cell.
_LIBREOFFICE_RECALC_ALWAYS = """<?xml version="1.0" encoding="UTF-8"?>
<oor:items xmlns:oor="http://openoffice.org/2001/registry"
  xmlns:xs="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
<item oor:path="/org.openoffice.Office.Calc/Formula/Load">
  <prop oor:name="OOXMLRecalcMode" oor:op="fuse"><value>0</value></prop></item>
</oor:items>
"""


def find_soffice() -> str | None:
  """Path of LibreOffice's `soffice` (or `libreoffice`), or None."""
  return shutil.which('soffice') or shutil.which('libreoffice')


def recalculate_with_libreoffice(
  paths: Sequence[str], out_dir: str, timeout_s: float = 300
) -> list[str]:
  """Opens each workbook in headless LibreOffice, recomputes it and saves it into out_dir.

  Uses a fresh temporary profile, so it works as root and beside other LibreOffice processes.
  Returns the paths of the recomputed copies (same file names, in out_dir).
  """
  soffice = find_soffice()
  if soffice is None:
    raise FileNotFoundError(f'LibreOffice (soffice) not found: {LIBREOFFICE_INSTALL}')
  for p in paths:
    if os.path.dirname(os.path.abspath(p)) == os.path.abspath(out_dir):
      raise ValueError(f'out_dir must differ from the directory of {p}: it would be overwritten')
  with tempfile.TemporaryDirectory(prefix='lo_profile_') as profile:
    os.makedirs(os.path.join(profile, 'user'))
    with open(os.path.join(profile, 'user', 'registrymodifications.xcu'), 'w') as f:
      f.write(_LIBREOFFICE_RECALC_ALWAYS)
    cmd = [
      soffice,
      f'-env:UserInstallation={pathlib.Path(profile).as_uri()}',
      '--headless',
      '--norestore',
      '--convert-to',
      'xlsx',
      '--outdir',
      out_dir,
      *paths,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
  outputs = [os.path.join(out_dir, os.path.basename(p)) for p in paths]
  missing = [p for p in outputs if not os.path.exists(p)]
  if proc.returncode != 0 or missing:
    raise RuntimeError(
      f'LibreOffice failed (exit {proc.returncode}), missing {missing}:\n{proc.stdout}{proc.stderr}'
    )
  return outputs


# ---------------------------------------------------------------------------------------------
# Checking a workbook made by hand.


def normalize_header(text) -> str:
  """'∂E_total/∂w1' -> 'detotaldw1': lower case, ∂ read as d, symbols and spaces dropped."""
  return ''.join(ch for ch in str(text).lower().replace('∂', 'd') if ch.isalnum())


_ALIASES = {
  **{w: w for w in toy.WEIGHT_NAMES},
  **{n.lower().replace('_', ''): n for n in toy.INTERMEDIATE_NAMES},
  'neth1': 'h1',
  'neth2': 'h2',
  'outh1': 'a_h1',
  'outh2': 'a_h2',
  'neto1': 'o1',
  'neto2': 'o2',
  'outo1': 'a_o1',
  'outo2': 'a_o2',
  'etot': 'E_total',
  'i1': 'i1',
  'i2': 'i2',
  't1': 't1',
  't2': 't2',
  'lr': 'lr',
  'η': 'lr',
  'eta': 'lr',
  'learningrate': 'lr',
}
_GRADIENT_HEADER = re.compile(r'^d?e(?:total|tot)?dw([1-8])$')


def canonical_name(header) -> str | None:
  """The column a header names (e.g. 'dE_dw3' for '∂E/∂w3'), or None."""
  key = normalize_header(header)
  match = _GRADIENT_HEADER.match(key)
  if match:
    return f'dE_dw{match.group(1)}'
  return _ALIASES.get(key)


HEADERS_LOOKED_FOR = (
  'w1..w8, h1, a_h1 (or out_h1), h2, a_h2, o1, a_o1, o2, a_o2, E1, E2, E_total, '
  '∂E/∂w1..∂E/∂w8 (or dE/dw1, ∂E_total/∂w1, dE_dw1), and i1, i2, t1, t2, η (or lr, eta, '
  'learning rate) as columns or as labels with the value to their right; matched ignoring '
  'case, spaces and symbols'
)
_INPUT_NAMES = ('i1', 'i2', 't1', 't2', 'lr')
_CHECKED_COLUMNS = SHEET_COLUMNS[1:]  # w1..w8, the intermediates, ∂E/∂w1..∂E/∂w8


NO_CACHED_VALUES = (
  'its formulas have no cached values (the file was written by a program, not saved by a '
  'spreadsheet app): open and save it in Excel or LibreOffice first'
)
EMPTY_WORKBOOK = 'no sheet holds any data, so there is nothing to check: an empty workbook fails'


@dataclasses.dataclass(frozen=True)
class ColumnMismatch:
  """The first disagreeing row of one column."""

  column: str  # canonical name, e.g. 'dE_dw3'
  header: str  # as written in the sheet
  cell: str  # e.g. 'X9'
  epoch: int  # data row index, 0 = first data row
  found: object  # the cell's value: a number, an error value such as '#DIV/0!', None if empty
  expected: float  # NaN where the row's own inputs hold no numbers to compute it from
  formula: str
  bad_rows: int


@dataclasses.dataclass(frozen=True)
class SheetReport:
  sheet: str
  rows: int = 0
  mismatches: tuple[ColumnMismatch, ...] = ()
  problem: str | None = None  # why the sheet could not be checked
  notes: tuple[str, ...] = ()


def _is_number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_empty(v) -> bool:
  return v is None or (isinstance(v, str) and not v.strip())


def describe_value(v) -> str:
  """A cell's value in words: the number, 'an empty cell', 'the error value #DIV/0!', ..."""
  if _is_number(v):
    return repr(v)
  if _is_empty(v):
    return 'an empty cell'
  if isinstance(v, str) and v.startswith('#'):
    return f'the error value {v}'
  return f'{v!r}, not a number'


@dataclasses.dataclass(frozen=True)
class _Table:
  """The table found in one sheet: its header cells by canonical name and its data rows."""

  ws: object  # openpyxl worksheet
  header_row: int
  columns: dict  # canonical name -> header cell
  rows: tuple[int, ...]  # sheet row numbers of the data rows

  def values(self, name: str) -> list:
    return [self.ws.cell(r, self.columns[name].column).value for r in self.rows]

  def numbers(self, name: str) -> np.ndarray:
    """The column in float64, NaN where a cell holds no number."""
    return np.array([v if _is_number(v) else np.nan for v in self.values(name)], np.float64)

  def cell(self, name: str, index: int) -> str:
    return f'{self.columns[name].column_letter}{self.rows[index]}'


def _find_header(ws) -> tuple[int, dict] | str:
  """(row, cells by canonical name) of the first row naming all eight weights, or why none."""
  best = {}
  for row in ws.iter_rows():
    found = {}
    for cell in row:
      name = canonical_name(cell.value) if isinstance(cell.value, str) else None
      if name and name not in found:
        found[name] = cell
    if all(w in found for w in toy.WEIGHT_NAMES):
      return row[0].row, found
    if len(found) > len(best):
      best = found
  if best:  # Some headers, but not the eight weights every recomputation starts from.
    cells = ', '.join(f'{c.value!r} ({c.coordinate})' for c in best.values())
    missing = ', '.join(w for w in toy.WEIGHT_NAMES if w not in best)
    return f'found {cells} but no header row with {missing}. Looked for {HEADERS_LOOKED_FOR}'
  return f'no recognisable headers. Looked for {HEADERS_LOOKED_FOR}'


def _lacks_cached_values(ws, ws_formulas, header_row: int, columns: dict) -> bool:
  """Whether the first rows hold formulas that were never computed.

  A file written by a program (openpyxl, like our own backprop.xlsx) holds formulas with no
  cached values: openpyxl reads those as None, which is "not computed", not "wrong".
  """
  for r in (header_row + 1, header_row + 2):
    for cell in columns.values():
      formula = ws_formulas.cell(r, cell.column).value
      if (
        isinstance(formula, str)
        and formula.startswith('=')
        and ws.cell(r, cell.column).value is None
      ):
        return True
  return False


def _data_rows(ws, header_row: int, columns: dict) -> tuple[int, ...]:
  """The rows below the header down to the first whose eight weight cells are all empty.

  A row with any weight cell filled belongs to the table, whatever the cell holds, so that an
  error value or a blank in one weight is reported rather than ending the table there.
  """
  rows, r = [], header_row + 1
  while not all(_is_empty(ws.cell(r, columns[w].column).value) for w in toy.WEIGHT_NAMES):
    rows.append(r)
    r += 1
  return tuple(rows)


def _find_label_value(ws, name: str, skip_row: int) -> tuple[float | None, str | None]:
  """(the number right of, or else below, a cell labelled `name`, None); or (None, why not)."""
  why = None
  for row in ws.iter_rows():
    for cell in row:
      if cell.row == skip_row or not isinstance(cell.value, str):
        continue
      if canonical_name(cell.value) == name:
        right, below = ws.cell(cell.row, cell.column + 1), ws.cell(cell.row + 1, cell.column)
        for neighbour in (right, below):
          if _is_number(neighbour.value):
            return neighbour.value, None
        why = why or (
          f'the label {cell.value!r} at {cell.coordinate} has no number beside it '
          f'({right.coordinate} holds {describe_value(right.value)})'
        )
  return None, why


def _inputs(table: _Table) -> tuple[dict[str, np.ndarray | None], str | None]:
  """i1, i2, t1, t2 and η per data row (NaN where a cell holds no number); or why not found."""
  per_row, why = {}, {}
  for name in _INPUT_NAMES:
    if name in table.columns:
      per_row[name] = table.numbers(name)
      continue
    value, why[name] = _find_label_value(table.ws, name, table.header_row)
    per_row[name] = None if value is None else np.full(len(table.rows), float(value))
  missing = [n for n in _INPUT_NAMES[:4] if per_row[n] is None]
  if not missing:
    return per_row, None
  reasons = ''.join(f'; {why[n]}' for n in missing if why[n])
  return per_row, f'cannot find {", ".join(missing)}{reasons}. Looked for {HEADERS_LOOKED_FOR}'


def _recompute(table: _Table, per_row: dict) -> dict[str, np.ndarray]:
  """JAX's value of every intermediate and gradient column, from each row's own weights."""
  with jax.enable_x64(True):
    params = {w: jnp.asarray(table.numbers(w), jnp.float64) for w in toy.WEIGHT_NAMES}
    inputs = jnp.asarray(np.stack([per_row['i1'], per_row['i2']], axis=1), jnp.float64)
    targets = jnp.asarray(np.stack([per_row['t1'], per_row['t2']], axis=1), jnp.float64)
    inter = jax.vmap(toy.forward)(params, inputs, targets)
    grads = jax.vmap(toy.autodiff_gradients)(params, inputs, targets)
    expected = {k: np.asarray(v) for k, v in inter.items()}
    expected |= {f'dE_d{w}': np.asarray(g) for w, g in grads.items()}
  return expected


def _expected_weights(table: _Table, lr: np.ndarray, expected: dict) -> dict[str, np.ndarray]:
  """Each row's weights from the row above: w = w_prev − η·∂E/∂w_prev.

  Uses the gradients as found in the sheet, so that a wrong gradient column is reported once,
  not again in the weights. The first row's weights are the sheet's own.
  """
  out = {}
  for w in toy.WEIGHT_NAMES:
    g = table.numbers(f'dE_d{w}') if f'dE_d{w}' in table.columns else expected[f'dE_d{w}']
    w_found = table.numbers(w)
    out[w] = np.concatenate([w_found[:1], w_found[:-1] - lr[:-1] * g[:-1]])
  return out


def _first_mismatch(
  table: _Table, name: str, expected: np.ndarray, rtol: float, atol: float
) -> ColumnMismatch | None:
  """The column's first wrong cell, or None: a cell is wrong if it holds no number, or a number
  that is not close to `expected` (where that is known, i.e. not NaN)."""
  found = table.numbers(name)
  computable = np.isfinite(expected)
  bad = np.isnan(found) | (computable & ~np.isclose(found, expected, rtol=rtol, atol=atol))
  if not bad.any():
    return None
  i = int(np.argmax(bad))
  if name in _INPUT_NAMES:
    formula = 'a number (an input of the sheet)'
  else:
    formula = toy.UPDATE_FORMULA if name in toy.WEIGHT_NAMES else toy.FORMULAS[name]
  return ColumnMismatch(
    column=name,
    header=str(table.columns[name].value),
    cell=table.cell(name, i),
    epoch=i,
    found=table.values(name)[i],
    expected=float(expected[i]),
    formula=f'{table.columns[name].value} = {formula}',
    bad_rows=int(bad.sum()),
  )


def _not_recomputed_note(table: _Table, per_row: dict) -> str | None:
  """Why some rows' intermediates and gradients could not be recomputed, or None."""
  own = [*toy.WEIGHT_NAMES, *(n for n in _INPUT_NAMES[:4] if n in table.columns)]
  broken = ~np.all([np.isfinite(table.numbers(n)) for n in own], axis=0)
  if not broken.any():
    return None
  i = int(np.argmax(broken))
  name = next(n for n in own if not _is_number(table.values(n)[i]))
  return (
    f'{int(broken.sum())} row(s) could not be recomputed because their weights or inputs are '
    f'not all numbers (the first: row {i} of the table, where {table.cell(name, i)} holds '
    f'{describe_value(table.values(name)[i])}); in those rows each cell was checked only for '
    'holding a number, and every other row was recomputed from its own weights'
  )


def _check_sheet(ws, ws_formulas, rtol: float, atol: float) -> SheetReport:
  header = _find_header(ws)
  if isinstance(header, str):
    return SheetReport(ws.title, problem=header)
  header_row, columns = header
  if _lacks_cached_values(ws, ws_formulas, header_row, columns):
    return SheetReport(ws.title, problem=NO_CACHED_VALUES)
  rows = _data_rows(ws, header_row, columns)
  if not rows:
    return SheetReport(ws.title, problem=f'no data rows below the header row {header_row}')
  table = _Table(ws, header_row, columns, rows)
  per_row, problem = _inputs(table)
  if problem:
    return SheetReport(ws.title, problem=problem)

  expected = _recompute(table, per_row)
  notes = [_not_recomputed_note(table, per_row)]
  if per_row['lr'] is None:
    notes.append('no η (learning rate) found: the weight updates were not checked')
  else:
    expected |= _expected_weights(table, per_row['lr'], expected)
  not_found = [c for c in _CHECKED_COLUMNS[8:] if c not in columns]
  if not_found:
    notes.append(f'columns not in the sheet, so not checked: {", ".join(not_found)}')

  # Inputs given as columns are checked for holding numbers (their own value is the expected).
  expected |= {n: per_row[n] for n in _INPUT_NAMES if n in columns}
  checked = [n for n in (*_INPUT_NAMES, *_CHECKED_COLUMNS) if n in columns and n in expected]
  mismatches = [_first_mismatch(table, n, expected[n], rtol, atol) for n in checked]
  return SheetReport(
    ws.title,
    len(rows),
    tuple(m for m in mismatches if m),
    notes=tuple(n for n in notes if n),
  )


def check_workbook(
  path: str, rtol: float = WORKBOOK_TOLERANCES[0], atol: float = WORKBOOK_TOLERANCES[1]
) -> list[SheetReport]:
  """Recomputes every row of every sheet with JAX from its own weights; reports what disagrees.

  A checked cell that holds no number (an error value such as #DIV/0!, text, or nothing)
  disagrees. Sheets with nothing in them are left out: a workbook with none left gives [].
  """
  wb_values = openpyxl.load_workbook(path, data_only=True)
  wb_formulas = openpyxl.load_workbook(path, data_only=False)
  return [
    _check_sheet(ws, wb_formulas[ws.title], rtol, atol)
    for ws in wb_values.worksheets
    if ws.max_row > 1 or ws['A1'].value is not None
  ]


def _format_mismatch(m: ColumnMismatch) -> str:
  found = f'found {describe_value(m.found)}'
  expected = f', expected {m.expected!r}' if math.isfinite(m.expected) else ''
  return (
    f'    {m.header}: first wrong at {m.cell} (row {m.epoch} of the table), {found}{expected}; '
    f'expected formula: {m.formula} ({m.bad_rows} rows wrong)'
  )


def format_report(path: str, reports: Sequence[SheetReport]) -> str:
  """Human-readable text of `check_workbook`'s reports."""
  lines = [f'{path}:']
  if not reports:
    lines.append(f'  {EMPTY_WORKBOOK}')
  for rep in reports:
    if rep.problem:
      lines.append(f'  sheet {rep.sheet!r}: cannot check: {rep.problem}')
      continue
    if not rep.mismatches:
      lines.append(f'  sheet {rep.sheet!r}: all {rep.rows} rows agree')
    else:
      lines.append(
        f'  sheet {rep.sheet!r}: {len(rep.mismatches)} column(s) disagree (of {rep.rows} rows); '
        'listed in the order they are computed, so fix the first one first: later ones may only '
        'inherit its error'
      )
      lines.extend(_format_mismatch(m) for m in rep.mismatches)
    lines.extend(f'    note: {n}' for n in rep.notes)
  return '\n'.join(lines)


def workbook_agrees(reports: Sequence[SheetReport]) -> bool:
  """True when there is at least one sheet and every sheet was checked and agrees."""
  return bool(reports) and all(not r.problem and not r.mismatches for r in reports)
