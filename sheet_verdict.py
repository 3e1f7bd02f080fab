"""The verdict on a hand-made backprop workbook: every table recomputed with JAX, and what it
covered.

  reports = check_workbook('my_sheet.xlsx')
  print(format_report('my_sheet.xlsx', reports))
  exit_status(reports)  # 0 agree, 1 disagree, 2 not fully checked

Each table ends in one of three outcomes (OUTCOMES): AGREE, every quantity of the table (the
weight updates with η, the forward values and E, all eight gradients) checked and right;
DISAGREE, some checked cell is wrong; NOT_CHECKED, no checked cell is wrong but some quantity
could not be checked (no column recognised for it, no η, no inputs). The workbook's outcome is
DISAGREE if any table disagrees, else NOT_CHECKED if any table (or the whole workbook) was not
fully checked, else AGREE. docs/sheets.md describes what is recognised and how values pasted
with rounding are told apart from a formula error.
"""

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import openpyxl

import sheet_reader as sr
import sheet_rounding
from nets import toy

# (rtol, atol) of the comparison. rtol is relative to the cell's expected value; atol to the
# largest |value| of its column, so that a column of tiny gradients (late in a long run) is held
# to the same relative standard as the rest. Spreadsheets compute in float64 and store 15-17
# significant digits, so a right cell agrees to ~1e-14; a wrong factor (a_h1(1−a_h1) for
# a_h2(1−a_h2) at the course values) moves a value by ~2e-3 relative, far outside 1e-9. Values
# stored with fewer digits are allowed the rounding those digits imply on top
# (sheet_rounding.py).
WORKBOOK_TOLERANCES = (1e-9, 1e-12)

AGREE, DISAGREE, NOT_CHECKED = 'agree', 'disagree', 'not fully checked'
EXIT_STATUS = {AGREE: 0, DISAGREE: 1, NOT_CHECKED: 2}

NO_CACHED_VALUES = (
  'its formulas have no cached values (the file was written by a program, not saved by a '
  'spreadsheet app): open and save it in Excel or LibreOffice first'
)
EMPTY_WORKBOOK = 'no sheet holds any data, so there is nothing to check: an empty workbook fails'
HEADERS_LOOKED_FOR = (
  'w1..w8, h1 (or net_h1), a_h1 (or out_h1, act_h1, σ(h1), sigmoid(h1)), h2, a_h2, o1, a_o1, '
  'o2, a_o2, E1, E2, E_total (or E_tot, Etotal, Et), ∂E/∂w1..∂E/∂w8 (or dE/dw1, ∂E_total/∂w1, '
  'δE_tot/δw1, dE_dw1, dw1, grad w1), and i1, i2, t1, t2 (or x1, x2, y1, y2), η (or eta, lr, '
  'learning rate) as columns or as labels with the value to their right; matched ignoring case, '
  'spaces and symbols (docs/sheets.md lists every name)'
)


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
  bad_rows: int  # rows outside the tolerance (with the rounding the stored digits imply)
  systematic: float | None = None  # the column's constant relative error, where it has one
  digits: str | None = None  # how the column's values were rounded, where they were


@dataclasses.dataclass(frozen=True)
class SheetReport:
  """The verdict on one table of a sheet (or on a sheet where no table could be checked)."""

  sheet: str
  header_row: int | None = None
  lr: str | None = None  # 'η = 0.5 (B6)', or None where no η was found
  rows: int = 0
  mismatches: tuple[ColumnMismatch, ...] = ()
  problem: str | None = None  # why the table (or the sheet) could not be checked at all
  notes: tuple[str, ...] = ()
  not_checked: tuple[str, ...] = ()  # each quantity not checked, with why
  checked: int = 0  # quantities (columns) checked, of len(sr.QUANTITIES)

  @property
  def outcome(self) -> str:
    if self.mismatches:
      return DISAGREE
    return NOT_CHECKED if self.problem or self.not_checked else AGREE


def workbook_outcome(reports: Sequence[SheetReport]) -> str:
  outcomes = {r.outcome for r in reports}
  if DISAGREE in outcomes:
    return DISAGREE
  return AGREE if outcomes == {AGREE} else NOT_CHECKED


def exit_status(reports: Sequence[SheetReport]) -> int:
  """0 when every quantity of every table was checked and agrees, 1 when a checked cell is
  wrong, 2 when nothing checked is wrong but something could not be checked."""
  return EXIT_STATUS[workbook_outcome(reports)]


def workbook_agrees(reports: Sequence[SheetReport]) -> bool:
  """True when there is a table and every quantity of every table was checked and agrees."""
  return workbook_outcome(reports) == AGREE


# ---------------------------------------------------------------------------------------------
# Recomputing a table.


def _outputs(params, inputs, targets):
  inter = toy.forward(params, inputs, targets)
  grads = toy.autodiff_gradients(params, inputs, targets)
  return inter | {f'dE_d{w}': g for w, g in grads.items()}


@jax.jit
def _recompute_rows(params, inputs, targets, weight_rounding):
  """Each row's intermediates and gradients, and how far the weights' rounding moves them."""
  values = jax.vmap(_outputs)(params, inputs, targets)
  jac = jax.vmap(jax.jacfwd(_outputs))(params, inputs, targets)
  moved = {
    k: sum(jnp.abs(jac[k][w]) * weight_rounding[w] for w in toy.WEIGHT_NAMES) for k in values
  }
  return values, moved


def _recompute(table: sr.Table, per_row: dict, budgets: dict) -> tuple[dict, dict]:
  """JAX's value of every intermediate and gradient column from each row's own weights, and the
  rounding each value is allowed: its own cell's, plus what the weights' rounding moves it by."""
  with jax.enable_x64(True):
    params = {w: jnp.asarray(table.numbers(w), jnp.float64) for w in toy.WEIGHT_NAMES}
    inputs = jnp.asarray(np.stack([per_row['i1'], per_row['i2']], axis=1), jnp.float64)
    targets = jnp.asarray(np.stack([per_row['t1'], per_row['t2']], axis=1), jnp.float64)
    rounded = {w: jnp.asarray(budgets[w], jnp.float64) for w in toy.WEIGHT_NAMES}
    values, moved = _recompute_rows(params, inputs, targets, rounded)
    expected = {k: np.asarray(v) for k, v in values.items()}
    allowed = {k: np.asarray(moved[k]) + budgets.get(k, 0) for k in values}
  return expected, allowed


def _expected_weights(table: sr.Table, lr, expected: dict, budgets: dict, allowed: dict):
  """Each row's weights from the row above: w = w_prev − η·∂E/∂w_prev, and the rounding allowed.

  Uses the gradients as found in the sheet, so that a wrong gradient column is reported once,
  not again in the weights. The first row's weights are the sheet's own.
  """
  weights, allowance = {}, {}
  for w in toy.WEIGHT_NAMES:
    g_name = f'dE_d{w}'
    found = g_name in table.columns
    g = table.numbers(g_name) if found else expected[g_name]
    g_rounding = budgets[g_name] if found else allowed[g_name]
    w_found, b = table.numbers(w), budgets[w]
    weights[w] = np.concatenate([w_found[:1], w_found[:-1] - lr[:-1] * g[:-1]])
    allowance[w] = b + np.concatenate([[0.0], b[:-1] + np.abs(lr[:-1]) * g_rounding[:-1]])
  return weights, allowance


def _formula(table: sr.Table, name: str) -> str:
  if name in sr.INPUT_NAMES:
    formula = 'a number (an input of the sheet)'
  else:
    formula = toy.UPDATE_FORMULA if name in toy.WEIGHT_NAMES else toy.FORMULAS[name]
  return f'{table.columns[name].value} = {formula}'


def column_mismatch(
  table: sr.Table, name: str, expected, allowed, rtol: float, atol: float, digits=None
) -> ColumnMismatch | None:
  """The column's first wrong cell, or None: a cell is wrong if it holds no number, or a number
  farther from `expected` (where that is known, i.e. not NaN) than the tolerance plus the
  rounding `allowed`; the whole column is wrong if it holds a systematic relative error."""
  found = table.numbers(name)
  computable = np.isfinite(expected)
  scale = float(np.max(np.abs(expected[computable]), initial=0.0))
  tol = rtol * np.abs(expected) + atol * scale + allowed * (1 + 1e-6)
  bad = np.isnan(found) | (computable & ~(np.abs(found - expected) <= tol))
  systematic = sheet_rounding.systematic_error(found, expected, allowed, rtol) if digits else None
  if not bad.any() and systematic is None:
    return None
  i = int(np.argmax(bad)) if bad.any() else int(np.argmax(computable))
  return ColumnMismatch(
    column=name,
    header=str(table.columns[name].value),
    cell=table.cell(name, i),
    epoch=i,
    found=table.values(name)[i],
    expected=float(expected[i]),
    formula=_formula(table, name),
    bad_rows=int(bad.sum()),
    systematic=systematic,
    digits=digits,
  )


# ---------------------------------------------------------------------------------------------
# What a table holds and what could not be checked.


def _header_list(cells, most: int = 8) -> str:
  shown = ', '.join(f'{c.value!r} ({c.coordinate})' for c in cells[:most])
  return shown + (f', … ({len(cells) - most} more)' if len(cells) > most else '')


def _suggestions(table: sr.Table, missing: Sequence[str]) -> dict[str, str]:
  """For each missing name, a duplicate header that is likely it: two columns headed 'i2' and
  none 't2' (names one letter apart) suggest that the second 'i2' is t2."""
  out = {}
  for name, cells in table.duplicates.items():
    for m in missing:
      if len(m) == len(name) and sum(a != b for a, b in zip(m, name, strict=True)) == 1:
        out[m] = (
          f'{len(cells)} columns are headed {cells[0].value!r} '
          f'({", ".join(c.coordinate for c in cells)}) and none {sr.DISPLAY[m]}: '
          f'if {cells[-1].coordinate} is {sr.DISPLAY[m]}, head it so'
        )
  return out


def _names(names: Sequence[str]) -> str:
  """'∂E/∂w1..∂E/∂w8' for all eight gradients (likewise weights), else the names listed."""
  for group in (toy.GRADIENT_NAMES, toy.WEIGHT_NAMES):
    if list(names) == list(group):
      return f'{sr.DISPLAY[group[0]]}..{sr.DISPLAY[group[-1]]}'
  return ', '.join(sr.DISPLAY[n] for n in names)


def _not_checked(table: sr.Table, lr_found: bool) -> list[str]:
  """Each quantity of the table not checked, with why."""
  missing = [q for q in sr.QUANTITIES[8:] if q not in table.columns]
  suggested = _suggestions(table, missing)
  reasons = [f'{sr.DISPLAY[m]} ({suggested[m]})' for m in missing if m in suggested]
  rest = [m for m in missing if m not in suggested]
  seen = _header_list(list(table.unrecognised)) if table.unrecognised else 'none other'
  for group in (toy.INTERMEDIATE_NAMES, toy.GRADIENT_NAMES):
    names = [m for m in rest if m in group]
    if names:
      reasons.append(f'{_names(names)} (no header matched; headers seen: {seen})')
  if not lr_found:
    reasons.append('the weight updates w1..w8 (no η found)')
  return reasons


def _inputs(table: sr.Table, labels: dict) -> tuple[dict, str | None, str | None]:
  """i1, i2, t1, t2 and η per data row (NaN where a cell holds no number), where η was found,
  and why the inputs were not found (None if they were)."""
  per_row, why, lr_where = {}, {}, None
  for name in sr.INPUT_NAMES:
    if name in table.columns:
      per_row[name] = table.numbers(name)
      lr_where = lr_where or (f'column {table.columns[name].coordinate}' if name == 'lr' else None)
      continue
    value, where = sr.find_label_value(table, name, labels)
    why[name] = where if value is None else None
    per_row[name] = None if value is None else np.full(len(table.rows), value)
    if name == 'lr' and value is not None:
      lr_where = f'η = {value:g} ({where})'
  missing = [n for n in sr.INPUT_NAMES[:4] if per_row[n] is None]
  if not missing:
    return per_row, lr_where, None
  hints = _suggestions(table, missing)
  reasons = ''.join(f'; {hints.get(n) or why[n]}' for n in missing if hints.get(n) or why[n])
  problem = f'cannot find {", ".join(missing)}{reasons}. Looked for {HEADERS_LOOKED_FOR}'
  return per_row, lr_where, problem


def _not_recomputed_note(table: sr.Table) -> str | None:
  """Why some rows' intermediates and gradients could not be recomputed, or None."""
  own = [*toy.WEIGHT_NAMES, *(n for n in sr.INPUT_NAMES[:4] if n in table.columns)]
  broken = ~np.all([np.isfinite(table.numbers(n)) for n in own], axis=0)
  if not broken.any():
    return None
  i = int(np.argmax(broken))
  name = next(n for n in own if not sr.is_number(table.values(n)[i]))
  return (
    f'{int(broken.sum())} row(s) could not be recomputed because their weights or inputs are '
    f'not all numbers (the first: row {i} of the table, where {table.cell(name, i)} holds '
    f'{sr.describe_value(table.values(name)[i])}); in those rows each cell was checked only for '
    'holding a number, and every other row was recomputed from its own weights'
  )


# Half a unit in the 13th significant digit: a column whose cells are allowed more than this
# (relative to their value) was stored rounded, to 12 significant digits or fewer.
ROUNDED = 5e-13


def _roundings(table: sr.Table) -> tuple[dict, dict]:
  """Each column's rounding allowance per cell, and how the rounded columns were rounded."""
  budgets, digits = {}, {}
  for name in table.columns:
    values = table.numbers(name)
    budgets[name], how = sheet_rounding.rounding(values)
    # Inputs in columns are typed values (0.05), compared with themselves: never 'rounded'.
    if how and name in sr.QUANTITIES and np.any(budgets[name] > ROUNDED * np.abs(values)):
      digits[name] = how
  for name in sr.QUANTITIES:
    budgets.setdefault(name, np.zeros(len(table.rows)))
  return budgets, digits


def _rounding_note(digits: dict) -> str | None:
  if not digits:
    return None
  hows = sorted(set(digits.values()), key=lambda h: (h.split()[1], int(h.split()[0])))
  counts = ', '.join(f'{h} in {sum(d == h for d in digits.values())}' for h in hows)
  return (
    f'values stored rounded (columns by their stored digits: {counts}): each cell was allowed '
    'the rounding its stored digits imply (and the rounding of the weights it is computed '
    'from); a column that is off by the same relative amount in every row is a formula error, '
    'not rounding, and is reported as such'
  )


def check_table(table: sr.Table, labels: dict, rtol: float, atol: float, notes=()) -> SheetReport:
  """The verdict on one table: every row recomputed from its own weights, and what was covered."""
  report = dict(sheet=table.ws.title, header_row=table.header_row, rows=len(table.rows))
  per_row, lr_where, problem = _inputs(table, labels)
  if problem:
    return SheetReport(**report, lr=lr_where, problem=problem, notes=tuple(notes))
  budgets, digits = _roundings(table)
  expected, allowed = _recompute(table, per_row, budgets)
  notes = [*notes, _not_recomputed_note(table)]
  if per_row['lr'] is not None:
    weights, weight_allowed = _expected_weights(table, per_row['lr'], expected, budgets, allowed)
    expected |= weights
    allowed |= weight_allowed
  # Inputs given as columns are checked for holding numbers (their own value is the expected).
  for n in sr.INPUT_NAMES:
    if n in table.columns:
      expected[n], allowed[n] = per_row[n], budgets[n]
  checked = [n for n in (*sr.INPUT_NAMES, *sr.QUANTITIES) if n in table.columns and n in expected]
  found = [
    column_mismatch(table, n, expected[n], allowed[n], rtol, atol, digits.get(n)) for n in checked
  ]
  mismatches = tuple(m for m in found if m)
  notes.append(_rounding_note(digits))
  return SheetReport(
    **report,
    lr=lr_where,
    mismatches=mismatches,
    notes=tuple(n for n in notes if n),
    not_checked=tuple(_not_checked(table, per_row['lr'] is not None)),
    checked=sum(n in sr.QUANTITIES for n in checked),
  )


# ---------------------------------------------------------------------------------------------
# Sheets and workbooks.


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


def _why_no_table(ws, ws_formulas, legends) -> str:
  """Why a sheet holds no table: no header row, formulas never computed, too few rows."""
  for header_row, columns, _ in legends:
    if _lacks_cached_values(ws, ws_formulas, header_row, columns):
      return NO_CACHED_VALUES
  if legends:
    header_row, _, rows = legends[0]
    if rows == 0:
      return f'no data rows below the header row {header_row}'
    return (
      f'only {rows} row of numbers below the header row {header_row}: one row is a legend, not '
      f'a table (a table needs {sr.MIN_TABLE_ROWS} rows or more)'
    )
  best = {}
  for row in ws.iter_rows():
    found = {}
    for cell in row:
      name = sr.canonical_name(cell.value) if isinstance(cell.value, str) else None
      if name and name not in found:
        found[name] = cell
    if len(found) > len(best):
      best = found
  if best:  # Some headers, but not the eight weights every recomputation starts from.
    missing = ', '.join(w for w in toy.WEIGHT_NAMES if w not in best)
    return (
      f'found {_header_list(list(best.values()), most=40)} but no header row with {missing}. '
      f'Looked for {HEADERS_LOOKED_FOR}'
    )
  return f'no recognisable headers. Looked for {HEADERS_LOOKED_FOR}'


def _legend_note(legends) -> str | None:
  if not legends:
    return None
  where = ', '.join(f'row {r} ({n} row(s) under it)' for r, _, n in legends)
  return f'headers naming w1..w8 with too few rows under them to be a table, not checked: {where}'


def check_sheet(ws, ws_formulas, rtol: float, atol: float) -> list[SheetReport]:
  """A verdict per table of the sheet; one report saying why, where it holds none."""
  tables, legends = sr.find_tables(ws)
  if not tables:
    return [SheetReport(ws.title, problem=_why_no_table(ws, ws_formulas, legends))]
  labels = sr.collect_labels(ws, {t.header_row for t in tables})
  notes = [n for n in (_legend_note(legends),) if n]
  return [check_table(t, labels, rtol, atol, notes) for t in tables]


def check_workbook(
  path: str, rtol: float = WORKBOOK_TOLERANCES[0], atol: float = WORKBOOK_TOLERANCES[1]
) -> list[SheetReport]:
  """Recomputes every row of every table of every sheet with JAX from its own weights.

  A checked cell that holds no number (an error value such as #DIV/0!, text, or nothing)
  disagrees. Sheets with nothing in them are left out: a workbook with none left gives [].
  """
  wb_values = openpyxl.load_workbook(path, data_only=True)
  wb_formulas = openpyxl.load_workbook(path, data_only=False)
  reports = []
  for ws in wb_values.worksheets:
    if ws.max_row > 1 or ws['A1'].value is not None:
      reports.extend(check_sheet(ws, wb_formulas[ws.title], rtol, atol))
  return reports


# ---------------------------------------------------------------------------------------------
# The report.


def _format_mismatch(m: ColumnMismatch) -> str:
  found = f'found {sr.describe_value(m.found)}'
  expected = f', expected {m.expected!r}' if math.isfinite(m.expected) else ''
  line = (
    f'    {m.header}: first wrong at {m.cell} (row {m.epoch} of the table), {found}{expected}; '
    f'expected formula: {m.formula} ({m.bad_rows} rows wrong'
  )
  if m.bad_rows == 0 and m.systematic is not None:
    line += f', each within the rounding of its {m.digits}'
  line += ')'
  if m.systematic is not None:
    line += (
      f'; systematic: the same relative error, {m.systematic:+.2g}, down the column, which '
      f'rounding to {m.digits} would scatter both ways: a formula error, not rounding'
    )
  return line


def _where(rep: SheetReport) -> str:
  where = f'sheet {rep.sheet!r}'
  if rep.header_row is not None:
    where += f', table at row {rep.header_row} ({rep.lr or "η not found"}, {rep.rows} rows)'
  return where


def format_table(rep: SheetReport) -> list[str]:
  """The lines of one table's verdict."""
  total = len(sr.QUANTITIES)
  if rep.problem:
    return [f'  {_where(rep)}: cannot check: {rep.problem}', *(f'    note: {n}' for n in rep.notes)]
  lines = []
  if rep.outcome == AGREE:
    lines.append(
      f'  {_where(rep)}: agree: all {rep.rows} rows agree, every quantity checked '
      f'({rep.checked} of {total} columns)'
    )
  elif rep.outcome == DISAGREE:
    lines.append(
      f'  {_where(rep)}: disagree: {len(rep.mismatches)} column(s) disagree (of {rep.rows} '
      'rows); listed in the order they are computed, so fix the first one first: later ones '
      'may only inherit its error'
    )
    lines.extend(_format_mismatch(m) for m in rep.mismatches)
  coverage = f'checked {rep.checked} of {total} columns; not checked: {", ".join(rep.not_checked)}'
  if rep.outcome == NOT_CHECKED:
    lines.append(
      f'  {_where(rep)}: {NOT_CHECKED}: {coverage}; no checked value is wrong in its {rep.rows} '
      'rows'
    )
  elif rep.not_checked:
    lines.append(f'    also {coverage}')
  return lines + [f'    note: {n}' for n in rep.notes]


def _summary(reports: Sequence[SheetReport]) -> str:
  outcome = workbook_outcome(reports)
  tables = [r for r in reports if r.header_row is not None]
  count = {o: sum(r.outcome == o for r in reports) for o in (AGREE, DISAGREE, NOT_CHECKED)}
  head = f'verdict: {outcome} (exit {EXIT_STATUS[outcome]})'
  if outcome == AGREE:
    return f'{head}: every quantity of {len(tables)} table(s) checked, and all agree'
  if outcome == DISAGREE:
    return f'{head}: wrong values in {count[DISAGREE]} of {len(reports)} table(s)'
  return (
    f'{head}: {count[NOT_CHECKED]} of {len(reports)} table(s) or sheet(s) not fully checked, '
    'and no checked value is wrong; this is no pass'
  )


def format_report(path: str, reports: Sequence[SheetReport]) -> str:
  """Human-readable text of `check_workbook`'s reports, ending in the workbook's verdict."""
  lines = [f'{path}:']
  if not reports:
    lines.append(f'  {EMPTY_WORKBOOK}')
  for rep in reports:
    lines.extend(format_table(rep))
  lines.append(_summary(reports))
  return '\n'.join(lines)
