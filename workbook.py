"""The course sheet as an .xlsx workbook: built with live formulas, recomputed, and checked.

  build_workbook([0.5, 2]).save('course.xlsx')  # one sheet per learning rate, every cell a formula
  recalculate_with_libreoffice(['course.xlsx'], out_dir)  # cached values from a real spreadsheet
  print(format_report(path, check_workbook(path)))  # a sheet made by hand, recomputed with JAX

backprop_check.py writes the built workbook beside its CSV and plot, and runs the check for
`--check_workbook`. The formulas are the course's, as written in nets/toy.py.
"""

import os
import pathlib
import shutil
import subprocess
import tempfile
from collections.abc import Sequence

import openpyxl
from openpyxl.chart import LineChart, Reference
from openpyxl.styles import Font
from openpyxl.utils import get_column_letter

from nets import toy
from sheet_reader import canonical_name, describe_value, normalize_header
from sheet_verdict import (
  EMPTY_WORKBOOK,
  HEADERS_LOOKED_FOR,
  NO_CACHED_VALUES,
  WORKBOOK_TOLERANCES,
  ColumnMismatch,
  SheetReport,
  check_workbook,
  exit_status,
  format_report,
  workbook_agrees,
)

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
# Checking a workbook made by hand: sheet_reader.py reads it, sheet_verdict.py judges it; their
# entry points are re-exported here.

__all__ = [
  'EMPTY_WORKBOOK',
  'HEADERS_LOOKED_FOR',
  'NO_CACHED_VALUES',
  'WORKBOOK_TOLERANCES',
  'ColumnMismatch',
  'SheetReport',
  'build_workbook',
  'canonical_name',
  'check_workbook',
  'describe_value',
  'exit_status',
  'find_soffice',
  'format_report',
  'normalize_header',
  'recalculate_with_libreoffice',
  'workbook_agrees',
]
