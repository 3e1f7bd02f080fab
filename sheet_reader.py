"""Reading a hand-made backprop sheet: what its headers name, where its tables are, η and inputs.

  canonical_name('δE_tot/δw1')  # 'dE_dw1'
  tables, legends = find_tables(ws)  # every header row with at least two table rows under it

Headers are compared after `normalize_header`: Unicode NFKC, a few look-alike letters mapped
(CONFUSABLES), case folded, and everything but letters and digits dropped. docs/sheets.md lists
every name recognised. sheet_verdict.py recomputes what is found here.
"""

import dataclasses
import math
import re
import unicodedata

import numpy as np

from nets import toy

# Letters typed for others, mapped before case folding (so that Δ, a change, stays apart from
# δ, a derivative). η look-alikes: GREEK CAPITAL/SMALL LETTER PAMPHYLIAN DIGAMMA (U+0376/U+0377),
# GEORGIAN CAPITAL/SMALL LETTER EN (U+10A4 Ⴄ, U+2D04 ⴄ), ARMENIAN SMALL LETTER GHAD (U+0572 ղ),
# LATIN SMALL LETTER ENG (U+014B ŋ) and N WITH RETROFLEX HOOK (U+0273 ɳ). Derivatives: GREEK
# SMALL LETTER DELTA (U+03B4 δ) and PARTIAL DIFFERENTIAL (U+2202 ∂; NFKC already maps its
# mathematical variants to it) read as d.
CONFUSABLES = {
  '\u0376': 'η',
  '\u0377': 'η',
  '\u10a4': 'η',
  '\u2d04': 'η',
  '\u0572': 'η',
  '\u014b': 'η',
  '\u0273': 'η',
  'δ': 'd',
  '∂': 'd',
}
_CONFUSABLES_TABLE = str.maketrans(CONFUSABLES)


def normalize_header(text) -> str:
  """'δE_tot / δw1' -> 'detotdw1': NFKC, look-alikes mapped, case folded, only letters/digits."""
  text = unicodedata.normalize('NFKC', str(text)).translate(_CONFUSABLES_TABLE).casefold()
  return ''.join(ch for ch in text if ch.isalnum())


def _unit_aliases(unit: str, name_net: str, name_out: str) -> dict[str, str]:
  """The spellings of one unit's net input (h1, net_h1, in_h1) and activation (a_h1, out_h1,
  act_h1, σ(h1), sigmoid(h1), sig(h1), sigma(h1))."""
  aliases = {k + unit: name_net for k in ('', 'net', 'in', 'z')}
  prefixes = ('a', 'out', 'act', 'σ', 'sigma', 'sigmoid', 'sig')
  return aliases | {k + unit: name_out for k in prefixes}


ALIASES = {
  **{w: w for w in toy.WEIGHT_NAMES},
  **_unit_aliases('h1', 'h1', 'a_h1'),
  **_unit_aliases('h2', 'h2', 'a_h2'),
  **_unit_aliases('o1', 'o1', 'a_o1'),
  **_unit_aliases('o2', 'o2', 'a_o2'),
  **{k: 'E1' for k in ('e1', 'eo1', 'error1')},
  **{k: 'E2' for k in ('e2', 'eo2', 'error2')},
  **{k: 'E_total' for k in ('etotal', 'etot', 'et', 'e', 'totalerror', 'error')},
  **{k + n: f'i{n}' for k in ('i', 'x', 'in', 'input') for n in '12'},
  **{k + n: f't{n}' for k in ('t', 'y', 'target') for n in '12'},
}
# Headers that name no checked quantity and are not reported as unrecognised.
IGNORED_HEADERS = frozenset({'epoch', 'epochs', 'iteration', 'iter', 'step', 'row', 'n', 'no'})
# ∂E/∂w1, dE/dw1, dE_dw1, δE_tot/δw1, ∂Etotal/∂w1, dEt/dw1, dw1, grad w1, grad_E_w1, ...
_GRADIENT_HEADER = re.compile(r'^(?:d|grad)(?:e(?:total|tot|t)?)?(?:d|grad)?w([1-8])$')
# η, eta, lr, learning rate, 'learning rate: η =' (the names run together once normalised).
_LEARNING_RATE = re.compile(r'^(?:learningrate|lr|eta|η)+$')
# A label and its value in one cell: 'η = 0.5', 'lr: 0.5'.
_LABEL_AND_VALUE = re.compile(r'^(.*?)[=:]\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$')

INPUT_NAMES = ('i1', 'i2', 't1', 't2', 'lr')
# The quantities of a table, in the order they are computed: the weights (their update from the
# row above), the forward pass and E, the eight gradients.
QUANTITIES = (*toy.WEIGHT_NAMES, *toy.INTERMEDIATE_NAMES, *toy.GRADIENT_NAMES)
DISPLAY = {
  **{q: q for q in (*QUANTITIES, *INPUT_NAMES)},
  **{f'dE_d{w}': f'∂E/∂{w}' for w in toy.WEIGHT_NAMES},
  'lr': 'η',
}
MIN_TABLE_ROWS = 2  # A header with one row of numbers under it is a legend, not a table.


def _name_of_key(key: str) -> str | None:
  match = _GRADIENT_HEADER.match(key)
  if match:
    return f'dE_dw{match.group(1)}'
  if _LEARNING_RATE.match(key):
    return 'lr'
  return ALIASES.get(key)


def canonical_name(header) -> str | None:
  """The quantity a header names ('dE_dw3' for '∂E/∂w3', 't1' for 't1 (output of out_o1)')."""
  name = _name_of_key(normalize_header(header))
  if name is None and '(' in str(header):  # A remark in brackets after the name.
    before = str(header).split('(', 1)[0]
    name = _name_of_key(normalize_header(before)) if normalize_header(before) else None
  return name


def is_number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def is_empty(v) -> bool:
  return v is None or (isinstance(v, str) and not v.strip())


def is_error_value(v) -> bool:
  return isinstance(v, str) and v.startswith('#')


def describe_value(v) -> str:
  """A cell's value in words: the number, 'an empty cell', 'the error value #DIV/0!', ..."""
  if is_number(v):
    return repr(v)
  if is_empty(v):
    return 'an empty cell'
  if is_error_value(v):
    return f'the error value {v}'
  return f'{v!r}, not a number'


@dataclasses.dataclass(frozen=True)
class Table:
  """One table of a sheet: its header cells by quantity and its data rows."""

  ws: object  # openpyxl worksheet
  header_row: int
  columns: dict  # canonical name -> header cell (the first, where two cells name it)
  rows: tuple[int, ...]  # sheet row numbers of the data rows
  duplicates: dict  # canonical name -> every header cell naming it, where more than one does
  unrecognised: tuple  # the table's other header cells, which name nothing recognised

  def values(self, name: str) -> list:
    return [self.ws.cell(r, self.columns[name].column).value for r in self.rows]

  def numbers(self, name: str) -> np.ndarray:
    """The column in float64, NaN where a cell holds no number."""
    return np.array([v if is_number(v) else np.nan for v in self.values(name)], np.float64)

  def cell(self, name: str, index: int) -> str:
    return f'{self.columns[name].column_letter}{self.rows[index]}'

  @property
  def span(self) -> tuple[int, int]:
    cols = [c.column for c in self.columns.values()]
    return min(cols), max(cols)


def _header_groups(row) -> list[tuple[dict, dict, list]]:
  """The header cells of one row split into tables side by side: a name seen again, once the
  current table names all eight weights, starts the next table where the cells from it on name
  all eight weights too (else it is a duplicate header of the current table).
  Each group: (first cell by name, duplicates by name, unrecognised cells)."""
  named = []
  for cell in row:
    if isinstance(cell.value, str) and not is_empty(cell.value):
      named.append((cell, canonical_name(cell.value)))
  weights_from = [set() for _ in range(len(named) + 1)]  # weights named from index k on
  for k in range(len(named) - 1, -1, -1):
    weights_from[k] = weights_from[k + 1] | {named[k][1]} & set(toy.WEIGHT_NAMES)
  groups, names, dups, others = [], {}, {}, []
  for k, (cell, name) in enumerate(named):
    if name is None:
      if normalize_header(cell.value) not in IGNORED_HEADERS:
        others.append(cell)
      continue
    complete = all(w in names for w in toy.WEIGHT_NAMES)
    if name in names and complete and len(weights_from[k]) == len(toy.WEIGHT_NAMES):
      groups.append((names, dups, others))
      names, dups, others = {}, {}, []
    if name in names:
      dups.setdefault(name, [names[name]]).append(cell)
    else:
      names[name] = cell
  groups.append((names, dups, others))
  return groups


def _is_table_row(ws, r: int, columns: dict) -> bool:
  """More than half of the table's columns hold a number or an error value in row r."""
  filled = sum(
    is_number(v) or is_error_value(v)
    for v in (ws.cell(r, c.column).value for c in columns.values())
  )
  return 2 * filled > len(columns)


def _data_rows(ws, header_row: int, columns: dict) -> tuple[int, ...]:
  """The rows below the header down to the first that is no table row: a blank row, a block of
  other numbers (a summary), another header. A weight cell with an error value or nothing in
  it does not end the table, so that it is reported rather than cutting the table short."""
  rows, r = [], header_row + 1
  while r <= ws.max_row and _is_table_row(ws, r, columns):
    rows.append(r)
    r += 1
  return tuple(rows)


def find_tables(ws) -> tuple[list[Table], list[tuple[int, int]]]:
  """Every table of a sheet (a header row naming all eight weights, with at least
  MIN_TABLE_ROWS table rows under it), and (header row, header cells, rows) of each header
  with fewer (a legend of starting values, or a table whose formulas hold no values yet)."""
  tables, legends = [], []
  for row in ws.iter_rows():
    for names, dups, others in _header_groups(row):
      if not all(w in names for w in toy.WEIGHT_NAMES):
        continue
      header_row = row[0].row
      rows = _data_rows(ws, header_row, names)
      if len(rows) < MIN_TABLE_ROWS:
        legends.append((header_row, names, len(rows)))
        continue
      tables.append(Table(ws, header_row, names, rows, dups, tuple(others)))
  return tables, legends


def _label_value(ws, cell, max_right: int = 6) -> tuple[float | None, str]:
  """The number a label cell gives: in the cell itself ('η = 0.5'), else the first non-empty
  cell to its right (past empty and merged cells and lone '=' or ':'), else the one below."""
  match = _LABEL_AND_VALUE.match(str(cell.value).strip())
  if match and normalize_header(match.group(1)):
    return float(match.group(2)), cell.coordinate
  for dc in range(1, max_right + 1):
    right = ws.cell(cell.row, cell.column + dc)
    if is_number(right.value):
      return right.value, right.coordinate
    if not is_empty(right.value) and normalize_header(right.value):
      break
  below = ws.cell(cell.row + 1, cell.column)
  if is_number(below.value):
    return below.value, below.coordinate
  first = ws.cell(cell.row, cell.column + 1)
  return None, (
    f'the label {cell.value!r} at {cell.coordinate} has no number beside it '
    f'({first.coordinate} holds {describe_value(first.value)})'
  )


def _distance(table: Table, cell) -> tuple[bool, int]:
  """How far a label cell is from a table: labels above or beside its header first, then by
  rows and columns away from it."""
  lo, hi = table.span
  columns_away = max(0, lo - cell.column, cell.column - hi)
  return cell.row > table.header_row, abs(table.header_row - cell.row) + columns_away


def collect_labels(ws, skip_rows) -> dict[str, list]:
  """The cells of a sheet, outside the rows `skip_rows` (the tables' header rows), that label
  one of INPUT_NAMES: 'η', 'i1', 'learning rate:', 'η = 0.5', ..."""
  labels = {}
  for row in ws.iter_rows():
    for cell in row:
      if cell.row in skip_rows or not isinstance(cell.value, str):
        continue
      name = canonical_name(cell.value)
      match = _LABEL_AND_VALUE.match(cell.value.strip())
      if name is None and match:
        name = canonical_name(match.group(1))
      if name in INPUT_NAMES:
        labels.setdefault(name, []).append(cell)
  return labels


def find_label_value(table: Table, name: str, labels: dict) -> tuple[float | None, str | None]:
  """(the value of the label `name` nearest the table, where it is), or (None, why not)."""
  found, why = [], None
  for cell in labels.get(name, ()):
    value, where = _label_value(table.ws, cell)
    if value is None:
      why = why or where
    else:
      found.append((_distance(table, cell), value, where))
  if found:
    _, value, where = min(found, key=lambda f: f[0])
    return float(value), where
  return None, why
