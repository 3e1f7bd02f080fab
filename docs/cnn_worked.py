"""The worked example of docs/cnn_backprop.md: one 4x4 image through the hand backward, every step.

The net is the layer spec 'c1-pool-flatten-dense' (one 3x3 conv, its BatchNorm and ReLU, a 2x2
max-pool, the dense classifier), with small round weights so the numbers can be followed by
hand. Each step calls the rule of nets/cnn_backprop.py for that layer; the result is checked
against the composed hand backward (cnn_backprop.loss_and_gradients) and against jax.grad of
train.py's loss on the Flax model, so the page cannot print a gradient the code does not give.
docs/make_docs.py writes `markdown()` into the page; tests/docs_test.py regenerates and compares.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

import cnn_check
from nets import cnn
from nets import cnn_backprop as cb

SPEC = 'c1-pool-flatten-dense'
IMAGE = ((0.0, 0.5, 1.0, 0.0), (0.0, 0.0, 1.0, 0.0), (0.0, 0.0, 1.0, 0.0), (0.0, 0.5, 1.0, 0.5))
LABEL = 1  # The image is a thin "1".
KERNEL = ((0.1, -0.2, 0.3), (0.0, 0.5, -0.1), (0.2, 0.1, -0.3))
DENSE_SEED = 0  # Dense weights: rng(0) normal * 0.3, rounded to 2 decimals; bias 0.
DIGITS = 4
AGREE = 1e-12  # float64: the three ways differ in the last bits only (different sum orders).


@dataclasses.dataclass(frozen=True)
class Worked:
  steps: list[tuple[str, str, np.ndarray]]  # (name, formula, value), forward then backward.
  loss: float
  max_diff_network: float  # max |step-by-step - cnn_backprop.loss_and_gradients| over params.
  max_diff_autodiff: float  # max |step-by-step - jax.grad| over params.


def variables() -> dict:
  """The Flax variables of SPEC, with the round weights above (BatchNorm at its init: 1, 0)."""
  model = cnn.build(SPEC)
  v = cnn.init(model, jax.random.key(0), (4, 4, 1))
  dense = np.round(np.random.default_rng(DENSE_SEED).normal(size=(4, 10)) * 0.3, 2)
  params = {
    'Conv_0': {'kernel': jnp.asarray(KERNEL, jnp.float64)[:, :, None, None]},
    'BatchNorm_0': {'scale': jnp.ones(1, jnp.float64), 'bias': jnp.zeros(1, jnp.float64)},
    'Dense_0': {'kernel': jnp.asarray(dense), 'bias': jnp.zeros(10, jnp.float64)},
  }
  flax_shapes = jax.tree.map(jnp.shape, v['params'])
  assert jax.tree.map(jnp.shape, params) == flax_shapes, (flax_shapes, params)
  stats = jax.tree.map(lambda a: a.astype(jnp.float64), v['batch_stats'])
  return {'params': params, 'batch_stats': stats}


def compute() -> Worked:
  """Every intermediate of the forward and the backward, in float64."""
  with jax.enable_x64(True):
    return _compute()


def _compute() -> Worked:
  model, v = cnn.build(SPEC), variables()
  p = v['params']
  x = jnp.asarray(IMAGE, jnp.float64)[None, :, :, None]
  labels = jnp.asarray([LABEL])
  steps = []

  def keep(name, formula, value):
    steps.append((name, formula, np.asarray(value)))
    return value

  kernel = p['Conv_0']['kernel']
  keep('x', 'the image (4x4)', x[0, :, :, 0])
  keep('K', 'the 3x3 kernel', kernel[:, :, 0, 0])
  z = keep('z = x ⋆ K', 'correlation, SAME (zero border)', cb.conv_forward(x, kernel, 'SAME'))
  scale, bias = p['BatchNorm_0']['scale'], p['BatchNorm_0']['bias']
  a, cache = cb.batchnorm_forward(z, scale, bias)
  keep('μ, σ²', 'mean and (biased) variance of z over its 16 positions',
       np.array([cache['mean'][0], cache['var'][0]]))  # fmt: skip
  keep('a = γ·x̂ + β', 'x̂ = (z − μ)/√(σ² + 1e-5); γ = 1, β = 0', a)
  r = keep('r = relu(a)', 'max(a, 0)', cb.relu_forward(a))
  m = keep('m = maxpool(r)', 'the largest of each 2x2 window', cb.max_pool_forward(r, 2))
  f = keep('f = flatten(m)', 'the four maxima, row by row', m.reshape(1, -1))
  keep('W', 'the dense kernel (4x10; bias 0)', p['Dense_0']['kernel'])
  dense = p['Dense_0']
  logits = keep('logits = f W + b', '', cb.dense_forward(f, dense['kernel'], dense['bias']))
  loss, ce = cb.cross_entropy_forward(logits, labels, 0.0)
  keep('softmax(logits)', '', ce['p'])
  keep('L', f'−log softmax(logits)[{LABEL}]', np.array([loss]))
  # Backward, last layer first.
  dlogits = keep('∂L/∂logits', 'softmax − onehot', cb.cross_entropy_backward(ce))
  df, dw, db = cb.dense_backward(f, p['Dense_0']['kernel'], dlogits)
  keep('∂L/∂W', 'fᵀ · ∂L/∂logits', dw)
  keep('∂L/∂b', '∂L/∂logits summed over the batch', db)
  keep('∂L/∂f', '∂L/∂logits · Wᵀ', df)
  dm = df.reshape(m.shape)
  ties = "each window's gradient to its maximum; the first window's four zeros tie and share it"
  dr = keep('∂L/∂r', ties, cb.max_pool_backward(r, m, dm, 2))
  da = keep('∂L/∂a', '∂L/∂r where a > 0, else 0', cb.relu_backward(a, dr))
  dz, dscale, dbias = cb.batchnorm_backward(cache, scale, da)
  keep('∂L/∂β, ∂L/∂γ', 'Σ ∂L/∂a and Σ ∂L/∂a·x̂', np.array([dbias[0], dscale[0]]))
  keep('∂L/∂z', '(γ/√(σ² + ε))·(∂L/∂a − mean(∂L/∂a) − x̂·mean(∂L/∂a·x̂))', dz)
  dx, dk = cb.conv_backward(x, kernel, 'SAME', dz)
  keep('∂L/∂K', 'x ⋆ ∂L/∂z: each tap, the sum of x shifted by it times ∂L/∂z', dk[:, :, 0, 0])
  keep('∂L/∂x', '∂L/∂z ⋆ (K flipped), full correlation', dx)

  mine = {
    'Conv_0': {'kernel': dk},
    'BatchNorm_0': {'scale': dscale, 'bias': dbias},
    'Dense_0': {'kernel': dw, 'bias': db},
  }
  _, network = cb.loss_and_gradients(model, v, x, labels)
  _, autodiff = cnn_check.autodiff_loss_and_gradients(model, v, x, labels)

  def diff(other):
    gaps = jax.tree.map(lambda s, o: float(jnp.max(jnp.abs(s - o))), mine, other)
    return max(jax.tree.leaves(gaps))

  return Worked(steps, float(loss), diff(network), diff(autodiff))


def _grid(value: np.ndarray) -> np.ndarray:
  """A value as a 2-D float64 grid: a [1, H, W, 1] map as H x W, anything else by its last axis."""
  a = np.asarray(value, np.float64)
  return a.reshape(a.shape[1], a.shape[2]) if a.ndim == 4 else a.reshape(-1, a.shape[-1])


def _array(value: np.ndarray) -> str:
  """A value as rows of fixed-point numbers (an image or kernel as its 2-D grid)."""
  a = _grid(value) + 0.0  # -0.0 prints as 0.0000.
  rows = [' '.join(f'{v: .{DIGITS}f}' for v in row) for row in a]
  return '\n'.join(rows)


def markdown(w: Worked | None = None) -> str:
  """The generated block: each step's value, then the agreement line."""
  w = w or compute()
  out = []
  for name, formula, value in w.steps:
    out.append(f'{name}' + (f'  ({formula})' if formula else '') + ':')
    out.append(_array(value if np.ndim(value) else np.array([value])))
    out.append('')
  body = '\n'.join(out).rstrip()
  if max(w.max_diff_network, w.max_diff_autodiff) > AGREE:
    raise AssertionError(
      f'the worked example disagrees: {w.max_diff_network}, {w.max_diff_autodiff}'
    )
  return (
    '```\n'
    f'{body}\n'
    '```\n\n'
    f'Loss {w.loss:.{DIGITS}f}. These steps, chained by hand, give the same five parameter '
    f'gradients as the composed hand backward (`cnn_backprop.loss_and_gradients`) and as '
    f'`jax.grad` of the loss `train.py` trains, to {AGREE:.0e} in float64 (checked each time '
    f'this block is written).\n'
  )


FIGURE_PANELS = (  # (step name, title): the forward on top, its gradient under it.
  (
    ('x', 'image x'),
    ('z = x ⋆ K', 'conv z'),
    ('r = relu(a)', 'BN + ReLU r'),
    ('m = maxpool(r)', 'pool m'),
  ),
  (('∂L/∂x', '∂L/∂x'), ('∂L/∂z', '∂L/∂z'), ('∂L/∂r', '∂L/∂r'), ('∂L/∂K', '∂L/∂K (3x3)')),
)


def figure(w: Worked | None = None):
  """Each map of the worked example above its gradient, as heat maps (gradients on a diverging
  scale centred on 0, so a sign reads as a colour)."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  w = w or compute()
  values = {name: value for name, _, value in w.steps}
  fig = Figure(figsize=(10, 5.4))
  FigureCanvasAgg(fig)
  axes = fig.subplots(2, 4)
  for row, panels in enumerate(FIGURE_PANELS):
    for ax, (name, title) in zip(axes[row], panels, strict=True):
      a = _grid(values[name])
      if row == 0:
        image = ax.imshow(a, cmap='gray_r')
      else:
        limit = float(np.abs(a).max()) or 1.0
        image = ax.imshow(a, cmap='RdBu_r', vmin=-limit, vmax=limit)
      image.set_gid(name)
      for (i, j), v in np.ndenumerate(a):
        box = {'facecolor': 'white', 'alpha': 0.7, 'linewidth': 0, 'pad': 1}
        ax.text(j, i, f'{v + 0.0:.2f}', ha='center', va='center', fontsize=7, bbox=box)
      ax.set_title(title, fontsize=10)
      ax.set_xticks([])
      ax.set_yticks([])
  fig.suptitle(
    f'One 4x4 image through {SPEC} (loss {w.loss:.4f}): each map above, its hand gradient below',
    fontsize=10,
  )
  fig.tight_layout(rect=(0, 0, 1, 0.95), h_pad=2.0)
  return fig
