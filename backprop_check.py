"""Backprop made checkable: the course's 2-2-2 network trained by hand-derived gradients.

For each learning rate, runs the epochs with the hand gradients of `nets.toy`, asserts at every
row (with chex) that jax.grad gives the same gradients, prints the final E_total per learning
rate and writes, to --out_dir: backprop.csv, backprop.xlsx (live formulas, one sheet per
learning rate) and loss_vs_epoch.png.

  python backprop_check.py --out_dir=/tmp/bp
  python backprop_check.py --learning_rates=0.5,2 --epochs=10 --precision=float32
  python backprop_check.py --check_workbook=my_sheet.xlsx
"""

import csv
import dataclasses
import math
import os
import pathlib
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
import openpyxl
from absl import app, flags
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from openpyxl.chart import LineChart, Reference
from openpyxl.styles import Font
from openpyxl.utils import get_column_letter

from nets import toy

CSV_NAME = 'backprop.csv'
XLSX_NAME = 'backprop.xlsx'
PNG_NAME = 'loss_vs_epoch.png'
CSV_COLUMNS = ('lr', 'epoch', *toy.WEIGHT_NAMES, *toy.INTERMEDIATE_NAMES, *toy.GRADIENT_NAMES)

# (rtol, atol) for jax.grad vs the hand gradients. Both sides evaluate the same products in a
# different order, so they differ by a few roundings of eps·|term|. rtol bounds that for a
# gradient of normal size; atol covers a gradient that is a near-cancelling sum
# (δ_o1·w5 + δ_o2·w7 ≈ 0, or a_o ≈ t), whose terms (≲ 1 for |w| ≤ 3, |i| ≤ 1) set the error:
#   float64: eps ≈ 1.1e-16; measured worst over 1e5 random cases: 6e-17 abs, 2e-13 rel.
#   float32: eps ≈ 6e-8;    measured worst over 1e5 random cases: 4.5e-8 abs, 3e-5 rel (those
#     only where cancellation leaves a small gradient, which atol covers).
GRAD_TOLERANCES = {'float64': (1e-12, 1e-15), 'float32': (1e-6, 1e-7)}

# (rtol, atol) for --check_workbook. Spreadsheets compute in float64 and store 15-17 significant
# digits, so a right cell agrees to ~1e-14; a wrong factor (a_h1(1−a_h1) for a_h2(1−a_h2) at the
# course values) moves a value by ~2e-3 relative, far outside 1e-9.
WORKBOOK_TOLERANCES = (1e-9, 1e-12)

FLAGS = flags.FLAGS


# ---------------------------------------------------------------------------------------------
# Running the epochs.


@dataclasses.dataclass(frozen=True)
class Trajectory:
  """One learning rate's rows: column name (as in CSV_COLUMNS) -> array of shape (epochs,)."""

  learning_rate: float  # η (the first row's, when rows were given their own)
  precision: str
  columns: dict[str, np.ndarray]  # w1..w8 (before the row's update), intermediates, dE_dw1..8
  autodiff: dict[str, np.ndarray]  # jax.grad's ∂E/∂w1..w8, keyed w1..w8

  @property
  def epochs(self) -> int:
    return len(self.columns['w1'])

  def hand_gradients(self, epoch: int) -> dict[str, np.ndarray]:
    return {w: self.columns[f'dE_d{w}'][epoch] for w in toy.WEIGHT_NAMES}

  def autodiff_gradients(self, epoch: int) -> dict[str, np.ndarray]:
    return {w: self.autodiff[w][epoch] for w in toy.WEIGHT_NAMES}


def precision_scope(precision: str):
  """Context in which arrays of `precision` ('float32' or 'float64') can be made."""
  if precision not in GRAD_TOLERANCES:
    raise ValueError(f'precision must be one of {sorted(GRAD_TOLERANCES)}, got {precision!r}')
  return jax.enable_x64(precision == 'float64')


def _trajectory(params, inputs, targets, learning_rates, hand_grad_fn):
  """Rows of the course sheet: each row's weights, intermediates and both gradients."""

  def step(params, lr):
    row = {
      'weights': params,
      'intermediates': toy.forward(params, inputs, targets),
      'hand': hand_grad_fn(params, inputs, targets),
      'autodiff': toy.autodiff_gradients(params, inputs, targets),
    }
    # The hand gradients drive the update, as in the course; jax.grad is only the witness.
    return toy.sgd_update(params, row['hand'], lr), row

  _, rows = jax.lax.scan(step, params, learning_rates)
  return rows


_trajectory_jit = jax.jit(_trajectory, static_argnames='hand_grad_fn')


def run_learning_rate(
  learning_rate: float | Sequence[float],
  epochs: int = toy.COURSE_EPOCHS,
  weights: Sequence[float] = tuple(toy.COURSE_WEIGHTS.values()),
  inputs: Sequence[float] = toy.COURSE_INPUTS,
  targets: Sequence[float] = toy.COURSE_TARGETS,
  precision: str = 'float64',
  hand_grad_fn: Callable = toy.hand_gradients,
  check: bool = True,
) -> Trajectory:
  """Runs `epochs` rows (epoch 0 = starting weights) and, if `check`, asserts every row.

  `learning_rate` may also be one value per row (the η used for that row's update), which is how
  the tests plant a wrong learning rate on one row.
  """
  with precision_scope(precision):
    dtype = jnp.dtype(precision)
    lrs = np.broadcast_to(np.asarray(learning_rate, np.float64), (epochs,))
    params = {w: jnp.asarray(v, dtype) for w, v in zip(toy.WEIGHT_NAMES, weights, strict=True)}
    rows = _trajectory_jit(
      params,
      jnp.asarray(inputs, dtype),
      jnp.asarray(targets, dtype),
      jnp.asarray(lrs, dtype),
      hand_grad_fn=hand_grad_fn,
    )
    rows = jax.tree.map(np.asarray, rows)
  columns = {**rows['weights'], **rows['intermediates']}
  columns.update({f'dE_d{w}': rows['hand'][w] for w in toy.WEIGHT_NAMES})
  trajectory = Trajectory(float(lrs[0]), precision, columns, rows['autodiff'])
  if check:
    check_gradients(trajectory)
  return trajectory


def check_gradients(trajectory: Trajectory) -> None:
  """Asserts, row by row, that jax.grad equals the hand gradients (whole pytrees, with chex)."""
  rtol, atol = GRAD_TOLERANCES[trajectory.precision]
  for epoch in range(trajectory.epochs):
    chex.assert_trees_all_close(
      trajectory.autodiff_gradients(epoch),
      trajectory.hand_gradients(epoch),
      rtol=rtol,
      atol=atol,
      custom_message=(
        'jax.grad (tree 0) and the hand gradients (tree 1) disagree at '
        f'lr={trajectory.learning_rate}, epoch={epoch}, {trajectory.precision}'
      ),
    )


def run_sweep(learning_rates: Sequence[float], **kwargs) -> list[Trajectory]:
  """`run_learning_rate` for each learning rate (same keyword arguments)."""
  return [run_learning_rate(lr, **kwargs) for lr in learning_rates]


def format_final_table(trajectories: Sequence[Trajectory]) -> str:
  """A short table: the final E_total per learning rate."""
  last = trajectories[0].epochs - 1
  lines = [f'final E_total (epoch {last}, {trajectories[0].precision}):', f'{"lr":>6}  E_total']
  for t in trajectories:
    lines.append(f'{t.learning_rate:>6g}  {float(t.columns["E_total"][-1])!r}')
  return '\n'.join(lines)


# ---------------------------------------------------------------------------------------------
# Writing the outputs (each one atomically: a killed run never leaves a half-written file).


def write_atomically(path: str, write: Callable[[str], None]) -> None:
  """Calls write(tmp) on a temp file beside `path`, then renames it over `path`."""
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=f'.{os.path.basename(path)}.', suffix='.tmp')
  os.close(fd)
  try:
    write(tmp)
    with open(tmp, 'rb') as f:
      os.fsync(f.fileno())
    os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; outputs are meant to be read by others.
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def write_csv(trajectories: Sequence[Trajectory], path: str) -> None:
  """backprop.csv: one row per (lr, epoch), every value at full precision (repr)."""

  def write(tmp):
    with open(tmp, 'w', newline='') as f:
      writer = csv.writer(f)
      writer.writerow(CSV_COLUMNS)
      for t in trajectories:
        for epoch in range(t.epochs):
          values = [repr(float(t.columns[c][epoch])) for c in CSV_COLUMNS[2:]]
          writer.writerow([repr(float(t.learning_rate)), epoch, *values])

  write_atomically(path, write)


# Layout of each workbook sheet, like the course's: inputs, targets and η at the top (label in
# column A, value in column B), then one row per epoch.
SHEET_INPUT_CELLS = {'i1': '$B$2', 'i2': '$B$3', 't1': '$B$4', 't2': '$B$5', 'lr': '$B$6'}
SHEET_INPUT_LABELS = {'i1': 'i1', 'i2': 'i2', 't1': 't1', 't2': 't2', 'lr': 'η'}
SHEET_HEADER_ROW = 8
SHEET_FIRST_ROW = SHEET_HEADER_ROW + 1
SHEET_COLUMNS = ('epoch', *CSV_COLUMNS[2:])
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
  wb = openpyxl.Workbook()
  wb.remove(wb.active)
  bold = Font(bold=True)
  for lr in learning_rates:
    ws = wb.create_sheet(sheet_name(lr))
    ws['A1'] = 'Backpropagation, 2-2-2 sigmoid network: edit η or the epoch-0 weights to recompute'
    ws['A1'].font = bold
    values = dict(zip(('i1', 'i2'), inputs, strict=True))
    values |= dict(zip(('t1', 't2'), targets, strict=True)) | {'lr': lr}
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
    chart = LineChart()
    chart.title = f'E_total, η = {lr:g}'
    chart.x_axis.title, chart.y_axis.title = 'epoch', 'E_total'
    col = SHEET_COLUMNS.index('E_total') + 1
    last = first + epochs - 1
    chart.add_data(
      Reference(ws, min_col=col, min_row=SHEET_HEADER_ROW, max_row=last), titles_from_data=True
    )
    chart.set_categories(Reference(ws, min_col=1, min_row=first, max_row=last))
    ws.add_chart(chart, f'{get_column_letter(len(SHEET_COLUMNS) + 2)}2')
  return wb


def plot_loss(trajectories: Sequence[Trajectory]) -> Figure:
  """E_total against epoch, one labelled line per learning rate."""
  fig = Figure(figsize=(7, 4.5))
  FigureCanvasAgg(fig)  # Agg, without touching pyplot's global backend.
  ax = fig.add_subplot()
  for t in trajectories:
    ax.plot(np.arange(t.epochs), t.columns['E_total'], label=f'η = {t.learning_rate:g}')
  ax.set(xlabel='epoch', ylabel='E_total', title='2-2-2 sigmoid net: E_total per learning rate')
  ax.legend(loc='upper right')
  ax.grid(alpha=0.3)
  fig.tight_layout()
  return fig


def write_outputs(
  trajectories: Sequence[Trajectory],
  out_dir: str,
  weights: Sequence[float] = tuple(toy.COURSE_WEIGHTS.values()),
  inputs: Sequence[float] = toy.COURSE_INPUTS,
  targets: Sequence[float] = toy.COURSE_TARGETS,
) -> dict[str, str]:
  """Writes backprop.csv, backprop.xlsx and loss_vs_epoch.png to out_dir; returns their paths."""
  paths = {n: os.path.join(out_dir, n) for n in (CSV_NAME, XLSX_NAME, PNG_NAME)}
  write_csv(trajectories, paths[CSV_NAME])
  wb = build_workbook(
    [t.learning_rate for t in trajectories], trajectories[0].epochs, weights, inputs, targets
  )
  write_atomically(paths[XLSX_NAME], wb.save)
  fig = plot_loss(trajectories)
  write_atomically(paths[PNG_NAME], lambda tmp: fig.savefig(tmp, format='png', dpi=120))
  return paths


# ---------------------------------------------------------------------------------------------
# Recomputing a workbook with a real spreadsheet engine.

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
    raise FileNotFoundError('LibreOffice (soffice) not found: apt-get install libreoffice-calc')
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
_CHECKED_COLUMNS = (*toy.WEIGHT_NAMES, *toy.INTERMEDIATE_NAMES, *toy.GRADIENT_NAMES)


NO_CACHED_VALUES = (
  'its formulas have no cached values (the file was written by a program, not saved by a '
  'spreadsheet app): open and save it in Excel or LibreOffice first'
)


@dataclasses.dataclass(frozen=True)
class ColumnMismatch:
  """The first disagreeing row of one column."""

  column: str  # canonical name, e.g. 'dE_dw3'
  header: str  # as written in the sheet
  cell: str  # e.g. 'X9'
  epoch: int  # data row index, 0 = first data row
  found: object
  expected: float
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


def _find_label_value(ws, name: str, skip_row: int):
  """The number right of (or else below) a cell labelled `name`, e.g. 'i1' | 0.05."""
  for row in ws.iter_rows():
    for cell in row:
      if cell.row == skip_row or not isinstance(cell.value, str):
        continue
      if canonical_name(cell.value) == name:
        for r, c in ((cell.row, cell.column + 1), (cell.row + 1, cell.column)):
          if _is_number(ws.cell(r, c).value):
            return ws.cell(r, c).value
  return None


def _check_sheet(ws, ws_formulas, rtol: float, atol: float) -> SheetReport:
  header_row, columns, best = None, {}, {}
  for row in ws.iter_rows():
    found = {}
    for cell in row:
      name = canonical_name(cell.value) if isinstance(cell.value, str) else None
      if name and name not in found:
        found[name] = cell
    if all(w in found for w in toy.WEIGHT_NAMES):
      header_row, columns = row[0].row, found
      break
    if len(found) > len(best):
      best = found
  if header_row is None:
    if best:  # Some headers, but not the eight weights every recomputation starts from.
      cells = ', '.join(f'{c.value!r} ({c.coordinate})' for c in best.values())
      missing = ', '.join(w for w in toy.WEIGHT_NAMES if w not in best)
      return SheetReport(
        ws.title,
        problem=f'found {cells} but no header row with {missing}. Looked for {HEADERS_LOOKED_FOR}',
      )
    return SheetReport(
      ws.title, problem=f'no recognisable headers. Looked for {HEADERS_LOOKED_FOR}'
    )

  # A file written by a program (openpyxl, like our own backprop.xlsx) holds formulas with no
  # cached values: openpyxl reads those as None, which is "not computed", not "wrong".
  for r in (header_row + 1, header_row + 2):
    for cell in columns.values():
      formula = ws_formulas.cell(r, cell.column).value
      if (
        isinstance(formula, str)
        and formula.startswith('=')
        and ws.cell(r, cell.column).value is None
      ):
        return SheetReport(ws.title, problem=NO_CACHED_VALUES)

  # Data rows: from below the header while the eight weights are numbers.
  rows = []
  r = header_row + 1
  while all(_is_number(ws.cell(r, columns[w].column).value) for w in toy.WEIGHT_NAMES):
    rows.append(r)
    r += 1
  if not rows:
    return SheetReport(ws.title, problem=f'no numeric rows below the header row {header_row}')

  def column_values(name):
    return [ws.cell(r, columns[name].column).value for r in rows]

  per_row = {}
  for name in ('i1', 'i2', 't1', 't2', 'lr'):
    if name in columns:
      per_row[name] = column_values(name)
    else:
      value = _find_label_value(ws, name, header_row)
      per_row[name] = None if value is None else [value] * len(rows)
  missing = [n for n in ('i1', 'i2', 't1', 't2') if per_row[n] is None]
  if missing:
    return SheetReport(
      ws.title, problem=f'cannot find {", ".join(missing)}. Looked for {HEADERS_LOOKED_FOR}'
    )

  with jax.enable_x64(True):
    params = {w: jnp.asarray(column_values(w), jnp.float64) for w in toy.WEIGHT_NAMES}
    inputs = jnp.asarray(np.stack([per_row['i1'], per_row['i2']], axis=1), jnp.float64)
    targets = jnp.asarray(np.stack([per_row['t1'], per_row['t2']], axis=1), jnp.float64)
    inter = jax.vmap(toy.forward)(params, inputs, targets)
    grads = jax.vmap(toy.autodiff_gradients)(params, inputs, targets)
    expected = {k: np.asarray(v) for k, v in inter.items()}
    expected |= {f'dE_d{w}': np.asarray(g) for w, g in grads.items()}

  def found_array(name):
    return np.array([v if _is_number(v) else np.nan for v in column_values(name)], np.float64)

  notes = []
  # Each row's weights come from the row above: w = w_prev − η·∂E/∂w_prev, with the gradient as
  # found in the sheet (so a wrong gradient column is reported once, not again in the weights).
  if per_row['lr'] is None:
    notes.append('no η (learning rate) found: the weight updates were not checked')
  else:
    lr = np.asarray(per_row['lr'], np.float64)
    for w in toy.WEIGHT_NAMES:
      g = found_array(f'dE_d{w}') if f'dE_d{w}' in columns else expected[f'dE_d{w}']
      w_found = found_array(w)
      expected[w] = np.concatenate([w_found[:1], w_found[:-1] - lr[:-1] * g[:-1]])
  not_found = [c for c in _CHECKED_COLUMNS[8:] if c not in columns]
  if not_found:
    notes.append(f'columns not in the sheet, so not checked: {", ".join(not_found)}')

  mismatches = []
  for name in _CHECKED_COLUMNS:
    if name not in columns or name not in expected:
      continue
    found = found_array(name)
    bad = ~np.isclose(found, expected[name], rtol=rtol, atol=atol)
    if bad.any():
      i = int(np.argmax(bad))
      formula = toy.UPDATE_FORMULA if name in toy.WEIGHT_NAMES else toy.FORMULAS[name]
      mismatches.append(
        ColumnMismatch(
          column=name,
          header=str(columns[name].value),
          cell=f'{columns[name].column_letter}{rows[i]}',
          epoch=i,
          found=column_values(name)[i],
          expected=float(expected[name][i]),
          formula=f'{columns[name].value} = {formula}',
          bad_rows=int(bad.sum()),
        )
      )
  return SheetReport(ws.title, len(rows), tuple(mismatches), notes=tuple(notes))


def check_workbook(
  path: str, rtol: float = WORKBOOK_TOLERANCES[0], atol: float = WORKBOOK_TOLERANCES[1]
) -> list[SheetReport]:
  """Recomputes every row of every sheet with JAX from its own weights; reports what disagrees."""
  wb_values = openpyxl.load_workbook(path, data_only=True)
  wb_formulas = openpyxl.load_workbook(path, data_only=False)
  return [
    _check_sheet(ws, wb_formulas[ws.title], rtol, atol)
    for ws in wb_values.worksheets
    if ws.max_row > 1 or ws['A1'].value is not None
  ]


def format_report(path: str, reports: Sequence[SheetReport]) -> str:
  """Human-readable text of `check_workbook`'s reports."""
  lines = [f'{path}:']
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
      for m in rep.mismatches:
        lines.append(
          f'    {m.header}: first wrong at {m.cell} (row {m.epoch} of the table), found {m.found!r}'
          f', expected {m.expected!r}; expected formula: {m.formula} ({m.bad_rows} rows wrong)'
        )
    lines.extend(f'    note: {n}' for n in rep.notes)
  return '\n'.join(lines)


def workbook_agrees(reports: Sequence[SheetReport]) -> bool:
  return bool(reports) and all(not r.problem and not r.mismatches for r in reports)


# ---------------------------------------------------------------------------------------------
# Command line.


def _numbers_validator(count: int | None = None, positive: bool = False):
  """A flag validator: every item a finite number (> 0 if `positive`), `count` of them if given."""

  def validate(values):
    numbers = []
    for v in values:
      try:
        x = float(v)
      except ValueError:
        raise flags.ValidationError(f'{v!r} is not a number') from None
      if not math.isfinite(x):
        raise flags.ValidationError(f'{v!r} is not a finite number')
      if positive and x <= 0:
        raise flags.ValidationError(f'{v} is not > 0: a learning rate must be positive')
      numbers.append(x)
    if count is not None and len(numbers) != count:
      raise flags.ValidationError(
        f'needs exactly {count} comma-separated numbers, got {len(numbers)}'
      )
    if not numbers:
      raise flags.ValidationError('needs at least one number')
    return True

  return validate


def _define_flags():
  """Defines the flags; called only when run as a script, so that importing this module (tests,
  notebooks, train.py in the same process) never collides with other modules' flags."""
  flags.DEFINE_integer(
    'epochs', toy.COURSE_EPOCHS, 'Rows per learning rate (epoch 0 = starting weights).', 1
  )
  flags.DEFINE_list(
    'learning_rates', [f'{x:g}' for x in toy.COURSE_LEARNING_RATES], 'Learning rates η (> 0).'
  )
  flags.DEFINE_list('inputs', [f'{x:g}' for x in toy.COURSE_INPUTS], 'i1,i2.')
  flags.DEFINE_list('targets', [f'{x:g}' for x in toy.COURSE_TARGETS], 't1,t2.')
  flags.DEFINE_list(
    'weights', [f'{x:g}' for x in toy.COURSE_WEIGHTS.values()], 'Starting w1,...,w8.'
  )
  flags.DEFINE_enum(
    'precision', 'float64', ['float32', 'float64'], 'JAX precision of the run and the check.'
  )
  flags.DEFINE_string('out_dir', 'backprop_out', 'Where to write the CSV, workbook and plot.')
  flags.DEFINE_string(
    'check_workbook', None, 'Check this .xlsx (made by hand) instead of running the sweep.'
  )
  flags.register_validator('learning_rates', _numbers_validator(positive=True), 'bad learning rate')
  flags.register_validator('inputs', _numbers_validator(2), 'bad inputs')
  flags.register_validator('targets', _numbers_validator(2), 'bad targets')
  flags.register_validator('weights', _numbers_validator(8), 'bad weights')
  flags.register_validator(
    'check_workbook',
    lambda p: p is None or os.path.isfile(p),
    '--check_workbook must name an existing .xlsx file',
  )


def _error(message: str) -> SystemExit:
  """One line on stderr and exit status 1, instead of a traceback."""
  return SystemExit(f'backprop_check.py: error: {message}')


def _main_check_workbook(path: str) -> int:
  try:
    reports = check_workbook(path)
  except Exception as e:  # openpyxl raises several types for files it cannot read.
    raise _error(f'cannot read {path} as an .xlsx workbook: {e}') from None
  if any(r.problem == NO_CACHED_VALUES for r in reports) and find_soffice():
    print(f'{path} has no cached values; recomputing it with LibreOffice first.')
    with tempfile.TemporaryDirectory() as tmp:
      (recomputed,) = recalculate_with_libreoffice([path], tmp)
      reports = check_workbook(recomputed)
  print(format_report(path, reports))
  return 0 if workbook_agrees(reports) else 1


def main(argv):
  if len(argv) > 1:
    raise _error(f'unexpected arguments: {" ".join(argv[1:])}')
  if FLAGS.check_workbook:
    return _main_check_workbook(FLAGS.check_workbook)

  out_dir = FLAGS.out_dir
  try:
    os.makedirs(out_dir, exist_ok=True)
    tempfile.TemporaryFile(dir=out_dir).close()
  except OSError as e:
    raise _error(f'--out_dir={out_dir} is not a writable directory: {e.strerror}') from None

  setup = dict(
    epochs=FLAGS.epochs,
    weights=[float(x) for x in FLAGS.weights],
    inputs=[float(x) for x in FLAGS.inputs],
    targets=[float(x) for x in FLAGS.targets],
  )
  learning_rates = [float(x) for x in FLAGS.learning_rates]
  trajectories = run_sweep(learning_rates, precision=FLAGS.precision, **setup)
  rtol, atol = GRAD_TOLERANCES[FLAGS.precision]
  print(
    f'jax.grad == hand gradients at all {len(learning_rates)}×{FLAGS.epochs} rows '
    f'({FLAGS.precision}, rtol={rtol:g}, atol={atol:g})'
  )
  print(format_final_table(trajectories))
  del setup['epochs']
  paths = write_outputs(trajectories, out_dir, **setup)
  print('wrote', ', '.join(paths.values()))
  return 0


if __name__ == '__main__':
  _define_flags()
  app.run(main)
