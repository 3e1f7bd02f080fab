"""What the stored digits of a spreadsheet column allow: how far each cell may sit from the
exact value by rounding alone, and whether the differences hold a constant relative error
that rounding does not explain (a formula error). sheet_verdict.py uses both.
"""

import math

import numpy as np

# How many standard errors a column's mean relative error must lie from zero to be called
# systematic (a formula error) rather than the scatter of rounding.
SYSTEMATIC_Z = 6.0
MIN_SYSTEMATIC_ROWS = 8


def significant_digits(v: float) -> int:
  """Digits of the shortest repr of v, without leading and trailing zeros: 0.150 -> 2."""
  mantissa = repr(abs(float(v))).split('e')[0].replace('.', '')
  return len(mantissa.strip('0'))


def decimal_places(v: float) -> int:
  text = np.format_float_positional(abs(float(v)), trim='-')
  return len(text.split('.')[1]) if '.' in text else 0


def rounding(values: np.ndarray) -> tuple[np.ndarray, str | None]:
  """Half a unit in the last digit each cell stores, under the column's way of rounding: to
  the most significant digits any of its cells has, or to the most decimal places, whichever
  more cells fill (a cell may end in zeros it does not show). Zero where nothing is known."""
  budget = np.zeros(len(values))
  nonzero = np.isfinite(values) & (values != 0)
  if not nonzero.any():
    return budget, None
  v = values[nonzero]
  sig = np.array([significant_digits(x) for x in v])
  dec = np.array([decimal_places(x) for x in v])
  if np.sum(sig == sig.max()) >= np.sum(dec == dec.max()):
    budget[nonzero] = 0.5 * 10.0 ** (np.floor(np.log10(np.abs(v))) - sig.max() + 1)
    return budget, f'{sig.max()} significant digits'
  budget[nonzero] = 0.5 * 10.0 ** -dec.max()
  return budget, f'{dec.max()} decimal places'


def systematic_error(found, expected, budget, rtol: float) -> float | None:
  """The column's constant relative error, where the differences hold one that rounding does
  not explain; else None.

  Rounding scatters a cell by up to ±budget, both ways. The least-squares relative error ε of
  found ≈ (1 + ε)·expected, weighted by 1/budget², has then a standard error of
  1/√(3·Σ(expected/budget)²); SYSTEMATIC_Z of those from zero, more than rtol, and matched by
  the median row (so that one wrong row does not make a column systematic) is a formula error.
  """
  ok = np.isfinite(found) & np.isfinite(expected) & (budget > 0) & (expected != 0)
  if ok.sum() < MIN_SYSTEMATIC_ROWS:
    return None
  r, e, b = found[ok] - expected[ok], expected[ok], budget[ok]
  weight = np.sum((e / b) ** 2)
  eps = float(np.sum(r * e / b**2) / weight)
  z = eps * math.sqrt(3 * weight)
  median = float(np.median(r / e))
  if abs(eps) > rtol and abs(z) > SYSTEMATIC_Z and median * eps > 0 and abs(median) > abs(eps) / 2:
    return eps
  return None
