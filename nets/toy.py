"""The course's 2-2-2 sigmoid network as pure JAX functions, with its gradients derived by hand.

  h1 = w1·i1 + w2·i2    a_h1 = σ(h1)      o1 = w5·a_h1 + w6·a_h2    a_o1 = σ(o1)
  h2 = w3·i1 + w4·i2    a_h2 = σ(h2)      o2 = w7·a_h1 + w8·a_h2    a_o2 = σ(o2)
  E1 = ½(t1 − a_o1)²    E2 = ½(t2 − a_o2)²    E_total = E1 + E2

No biases; σ is the logistic function. Parameters are a flat dict of eight scalars
`{'w1': ..., 'w8': ...}`: the names are the course's, so a chex tree assertion that fails says
which weight is wrong, and the same dict is what `hand_gradients` and `jax.grad(loss)` return.
Inputs and targets are arrays of shape (2,): `[i1, i2]` and `[t1, t2]`.
"""

from collections.abc import Mapping

import jax
import jax.numpy as jnp

Params = Mapping[str, jax.Array]

WEIGHT_NAMES = ('w1', 'w2', 'w3', 'w4', 'w5', 'w6', 'w7', 'w8')
INTERMEDIATE_NAMES = (
  'h1',
  'a_h1',
  'h2',
  'a_h2',
  'o1',
  'a_o1',
  'o2',
  'a_o2',
  'E1',
  'E2',
  'E_total',
)
GRADIENT_NAMES = tuple(f'dE_d{w}' for w in WEIGHT_NAMES)

# The course's starting values.
COURSE_INPUTS = (0.05, 0.1)  # i1, i2
COURSE_TARGETS = (0.5, 0.5)  # t1, t2
COURSE_WEIGHTS = dict(zip(WEIGHT_NAMES, (0.15, 0.2, 0.25, 0.3, 0.4, 0.45, 0.5, 0.55), strict=True))
COURSE_E_TOTAL = 0.014181377937891659  # E_total at the starting weights (float64).
COURSE_LEARNING_RATES = (0.1, 0.2, 0.5, 0.8, 1.0, 2.0)
COURSE_EPOCHS = 68  # Rows per learning rate: epoch 0 (starting weights), then 67 updates.

# Each quantity as the course writes it, in terms of the quantities before it. The spreadsheet
# writer turns these into cell formulas and `--check_workbook` quotes them when a column is wrong.
FORMULAS = {
  'h1': 'w1·i1 + w2·i2',
  'a_h1': 'σ(h1) = 1/(1 + exp(−h1))',
  'h2': 'w3·i1 + w4·i2',
  'a_h2': 'σ(h2) = 1/(1 + exp(−h2))',
  'o1': 'w5·a_h1 + w6·a_h2',
  'a_o1': 'σ(o1) = 1/(1 + exp(−o1))',
  'o2': 'w7·a_h1 + w8·a_h2',
  'a_o2': 'σ(o2) = 1/(1 + exp(−o2))',
  'E1': '½·(t1 − a_o1)²',
  'E2': '½·(t2 − a_o2)²',
  'E_total': 'E1 + E2',
  'dE_dw1': '[(a_o1 − t1)·a_o1·(1 − a_o1)·w5 + (a_o2 − t2)·a_o2·(1 − a_o2)·w7]·a_h1·(1 − a_h1)·i1',
  'dE_dw2': '[(a_o1 − t1)·a_o1·(1 − a_o1)·w5 + (a_o2 − t2)·a_o2·(1 − a_o2)·w7]·a_h1·(1 − a_h1)·i2',
  'dE_dw3': '[(a_o1 − t1)·a_o1·(1 − a_o1)·w6 + (a_o2 − t2)·a_o2·(1 − a_o2)·w8]·a_h2·(1 − a_h2)·i1',
  'dE_dw4': '[(a_o1 − t1)·a_o1·(1 − a_o1)·w6 + (a_o2 − t2)·a_o2·(1 − a_o2)·w8]·a_h2·(1 − a_h2)·i2',
  'dE_dw5': '(a_o1 − t1)·a_o1·(1 − a_o1)·a_h1',
  'dE_dw6': '(a_o1 − t1)·a_o1·(1 − a_o1)·a_h2',
  'dE_dw7': '(a_o2 − t2)·a_o2·(1 − a_o2)·a_h1',
  'dE_dw8': '(a_o2 − t2)·a_o2·(1 − a_o2)·a_h2',
}
UPDATE_FORMULA = 'w ← w − η·∂E_total/∂w (previous row, all eight weights at once)'


def course_params(dtype=jnp.float32) -> dict[str, jax.Array]:
  """The course's starting weights as a params dict of scalars."""
  return {k: jnp.asarray(v, dtype) for k, v in COURSE_WEIGHTS.items()}


def forward(params: Params, inputs: jax.Array, targets: jax.Array) -> dict[str, jax.Array]:
  """Every named intermediate of the forward pass, keyed as in INTERMEDIATE_NAMES."""
  p = params
  i1, i2 = inputs[0], inputs[1]
  t1, t2 = targets[0], targets[1]
  # jax.nn.sigmoid is lax.logistic: it never overflows exp() for large |x|, and its derivative
  # (used by jax.grad) is a·(1 − a), the same expression the hand gradients use.
  h1 = p['w1'] * i1 + p['w2'] * i2
  h2 = p['w3'] * i1 + p['w4'] * i2
  a_h1, a_h2 = jax.nn.sigmoid(h1), jax.nn.sigmoid(h2)
  o1 = p['w5'] * a_h1 + p['w6'] * a_h2
  o2 = p['w7'] * a_h1 + p['w8'] * a_h2
  a_o1, a_o2 = jax.nn.sigmoid(o1), jax.nn.sigmoid(o2)
  e1 = 0.5 * (t1 - a_o1) ** 2
  e2 = 0.5 * (t2 - a_o2) ** 2
  return {
    'h1': h1,
    'a_h1': a_h1,
    'h2': h2,
    'a_h2': a_h2,
    'o1': o1,
    'a_o1': a_o1,
    'o2': o2,
    'a_o2': a_o2,
    'E1': e1,
    'E2': e2,
    'E_total': e1 + e2,
  }


def loss(params: Params, inputs: jax.Array, targets: jax.Array) -> jax.Array:
  """E_total = ½(t1 − a_o1)² + ½(t2 − a_o2)²."""
  return forward(params, inputs, targets)['E_total']


def hand_gradients(params: Params, inputs: jax.Array, targets: jax.Array) -> dict[str, jax.Array]:
  """∂E_total/∂w1..∂w8 by the chain rule, written out by hand (no jax autodiff).

  Derivation. Two facts do all the work:
    σ'(x) = σ(x)·(1 − σ(x)), so ∂a/∂x = a·(1 − a) for every sigmoid unit;
    ∂E_total/∂a_o1 = ∂E1/∂a_o1 = −(t1 − a_o1) = a_o1 − t1 (E2 does not depend on a_o1).

  Output layer (w5..w8). Define the output deltas
    δ_o1 = ∂E_total/∂o1 = ∂E_total/∂a_o1 · ∂a_o1/∂o1 = (a_o1 − t1)·a_o1·(1 − a_o1),
    δ_o2 = ∂E_total/∂o2 = (a_o2 − t2)·a_o2·(1 − a_o2).
  o1 = w5·a_h1 + w6·a_h2, so ∂o1/∂w5 = a_h1 and ∂o1/∂w6 = a_h2; w5, w6 reach E only through o1:
    ∂E/∂w5 = δ_o1·a_h1,  ∂E/∂w6 = δ_o1·a_h2,  and through o2:  ∂E/∂w7 = δ_o2·a_h1,
    ∂E/∂w8 = δ_o2·a_h2.

  Hidden layer (w1..w4). a_h1 reaches E through both outputs (o1 via w5, o2 via w7), so the two
  paths add:  ∂E/∂a_h1 = δ_o1·w5 + δ_o2·w7,  and likewise  ∂E/∂a_h2 = δ_o1·w6 + δ_o2·w8.
  Then  δ_h1 = ∂E/∂h1 = (δ_o1·w5 + δ_o2·w7)·a_h1·(1 − a_h1)  and
        δ_h2 = ∂E/∂h2 = (δ_o1·w6 + δ_o2·w8)·a_h2·(1 − a_h2).
  h1 = w1·i1 + w2·i2 and h2 = w3·i1 + w4·i2, so
    ∂E/∂w1 = δ_h1·i1,  ∂E/∂w2 = δ_h1·i2,  ∂E/∂w3 = δ_h2·i1,  ∂E/∂w4 = δ_h2·i2.
  Note the factor a_h2·(1 − a_h2) in ∂E/∂w3 and ∂E/∂w4: writing a_h1·(1 − a_h1) there is the
  classic slip that `backprop_check.py --check_workbook` is built to find.

  Returns:
    A dict with the same keys (w1..w8) as `params`.
  """
  p = params
  f = forward(params, inputs, targets)
  i1, i2 = inputs[0], inputs[1]
  t1, t2 = targets[0], targets[1]
  a_h1, a_h2, a_o1, a_o2 = f['a_h1'], f['a_h2'], f['a_o1'], f['a_o2']
  delta_o1 = (a_o1 - t1) * a_o1 * (1 - a_o1)
  delta_o2 = (a_o2 - t2) * a_o2 * (1 - a_o2)
  delta_h1 = (delta_o1 * p['w5'] + delta_o2 * p['w7']) * a_h1 * (1 - a_h1)
  delta_h2 = (delta_o1 * p['w6'] + delta_o2 * p['w8']) * a_h2 * (1 - a_h2)
  return {
    'w1': delta_h1 * i1,
    'w2': delta_h1 * i2,
    'w3': delta_h2 * i1,
    'w4': delta_h2 * i2,
    'w5': delta_o1 * a_h1,
    'w6': delta_o1 * a_h2,
    'w7': delta_o2 * a_h1,
    'w8': delta_o2 * a_h2,
  }


def autodiff_gradients(
  params: Params, inputs: jax.Array, targets: jax.Array
) -> dict[str, jax.Array]:
  """∂E_total/∂w1..∂w8 by jax.grad: the independent witness for `hand_gradients`."""
  return jax.grad(loss)(params, inputs, targets)


def sgd_update(params: Params, grads: Params, learning_rate) -> dict[str, jax.Array]:
  """w ← w − η·∂E/∂w for all eight weights at once (every gradient comes from the old weights)."""
  return jax.tree.map(lambda w, g: w - learning_rate * g, dict(params), dict(grads))


def to_layers(params: Params) -> list[dict[str, jax.Array]]:
  """The same network as `nets.mlp` layers: z = a @ w, w of shape (fan_in, fan_out), no bias.

  h1 = w1·i1 + w2·i2 and h2 = w3·i1 + w4·i2 put [w1, w2] in column 0 and [w3, w4] in column 1.
  """
  p = params
  w_hidden = jnp.stack([jnp.stack([p['w1'], p['w3']]), jnp.stack([p['w2'], p['w4']])])
  w_output = jnp.stack([jnp.stack([p['w5'], p['w7']]), jnp.stack([p['w6'], p['w8']])])
  return [{'w': w_hidden}, {'w': w_output}]


def from_layers(layers) -> dict[str, jax.Array]:
  """Inverse of `to_layers` (biases, if any, are dropped)."""
  (w1, w3), (w2, w4) = layers[0]['w']
  (w5, w7), (w6, w8) = layers[1]['w']
  return dict(zip(WEIGHT_NAMES, (w1, w2, w3, w4, w5, w6, w7, w8), strict=True))
