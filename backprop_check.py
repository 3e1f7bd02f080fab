"""Backprop made checkable: the course's 2-2-2 network trained by hand-derived gradients.

For each learning rate, runs the epochs with the hand gradients of `nets.toy`, asserts at every
row (with chex) that jax.grad gives the same gradients, prints the final E_total per learning
rate and writes, to --out_dir: backprop.csv, backprop.xlsx (live formulas, one sheet per
learning rate; built by `workbook`) and loss_vs_epoch.png. `--check_workbook` checks a
workbook made by hand instead (`workbook.check_workbook`).

  python backprop_check.py --out_dir=/tmp/bp
  python backprop_check.py --learning_rates=0.5,2 --epochs=10 --precision=float32
  python backprop_check.py --check_workbook=my_sheet.xlsx
  python backprop_check.py --cnn --config=configs/mnist.py  # the CNN's (cnn_check.py)
"""

import csv
import dataclasses
import math
import os
import tempfile
from collections.abc import Callable, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

import cnn_check
import startup
import workbook
from errors import UserError
from metrics import write_atomically
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

# Most rows per learning rate that --epochs accepts. A sheet would hold 1,048,576, but cost sets
# the bound: measured on 2 CPU cores, each row takes ~1 ms to check with chex and ~0.8 ms and
# ~12 kB (held until saved) to write as 29 formula cells, so the course's 6 learning rates at
# 10,000 rows take ~2 min and ~1 GB.
MAX_EPOCHS = 10_000

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
  wb = workbook.build_workbook(
    [t.learning_rate for t in trajectories], trajectories[0].epochs, weights, inputs, targets
  )
  write_atomically(paths[XLSX_NAME], wb.save)
  fig = plot_loss(trajectories)
  write_atomically(paths[PNG_NAME], lambda tmp: fig.savefig(tmp, format='png', dpi=120))
  return paths


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
  startup.define_flag()
  flags.DEFINE_integer(
    'epochs',
    toy.COURSE_EPOCHS,
    f'Rows per learning rate (epoch 0 = starting weights), 1 to {MAX_EPOCHS:,}: every row is '
    'checked with chex and becomes a row of live formulas in each sheet, so 10,000 rows of the '
    'six course learning rates already take ~2 min and ~1 GB (a sheet could hold 1,048,576).',
    lower_bound=1,
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
  flags.register_validator(
    'epochs',
    lambda n: n <= MAX_EPOCHS,
    f'--epochs must be at most {MAX_EPOCHS:,}: each row is checked and written as formulas in '
    'every sheet, and 10,000 rows of six learning rates already take ~2 min and ~1 GB',
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


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a bad value reported as one `error:` line."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    raise _error(str(e)) from None


def _main_check_workbook(path: str) -> int:
  try:
    reports = workbook.check_workbook(path)
  except Exception as e:  # openpyxl raises several types for files it cannot read.
    raise _error(f'cannot read {path} as an .xlsx workbook: {e}') from None
  if any(r.problem == workbook.NO_CACHED_VALUES for r in reports) and workbook.find_soffice():
    print(f'{path} has no cached values; recomputing it with LibreOffice first.')
    with tempfile.TemporaryDirectory() as tmp:
      (recomputed,) = workbook.recalculate_with_libreoffice([path], tmp)
      reports = workbook.check_workbook(recomputed)
  print(workbook.format_report(path, reports))
  return workbook.exit_status(reports)


def main(argv):
  if len(argv) > 1:
    raise _error(f'unexpected arguments: {" ".join(argv[1:])}')
  startup.quiet_start()
  startup.enable_compile_cache(FLAGS.compile_cache)
  if FLAGS.check_workbook:
    return _main_check_workbook(FLAGS.check_workbook)
  if FLAGS.cnn:
    try:
      return cnn_check.main(FLAGS)
    except UserError as e:
      raise _error(str(e)) from None

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
  cnn_check.define_flags()
  app.run(main, flags_parser=_parse_flags)
