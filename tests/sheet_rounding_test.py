"""Tests for sheet_rounding: the rounding a column's stored digits allow, and the systematic
error that rounding cannot explain."""

import numpy as np
from absl.testing import absltest, parameterized

import sheet_rounding
from tests import testutil


def round_sig(values: np.ndarray, digits: int) -> np.ndarray:
  """Each value rounded to `digits` significant digits, as a pasted column would hold it."""
  return np.array([testutil.rounded_to(digits)(v) for v in values])


class RoundingTest(parameterized.TestCase):
  @parameterized.parameters(
    (0.15, 2), (0.123457, 6), (1.5e-10, 2), (150.0, 2), (-0.5, 1), (0.30000000000000004, 17)
  )
  def test_significant_digits(self, v, digits):
    self.assertEqual(sheet_rounding.significant_digits(v), digits)

  def test_a_column_of_decimal_places_is_allowed_half_its_last_place(self):
    # 4 decimal places fill three cells; the most significant digits (6, in 12.0001) only one.
    budget, how = sheet_rounding.rounding(np.array([0.1234, 1.5, 12.0001, 0.0012]))
    self.assertEqual(how, '4 decimal places')
    np.testing.assert_allclose(budget, 0.5e-4)

  def test_a_column_of_significant_digits_is_allowed_half_its_last_digit(self):
    budget, how = sheet_rounding.rounding(np.array([0.012346, 123.46, 1.2346, 0.0]))
    self.assertEqual(how, '5 significant digits')
    np.testing.assert_allclose(budget, [0.5e-6, 0.5e-2, 0.5e-4, 0.0])  # Zero: nothing known.

  def test_an_empty_column_has_no_rounding(self):
    budget, how = sheet_rounding.rounding(np.array([0.0, np.nan]))
    self.assertIsNone(how)
    np.testing.assert_array_equal(budget, 0.0)


class SystematicErrorTest(absltest.TestCase):
  def setUp(self):
    super().setUp()
    self.expected = np.random.default_rng(0).uniform(0.1, 0.9, 40)

  def error(self, found: np.ndarray) -> float | None:
    budget, _ = sheet_rounding.rounding(found)
    return sheet_rounding.systematic_error(found, self.expected, budget, rtol=1e-9)

  def test_rounding_alone_is_not_systematic(self):
    self.assertIsNone(self.error(round_sig(self.expected, 6)))

  def test_a_constant_relative_error_under_the_rounding_is_found(self):
    # 1e-5 relative is within a 5-digit column's rounding in half of its cells (each alone
    # would pass), but the same in all of them.
    found = round_sig(self.expected * (1 + 1e-5), 5)
    budget, _ = sheet_rounding.rounding(found)
    self.assertGreaterEqual(np.mean(np.abs(found - self.expected) <= budget), 0.5)
    eps = self.error(found)
    self.assertIsNotNone(eps)
    self.assertAlmostEqual(eps / 1e-5, 1.0, delta=0.2)

  def test_one_wrong_row_is_not_a_systematic_error(self):
    found = round_sig(self.expected, 6)
    found[3] *= 1.01  # The median row is right: a wrong cell, reported as one, elsewhere.
    self.assertIsNone(self.error(found))

  def test_too_few_rows_say_nothing(self):
    rows = sheet_rounding.MIN_SYSTEMATIC_ROWS - 1
    found = round_sig(self.expected[:rows] * (1 + 1e-3), 6)
    budget, _ = sheet_rounding.rounding(found)
    self.assertIsNone(
      sheet_rounding.systematic_error(found, self.expected[:rows], budget, rtol=1e-9)
    )


if __name__ == '__main__':
  absltest.main()
