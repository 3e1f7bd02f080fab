"""Regenerates every number, table and figure in docs/backprop.md and docs/model.md.

  python -m docs.make_docs                         # from the runs committed under docs/runs/gap
  python -m docs.make_docs --runs=workdirs/gap     # first copy in the finished seeds of a sweep

The Markdown text between `<!-- BEGIN generated:NAME -->` and `<!-- END generated:NAME -->` is
rewritten from the project's own code (nets/toy.py, backprop_check.py, nets/cnn.py,
configs/gap.py, scripts/seeds.py, analysis.py); the prose around it is left alone. Figures go
to docs/figures/. tests/docs_test.py regenerates the blocks and fails when the committed text
has drifted from the code.
"""

from __future__ import annotations

import dataclasses
import glob
import inspect
import json
import os
import re
import shutil
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Circle

import backprop_check as bc
import metrics
import plots
from configs import gap
from docs import cnn_worked
from nets import cnn, toy

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DOCS_DIR = os.path.join(REPO, 'docs')
COMMITTED_RUNS = os.path.join('runs', 'gap')  # Under the docs dir.
FIGURES = 'figures'  # Under the docs dir.

# The sheet shown row by row: η = 1, so each new weight is the old one minus its gradient.
SHEET_LEARNING_RATE = 1.0
SHEET_ROWS = 4
LOSS_THRESHOLD = 1e-3  # "Converged" for the epochs-to-threshold column of the sweep table.
# Rates past the course's, to show where gradient descent stops being monotone (and 30 rows
# are enough to see it).
LARGE_LEARNING_RATES = (2.0, 10.0, 35.0, 60.0, 80.0, 150.0)
LARGE_EPOCHS = 30

BEGIN = '<!-- BEGIN generated:{} -->'
END = '<!-- END generated:{} -->'
BLOCK_RE = re.compile(
  r'<!-- BEGIN generated:(?P<name>[\w-]+) -->\n(?P<body>.*?)<!-- END generated:(?P=name) -->',
  re.S,
)


def g(x: float, digits: int = 9) -> str:
  """A number as the docs print it: `digits` significant digits."""
  return f'{float(x):.{digits}g}'


# ---------------------------------------------------------------------------------------------
# Where things live in the code.


def code_anchor(obj: Callable, pattern: str) -> str:
  """A Markdown link to the first line of `obj`'s source containing `pattern`, e.g.
  [`nets/toy.py: forward` L82](../nets/toy.py#L82). Raises if the line is gone."""
  lines, start = inspect.getsourcelines(obj)
  path = os.path.relpath(inspect.getsourcefile(obj), REPO)
  for offset, line in enumerate(lines):
    if pattern in line:
      n = start + offset
      return f'[`{path}: {obj.__name__}` L{n}](../{path}#L{n})'
  raise LookupError(f'{pattern!r} not found in {path}: {obj.__name__}; update docs/make_docs.py')


# ---------------------------------------------------------------------------------------------
# Backprop: the numbers.


@dataclasses.dataclass(frozen=True)
class Start:
  """The course's starting point in float64: intermediates, gradients, chain-rule factors."""

  inputs: tuple[float, float]
  targets: tuple[float, float]
  weights: dict[str, float]
  forward: dict[str, float]
  hand: dict[str, float]
  autodiff: dict[str, float]


def course_start() -> Start:
  with jax.enable_x64(True):
    params = toy.course_params(jnp.float64)
    x, t = jnp.asarray(toy.COURSE_INPUTS), jnp.asarray(toy.COURSE_TARGETS)
    as_floats = lambda d: {k: float(v) for k, v in d.items()}  # noqa: E731
    return Start(
      toy.COURSE_INPUTS,
      toy.COURSE_TARGETS,
      dict(toy.COURSE_WEIGHTS),
      as_floats(toy.forward(params, x, t)),
      as_floats(toy.hand_gradients(params, x, t)),
      as_floats(toy.autodiff_gradients(params, x, t)),
    )


def chain_rows(s: Start) -> dict[str, list[tuple[str, str, float]]]:
  """The derivation's steps as (symbol, expression, value) rows, for the output and hidden layer.

  The values are recomputed here factor by factor; `check_chain` then holds the products to
  `toy.hand_gradients` and `jax.grad`, so the text can only quote numbers all three agree on.
  """
  f, w = s.forward, s.weights
  (i1, i2), (t1, t2) = s.inputs, s.targets
  d_ao1, d_ao2 = f['a_o1'] - t1, f['a_o2'] - t2
  s_o1, s_o2 = f['a_o1'] * (1 - f['a_o1']), f['a_o2'] * (1 - f['a_o2'])
  delta_o1, delta_o2 = d_ao1 * s_o1, d_ao2 * s_o2
  d_ah1, d_ah2 = delta_o1 * w['w5'] + delta_o2 * w['w7'], delta_o1 * w['w6'] + delta_o2 * w['w8']
  s_h1, s_h2 = f['a_h1'] * (1 - f['a_h1']), f['a_h2'] * (1 - f['a_h2'])
  delta_h1, delta_h2 = d_ah1 * s_h1, d_ah2 * s_h2
  output = [
    ('∂E_total/∂a_o1', 'a_o1 − t1', d_ao1),
    ('∂a_o1/∂o1', 'a_o1·(1 − a_o1)', s_o1),
    ('δ_o1 = ∂E_total/∂o1', '(a_o1 − t1)·a_o1·(1 − a_o1)', delta_o1),
    ('∂E_total/∂a_o2', 'a_o2 − t2', d_ao2),
    ('∂a_o2/∂o2', 'a_o2·(1 − a_o2)', s_o2),
    ('δ_o2 = ∂E_total/∂o2', '(a_o2 − t2)·a_o2·(1 − a_o2)', delta_o2),
    ('∂E_total/∂w5', 'δ_o1·a_h1', delta_o1 * f['a_h1']),
    ('∂E_total/∂w6', 'δ_o1·a_h2', delta_o1 * f['a_h2']),
    ('∂E_total/∂w7', 'δ_o2·a_h1', delta_o2 * f['a_h1']),
    ('∂E_total/∂w8', 'δ_o2·a_h2', delta_o2 * f['a_h2']),
  ]
  hidden = [
    ('∂E_total/∂a_h1', 'δ_o1·w5 + δ_o2·w7', d_ah1),
    ('∂a_h1/∂h1', 'a_h1·(1 − a_h1)', s_h1),
    ('δ_h1 = ∂E_total/∂h1', '(δ_o1·w5 + δ_o2·w7)·a_h1·(1 − a_h1)', delta_h1),
    ('∂E_total/∂a_h2', 'δ_o1·w6 + δ_o2·w8', d_ah2),
    ('∂a_h2/∂h2', 'a_h2·(1 − a_h2)', s_h2),
    ('δ_h2 = ∂E_total/∂h2', '(δ_o1·w6 + δ_o2·w8)·a_h2·(1 − a_h2)', delta_h2),
    ('∂E_total/∂w1', 'δ_h1·i1', delta_h1 * i1),
    ('∂E_total/∂w2', 'δ_h1·i2', delta_h1 * i2),
    ('∂E_total/∂w3', 'δ_h2·i1', delta_h2 * i1),
    ('∂E_total/∂w4', 'δ_h2·i2', delta_h2 * i2),
  ]
  return {'output': output, 'hidden': hidden}


def check_chain(s: Start, rows: dict[str, list[tuple[str, str, float]]]) -> None:
  """The chain-rule products equal hand_gradients and jax.grad (float64: a few roundings)."""
  for symbol, _, value in rows['output'] + rows['hidden']:
    m = re.fullmatch(r'∂E_total/∂(w\d)', symbol)
    if m:
      w = m.group(1)
      np.testing.assert_allclose(value, s.hand[w], rtol=1e-12, err_msg=f'{w}: chain vs hand')
      np.testing.assert_allclose(value, s.autodiff[w], rtol=1e-12, err_msg=f'{w}: chain vs grad')


def sharpness(weights: dict[str, float]) -> float:
  """The largest eigenvalue of the 8×8 Hessian of E_total at `weights` (jax.hessian, float64)."""
  with jax.enable_x64(True):
    x, t = jnp.asarray(toy.COURSE_INPUTS), jnp.asarray(toy.COURSE_TARGETS)

    def loss_of_vector(v):
      return toy.loss(dict(zip(toy.WEIGHT_NAMES, v, strict=True)), x, t)

    v = jnp.asarray([weights[w] for w in toy.WEIGHT_NAMES], jnp.float64)
    return float(np.linalg.eigvalsh(np.asarray(jax.hessian(loss_of_vector)(v)))[-1])


@dataclasses.dataclass(frozen=True)
class Backprop:
  """Everything backprop.md quotes, computed once."""

  start: Start
  chain: dict[str, list[tuple[str, str, float]]]
  sweep: list[bc.Trajectory]  # The course's six learning rates, 68 rows each.
  sheet: bc.Trajectory  # η = SHEET_LEARNING_RATE.
  large: list[bc.Trajectory]  # LARGE_LEARNING_RATES, LARGE_EPOCHS rows each.
  lambda_start: float


def compute_backprop() -> Backprop:
  start = course_start()
  chain = chain_rows(start)
  check_chain(start, chain)
  sweep = bc.run_sweep(toy.COURSE_LEARNING_RATES)  # Asserts jax.grad == hand at every row.
  sheet = next(t for t in sweep if t.learning_rate == SHEET_LEARNING_RATE)
  large = bc.run_sweep(LARGE_LEARNING_RATES, epochs=LARGE_EPOCHS)
  return Backprop(start, chain, sweep, sheet, large, sharpness(start.weights))


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str = '') -> str:
  align = align or '-' * len(header)
  sep = ['---:' if a == 'r' else '---' for a in align]
  lines = ['| ' + ' | '.join(header) + ' |', '| ' + ' | '.join(sep) + ' |']
  lines += ['| ' + ' | '.join(r) + ' |' for r in rows]
  return '\n'.join(lines)


FORWARD_CODE = {  # Quantity -> the text of its line in toy.forward.
  'h1': "h1 = p['w1']",
  'a_h1': 'a_h1, a_h2 = jax.nn.sigmoid',
  'h2': "h2 = p['w3']",
  'a_h2': 'a_h1, a_h2 = jax.nn.sigmoid',
  'o1': "o1 = p['w5']",
  'a_o1': 'a_o1, a_o2 = jax.nn.sigmoid',
  'o2': "o2 = p['w7']",
  'a_o2': 'a_o1, a_o2 = jax.nn.sigmoid',
  'E1': 'e1 = 0.5',
  'E2': 'e2 = 0.5',
  'E_total': "'E_total': e1 + e2",
}
CHAIN_CODE = {  # Derivation step -> the text of its line in toy.hand_gradients.
  'δ_o1': 'delta_o1 =',
  'δ_o2': 'delta_o2 =',
  'δ_h1': 'delta_h1 =',
  'δ_h2': 'delta_h2 =',
  **{f'∂E_total/∂{w}': f"'{w}': delta" for w in toy.WEIGHT_NAMES},
}


def block_start(b: Backprop) -> str:
  s = b.start
  (i1, i2), (t1, t2) = s.inputs, s.targets
  weights = ', '.join(f'{w} = {g(v)}' for w, v in s.weights.items())
  return (
    f'Inputs i1 = {g(i1)}, i2 = {g(i2)}; targets t1 = {g(t1)}, t2 = {g(t2)}; starting weights '
    f'{weights} (`nets/toy.py`: `COURSE_INPUTS`, `COURSE_TARGETS`, `COURSE_WEIGHTS`).\n\n'
    '![The 2-2-2 network with its starting weights](figures/network.png)\n'
  )


def block_forward(b: Backprop) -> str:
  rows = [
    (f'`{k}`', toy.FORMULAS[k], g(b.start.forward[k]), code_anchor(toy.forward, FORWARD_CODE[k]))
    for k in toy.INTERMEDIATE_NAMES
  ]
  return (
    _table(('quantity', 'formula (`toy.FORMULAS`)', 'value at epoch 0', 'code'), rows, 'llrl')
    + f'\n\nStarting error: **E_total = {g(b.start.forward["E_total"])}**.\n'
  )


def _chain_block(b: Backprop, layer: str) -> str:
  rows = []
  for symbol, expression, value in b.chain[layer]:
    key = symbol.split(' = ')[0]
    anchor = code_anchor(toy.hand_gradients, CHAIN_CODE[key]) if key in CHAIN_CODE else ''
    rows.append((symbol, expression, g(value), anchor))
  return _table(('step', 'expression', 'value at epoch 0', 'code'), rows, 'llrl') + '\n'


def block_output_grads(b: Backprop) -> str:
  return _chain_block(b, 'output')


def block_hidden_grads(b: Backprop) -> str:
  return (
    _chain_block(b, 'hidden')
    + '\nEach ∂E_total/∂w in the two tables, multiplied out factor by factor as above, equals '
    '`toy.hand_gradients` and `jax.grad(toy.loss)` to rtol 1e-12: the generator checks it '
    'before writing a number.\n'
  )


def block_update(b: Backprop) -> str:
  s, lr = b.start, SHEET_LEARNING_RATE
  new = {w: s.weights[w] - lr * s.hand[w] for w in toy.WEIGHT_NAMES}
  sheet_new = {w: float(b.sheet.columns[w][1]) for w in toy.WEIGHT_NAMES}
  np.testing.assert_allclose(list(new.values()), list(sheet_new.values()), rtol=1e-15)
  # The slip the simultaneous update avoids: w1's gradient taken after w5..w8 already moved.
  with jax.enable_x64(True):
    mixed = {w: jnp.float64(new[w] if w in ('w5', 'w6', 'w7', 'w8') else s.weights[w]) for w in new}
    x, t = jnp.asarray(s.inputs), jnp.asarray(s.targets)
    sequential_w1 = float(toy.hand_gradients(mixed, x, t)['w1'])
  lines = [
    f'With η = {g(lr)}, epoch 1 of the sheet starts from',
    '',
    *[
      f'- {w} = {g(s.weights[w])} − {g(lr)}·({g(s.hand[w])}) = **{g(new[w])}**'
      for w in toy.WEIGHT_NAMES
    ],
    '',
    f'Had w5..w8 been updated first and then used for ∂E_total/∂w1, it would have come out as '
    f'{g(sequential_w1)} instead of {g(s.hand["w1"])}: a different (and wrong) number.',
  ]
  return '\n'.join(lines) + '\n'


def block_first_rows(b: Backprop) -> str:
  t = b.sheet
  weights = [
    (str(e), *(g(t.columns[w][e], 7) for w in toy.WEIGHT_NAMES), g(t.columns['E_total'][e], 7))
    for e in range(SHEET_ROWS)
  ]
  grads = [
    (str(e), *(g(t.columns[f'dE_d{w}'][e], 6) for w in toy.WEIGHT_NAMES)) for e in range(SHEET_ROWS)
  ]
  return (
    f'η = {g(t.learning_rate)}, epochs 0–{SHEET_ROWS - 1} (the weights are those used in the row, '
    'before its update):\n\n'
    + _table(('epoch', *toy.WEIGHT_NAMES, 'E_total'), weights, 'r' * 10)
    + '\n\n'
    + _table(('epoch', *(f'∂E/∂{w}' for w in toy.WEIGHT_NAMES)), grads, 'r' * 9)
    + '\n'
  )


def small(x: float, digits: int = 4) -> str:
  """Like `g`, but an error below 1e-20 (where float64 rounding sets the digits) as '< 1e-20'."""
  return '< 1e-20' if abs(x) < 1e-20 else g(x, digits)


def _epochs_to(t: bc.Trajectory, threshold: float) -> str:
  below = np.flatnonzero(t.columns['E_total'] < threshold)
  return str(int(below[0])) if below.size else f'> {t.epochs - 1}'


def block_sweep(b: Backprop) -> str:
  lam = b.lambda_start
  rows = []
  for t in b.sweep:
    e = t.columns['E_total']
    rows.append(
      (
        g(t.learning_rate),
        g(e[-1], 6),
        _epochs_to(t, LOSS_THRESHOLD),
        g(e[1] / e[0], 4),
        g((1 - t.learning_rate * lam) ** 2, 4),
      )
    )
  last = b.sweep[0].epochs - 1
  return (
    _table(
      (
        'η',
        f'E_total at epoch {last}',
        f'first epoch with E_total < {LOSS_THRESHOLD:g}',
        'E_total(1) / E_total(0)',
        '(1 − η·λ_max)²',
      ),
      rows,
      'rrrrr',
    )
    + '\n\n'
    + f'λ_max, the largest eigenvalue of the Hessian of E_total at the starting weights, is '
    f'**{g(lam, 4)}**, so 1/λ_max = {g(1 / lam, 4)} and 2/λ_max = {g(2 / lam, 4)}.\n'
  )


def block_large(b: Backprop) -> str:
  lam = b.lambda_start
  e0 = float(b.large[0].columns['E_total'][0])
  rows = []
  for t in b.large:
    e = t.columns['E_total']
    rose = int(np.sum(np.diff(e) > 0))
    lam_end = sharpness({w: float(t.columns[w][-1]) for w in toy.WEIGHT_NAMES})
    rows.append(
      (
        g(t.learning_rate),
        g(t.learning_rate * lam, 3),
        small(e[1]),
        small(e.max()),
        str(rose),
        small(e[-1]),
        g(t.learning_rate * lam_end, 3),
      )
    )
  return (
    f'Same network and starting point (E_total(0) = {g(e0, 6)}), {LARGE_EPOCHS} rows each:\n\n'
    + _table(
      (
        'η',
        'η·λ_max',
        'E_total(1)',
        'largest E_total',
        'epochs where E_total rose',
        f'E_total({LARGE_EPOCHS - 1})',
        f'η·λ_max at epoch {LARGE_EPOCHS - 1}',
      ),
      rows,
      'rrrrrrr',
    )
    + '\n\n![E_total against epoch for larger learning rates](figures/large_lr.png)\n'
  )


BACKPROP_BLOCKS: dict[str, Callable[[Backprop], str]] = {
  'bp-start': block_start,
  'bp-forward': block_forward,
  'bp-output-grads': block_output_grads,
  'bp-hidden-grads': block_hidden_grads,
  'bp-update': block_update,
  'bp-first-rows': block_first_rows,
  'bp-sweep': block_sweep,
  'bp-large': block_large,
}


# ---------------------------------------------------------------------------------------------
# Backprop: the figures.

# Where each neuron is drawn (x, y): inputs left, hidden middle, outputs right.
NEURON_XY = {
  'i1': (0.0, 1.0),
  'i2': (0.0, 0.0),
  'h1': (1.0, 1.0),
  'h2': (1.0, 0.0),
  'o1': (2.0, 1.0),
  'o2': (2.0, 0.0),
}
EDGES = {  # weight -> (from, to), as in the course: h1 = w1·i1 + w2·i2, o1 = w5·a_h1 + w6·a_h2.
  'w1': ('i1', 'h1'),
  'w2': ('i2', 'h1'),
  'w3': ('i1', 'h2'),
  'w4': ('i2', 'h2'),
  'w5': ('h1', 'o1'),
  'w6': ('h2', 'o1'),
  'w7': ('h1', 'o2'),
  'w8': ('h2', 'o2'),
}


def draw_network(start: Start) -> Figure:
  """The 2-2-2 net: neurons with their epoch-0 activations, edges labelled `wN = value`."""
  fig = Figure(figsize=(8, 4.6))
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  radius = 0.17
  for w, (src, dst) in EDGES.items():
    (x0, y0), (x1, y1) = NEURON_XY[src], NEURON_XY[dst]
    ax.annotate(
      '',
      xy=(x1 - radius * 1.05 * (x1 - x0) / np.hypot(x1 - x0, y1 - y0), y1 - radius * (y1 - y0)),
      xytext=(x0, y0),
      arrowprops=dict(arrowstyle='->', color='0.35', lw=1.2, shrinkA=14, shrinkB=0),
    )
    # Straight edges are labelled midway; crossing ones near their source, where they are apart.
    frac = 0.5 if y0 == y1 else 0.27
    lx, ly = x0 + frac * (x1 - x0), y0 + frac * (y1 - y0)
    ax.text(
      lx,
      ly,
      f'{w} = {g(start.weights[w])}',
      ha='center',
      va='center',
      fontsize=9,
      gid='weight',
      bbox=dict(boxstyle='round,pad=0.2', fc='lightyellow', ec='0.6'),
    )
  f = start.forward
  captions = {
    'i1': f'i1 = {g(start.inputs[0])}',
    'i2': f'i2 = {g(start.inputs[1])}',
    'h1': f'a_h1 = {g(f["a_h1"], 6)}',
    'h2': f'a_h2 = {g(f["a_h2"], 6)}',
    'o1': f't1 = {g(start.targets[0])}\na_o1 = {g(f["a_o1"], 6)}',
    'o2': f'a_o2 = {g(f["a_o2"], 6)}\nt2 = {g(start.targets[1])}',
  }
  for name, (x, y) in NEURON_XY.items():
    color = {'i': '#cfe2f3', 'h': '#d9ead3', 'o': '#f4cccc'}[name[0]]
    ax.add_patch(Circle((x, y), radius, fc=color, ec='0.2', lw=1.2, zorder=3))
    label = name if name[0] == 'i' else f'{name} | σ'
    ax.text(x, y, label, ha='center', va='center', fontsize=10, zorder=4, gid='neuron')
    # Captions outside the net (above the top row, below the bottom one), clear of the edges.
    above = y > 0.5
    ax.text(
      x,
      y + (radius + 0.05 if above else -radius - 0.05),
      captions[name],
      ha='center',
      va='bottom' if above else 'top',
      fontsize=8.5,
    )
  ax.text(
    2.45,
    0.5,
    f'E_total = E1 + E2\n= {g(f["E_total"], 6)}',
    ha='left',
    va='center',
    fontsize=9,
  )
  ax.set(xlim=(-0.4, 3.1), ylim=(-0.5, 1.55), aspect='equal')
  ax.axis('off')
  ax.set_title('The 2-2-2 sigmoid network at epoch 0 (no biases)')
  fig.tight_layout()
  return fig


def weight_labels(fig: Figure) -> dict[str, float]:
  """The `wN = value` labels drawn by `draw_network`, parsed back."""
  out = {}
  for t in fig.axes[0].texts:
    if t.get_gid() == 'weight':
      name, value = t.get_text().split(' = ')
      out[name] = float(value)
  return out


def save_figure(fig: Figure, path: str, dpi: int = 110) -> None:
  metrics.write_atomically(path, lambda tmp: fig.savefig(tmp, format='png', dpi=dpi))


def write_backprop_figures(b: Backprop, docs_dir: str) -> dict[str, Figure]:
  figs = {
    'network.png': draw_network(b.start),
    'loss_vs_epoch.png': bc.plot_loss(b.sweep),
    'large_lr.png': bc.plot_loss(b.large),
  }
  os.makedirs(os.path.join(docs_dir, FIGURES), exist_ok=True)
  for name, fig in figs.items():
    save_figure(fig, os.path.join(docs_dir, FIGURES, name))
  return figs


# ---------------------------------------------------------------------------------------------
# The CNN.


def config_fields(path: str = os.path.join(REPO, 'configs', 'gap.py')) -> list[tuple[str, str]]:
  """(field, inline comment) for each `c.field = value  # comment` line of a config file."""
  with open(path) as f:
    return re.findall(r'^\s*c\.(\w+) = .*?#\s*(.*)$', f.read(), re.M)


def block_layers(_=None) -> str:
  arch = gap.get_config().arch
  return cnn.format_summary(cnn.summary(cnn.build(arch))) + '\n'


def _variant_params(layers: Sequence[cnn.Layer]) -> int:
  return cnn.param_count(cnn.CNN(layers=tuple(layers)))


def _conv_macs(rows: Sequence[dict], layers: Sequence[cnn.Layer]) -> int:
  """Multiply-adds of the conv layers per image: output pixels × (weights − BatchNorm's 2/ch)."""
  return sum(
    r['output'][0] * r['output'][1] * (r['params'] - 2 * lay.features)
    for lay, r in zip(layers, rows, strict=True)
    if lay.kind == 'conv'
  )


def block_budget(_=None) -> str:
  """What the design choices cost or save, computed on variants of the default architecture."""
  arch = gap.get_config().arch
  layers = cnn.ARCHITECTURES[arch]
  model = cnn.build(arch)
  total = cnn.param_count(model)
  rows = cnn.summary(model)
  conv_rows = [(lay, r) for lay, r in zip(layers, rows, strict=True) if lay.kind == 'conv']
  bn = sum(2 * lay.features for lay, _ in conv_rows)  # BatchNorm: scale and shift per channel.
  one_by_one = sum(r['params'] for lay, r in conv_rows if lay.kernel == 1)
  three = [lay if lay.kernel != 1 else cnn.conv(lay.features, 3) for lay in layers]
  no_transition = [lay for lay in layers if not (lay.kind == 'conv' and lay.kernel == 1)]
  gap_index = next(i for i, lay in enumerate(layers) if lay.kind == 'gap')
  before_gap = rows[gap_index - 1]['output']
  flat = int(np.prod(before_gap))
  head = rows[-1]['params']
  flatten_head = flat * cnn.HEAD.features + cnn.HEAD.features
  no_pool = [lay for lay in layers if lay.kind != 'pool']
  no_pool_rows = cnn.summary(cnn.CNN(layers=tuple(no_pool)))
  n_pools, n_1x1 = len(layers) - len(no_pool), len(layers) - len(no_transition)
  before_gap_no_pool = no_pool_rows[gap_index - n_pools - 1]  # The pools all come before GAP.
  table = _table(
    ('variant of the default network', 'parameters', 'vs default'),
    [
      ('default', f'{total:,}', ''),
      (
        '1×1 transitions made 3×3',
        f'{_variant_params(three):,}',
        f'{_variant_params(three) - total:+,}',
      ),
      (
        'no 1×1 transitions (32 channels feed the next 3×3)',
        f'{_variant_params(no_transition):,}',
        f'{_variant_params(no_transition) - total:+,}',
      ),
      (
        f'flatten the {"x".join(map(str, before_gap))} map into the classifier instead of GAP',
        f'{total - head + flatten_head:,}',
        f'{flatten_head - head:+,}',
      ),
    ],
    'lrr',
  )
  return (
    table + '\n\n' + f'Of the {total:,} parameters, the BatchNorm scales and shifts are {bn:,} '
    f'({100 * bn / total:.1f} %), the {n_1x1} transition convs (1×1) {one_by_one:,} '
    f'({100 * one_by_one / total:.1f} %) and the GAP classifier {head:,}. Without its {n_pools} '
    f'max-pools the map before GAP would be {"x".join(map(str, before_gap_no_pool["output"]))} '
    f'and the receptive field of the last conv {before_gap_no_pool["receptive_field"]} pixels '
    f'instead of {rows[gap_index - 1]["receptive_field"]}, for the same '
    f'{_variant_params(no_pool):,} parameters but '
    f'{_conv_macs(no_pool_rows, no_pool) / _conv_macs(rows, layers):.1f}× the multiply-adds per '
    'image.\n'
  )


def block_recipe(_=None) -> str:
  config = gap.get_config()
  rows = [
    (f'`{name}`', f'`{config[name]!r}`', comment)
    for name, comment in config_fields()
    if name not in ('data_dir', 'data_url', 'download_dir')
  ]
  return _table(('field', 'default', 'meaning (from the comment in `configs/gap.py`)'), rows) + '\n'


def finished_runs(root: str) -> dict[int, str]:
  """seed -> run directory, for every ROOT/seed<N> that has a summary.json."""
  runs = {}
  for path in glob.glob(os.path.join(root, 'seed*', 'summary.json')):
    run_dir = os.path.dirname(path)
    m = re.fullmatch(r'seed(\d+)', os.path.basename(run_dir))
    if m:
      runs[int(m.group(1))] = run_dir
  return dict(sorted(runs.items()))


def import_runs(src_root: str, docs_dir: str) -> list[int]:
  """Copies summary.json, metrics.jsonl and the PNGs of each finished seed into the docs dir."""
  dst_root = os.path.join(docs_dir, COMMITTED_RUNS)
  if os.path.abspath(src_root) == os.path.abspath(dst_root):
    return []
  copied = []
  for seed, run_dir in finished_runs(src_root).items():
    dst = os.path.join(dst_root, f'seed{seed}')
    os.makedirs(dst, exist_ok=True)
    for name in ('summary.json', 'metrics.jsonl', 'misclassified.png'):
      if os.path.exists(os.path.join(run_dir, name)):
        shutil.copyfile(os.path.join(run_dir, name), os.path.join(dst, name))
    copied.append(seed)
  return copied


def load_runs(docs_dir: str) -> dict[int, dict]:
  """seed -> {'summary': ..., 'history': [...], 'dir': ...} from the committed copies."""
  return load_runs_from(os.path.join(docs_dir, COMMITTED_RUNS))


def load_runs_from(root: str) -> dict[int, dict]:
  """seed -> {'summary': ..., 'history': [...], 'dir': ...} of ROOT/seed<N>."""
  runs = {}
  for seed, run_dir in finished_runs(root).items():
    with open(os.path.join(run_dir, 'summary.json')) as f:
      summary = json.load(f)
    with open(os.path.join(run_dir, 'metrics.jsonl')) as f:
      history = [json.loads(line) for line in f if line.strip()]
    runs[seed] = {'summary': summary, 'history': history, 'dir': run_dir}
  return runs


def figure_seed(runs: dict[int, dict]) -> int | None:
  """The seed whose final accuracy is the median (ties ordered by seed): typical, not best."""
  if not runs:
    return None
  order = sorted(runs, key=lambda s: (runs[s]['summary']['final_test_accuracy'], s))
  return order[(len(order) - 1) // 2]


def block_seeds(runs: dict[int, dict]) -> str:
  if not runs:
    return 'No finished runs yet.\n'
  summaries = [r['summary'] for r in runs.values()]
  return (
    '\n'.join([metrics.HEADER, *map(metrics.row, summaries)])
    + f'\n\n{len(summaries)} finished run(s), seeds {", ".join(map(str, runs))}: '
    f'{metrics.footer(summaries)}.\n'
  )


def block_run_figures(runs: dict[int, dict]) -> str:
  seed = figure_seed(runs)
  if seed is None:
    return 'No finished runs yet.\n'
  s = runs[seed]['summary']
  h = runs[seed]['history']
  return (
    f'Seed {seed}, the run with the median final accuracy '
    f'({100 * s["final_test_accuracy"]:.2f} %, {s["epochs"]} epochs of {h[0]["step"]} steps; '
    f'best {100 * s["best_test_accuracy"]:.2f} % at epoch {s["best_epoch"]}).\n\n'
    f'![Loss and accuracy per epoch, seed {seed}](figures/curves.png)\n\n'
    + (
      'The test digits it gets wrong, titled label→prediction (the first 64 shown):\n\n'
      f'![Misclassified test digits, seed {seed}]({COMMITTED_RUNS}/seed{seed}/misclassified.png)\n'
      if os.path.exists(os.path.join(runs[seed]['dir'], 'misclassified.png'))
      else ''
    )
  )


def frontier_configs(docs_dir: str) -> list[dict]:
  """Per committed config under docs_dir/runs: its name, parameters and every seed's final
  test accuracy (%)."""
  configs = []
  for run_root in sorted(glob.glob(os.path.join(docs_dir, 'runs', '*'))):
    summaries = [r['summary'] for r in load_runs_from(run_root).values()]
    if summaries:
      finals = [100 * s['final_test_accuracy'] for s in summaries]
      name = os.path.basename(run_root)
      configs.append({'name': name, 'params': summaries[0]['params'], 'finals': finals})
  return configs


def write_run_figures(runs: dict[int, dict], docs_dir: str) -> list[str]:
  """curves.png, redrawn from the committed metrics.jsonl of the figure seed.

  (Its misclassified.png needs the trained weights and the test set, so the page links the
  run's own copy under runs/ instead.)
  """

  seed = figure_seed(runs)
  if seed is None:
    return []
  fig_dir = os.path.join(docs_dir, FIGURES)
  os.makedirs(fig_dir, exist_ok=True)
  plots.plot_curves(runs[seed]['history'], os.path.join(fig_dir, 'curves.png'))
  plots.plot_frontier(frontier_configs(docs_dir), os.path.join(fig_dir, 'frontier.png'))
  return ['curves.png', 'frontier.png']


MODEL_BLOCKS: dict[str, Callable[[dict[int, dict]], str]] = {
  'model-layers': block_layers,
  'model-budget': block_budget,
  'model-recipe': block_recipe,
  'model-seeds': block_seeds,
  'model-run-figures': block_run_figures,
}


# ---------------------------------------------------------------------------------------------
# Blocks in the Markdown.


def read_blocks(text: str) -> dict[str, str]:
  """name -> body of every generated block in `text`."""
  return {m.group('name'): m.group('body') for m in BLOCK_RE.finditer(text)}


def fill_blocks(text: str, blocks: dict[str, str], doc: str = 'the document') -> str:
  """`text` with each block's body replaced; every block must be there, and no other."""
  found = set(read_blocks(text))
  if found != set(blocks):
    raise ValueError(
      f"{doc}: generated blocks {sorted(found)} do not match the generator's {sorted(blocks)}"
    )
  return BLOCK_RE.sub(
    lambda m: f'{BEGIN.format(m["name"])}\n{blocks[m["name"]]}{END.format(m["name"])}', text
  )


def backprop_blocks(b: Backprop | None = None) -> dict[str, str]:
  b = b or compute_backprop()
  return {name: fn(b) for name, fn in BACKPROP_BLOCKS.items()}


def model_blocks(runs: dict[int, dict]) -> dict[str, str]:
  return {name: fn(runs) for name, fn in MODEL_BLOCKS.items()}


def cnn_backprop_blocks(w: cnn_worked.Worked | None = None) -> dict[str, str]:
  return {'cnn-worked': cnn_worked.markdown(w)}


def update_doc(path: str, blocks: dict[str, str]) -> bool:
  """Rewrites the blocks of the Markdown file at `path`; returns whether anything changed."""
  with open(path) as f:
    old = f.read()
  new = fill_blocks(old, blocks, path)
  if new != old:

    def write(tmp):
      with open(tmp, 'w') as f:
        f.write(new)

    metrics.write_atomically(path, write)
  return new != old


def regenerate(docs_dir: str = DOCS_DIR, runs: str | None = None) -> dict[str, bool]:
  """Rewrites the generated blocks and figures under docs_dir, after copying in `runs` if given.

  Returns, for each page, whether its text changed.
  """
  if runs:
    copied = import_runs(runs, docs_dir)
    print(f'copied seeds {copied} from {runs}')
  b, worked = compute_backprop(), cnn_worked.compute()
  run_records, changed = load_runs(docs_dir), {}
  for name, blocks in (
    ('backprop.md', backprop_blocks(b)),
    ('model.md', model_blocks(run_records)),
    ('cnn_backprop.md', cnn_backprop_blocks(worked)),
  ):
    path = os.path.join(docs_dir, name)
    changed[name] = update_doc(path, blocks)
    print(f'{path}: {"updated" if changed[name] else "unchanged"}')
  figures = [*write_backprop_figures(b, docs_dir), *write_run_figures(run_records, docs_dir)]
  save_figure(cnn_worked.figure(worked), os.path.join(docs_dir, FIGURES, 'cnn_worked.png'))
  figures.append('cnn_worked.png')
  print(f'figures in {os.path.join(docs_dir, FIGURES)}: {", ".join(figures)}')
  return changed


FLAGS = flags.FLAGS


def _define_flags():
  """Defines the flags; called only when run as a script, so that importing this module (as
  tests/docs_test.py does) defines none."""
  flags.DEFINE_string(
    'runs',
    None,
    'A scripts/seeds.py root (ROOT/seed<N>/summary.json); its finished seeds are copied '
    'to DOCS/runs/gap first. Default: use only what is already there.',
  )
  flags.DEFINE_string('docs_dir', DOCS_DIR, 'Folder with backprop.md, model.md.')
  flags.register_validator(
    'runs', lambda runs: runs is None or os.path.isdir(runs), '--runs must name a directory'
  )


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  if not FLAGS['verbosity'].present:  # Library INFO logs (JAX, orbax) only on --verbosity=0.
    logging.set_verbosity(logging.WARNING)
  regenerate(FLAGS.docs_dir, FLAGS.runs)
  return 0


if __name__ == '__main__':
  _define_flags()
  app.run(main)
