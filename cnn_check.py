"""The CNN's hand gradients (nets/cnn_backprop.py) checked against jax.grad of the real loss.

`python backprop_check.py --cnn --config=configs/mnist.py [--config.data_dir=IDX_FOLDER]
[--config.arch=SPEC] [--cnn_batch=64] [--precision=float32]` builds the config's net (seed
config.seed), takes the first `--cnn_batch` MNIST training images, and prints one row per
parameter: path, shape, max |hand - jax.grad| and that over max |jax.grad| (relative error).
The last line is `all N parameters agree` (exit 0) or names the parameter nearest the loss that
does not (exit 1): the gradient flows back from the loss, so that one sits next to the wrong
rule.

The witness is jax.value_and_grad of the function train.train_step differentiates (the
config's label smoothing, dropout with the step's rng, BatchNorm on batch statistics); the new
batch_stats are compared too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags
from ml_collections import config_flags

import augment
import cli
import input_pipeline
import preflight
import train
from nets import cnn, cnn_backprop

# Agreement: |hand - jax.grad| <= rtol * |jax.grad| + rtol * G elementwise, G the largest
# |jax.grad| over every parameter (a gradient that is ~0 by symmetry, as a 1x1 conv kernel on
# one channel under BatchNorm, is a cancellation whose rounding scales with G, not with itself).
#   float64: eps = 1.1e-16; measured worst relative error over the config nets 7e-15.
#   float32: eps = 6e-8. Each gradient is a chain of ~10 conv-BN blocks, each backward a few
#     sums of up to B*H*W = 50,176 terms (blocked summation: ~log2(50,176) = 16 roundings) and
#     BatchNorm's cancelling dm/N and dq*2x/N terms, both sides in a different order: ~10
#     blocks x 4 sums x 16 eps x a cancellation factor of ~10 gives 1e-4. Measured worst
#     relative error over the config nets: 3e-6.
TOLERANCES = {'float64': 1e-10, 'float32': 1e-4}


def autodiff_loss_and_gradients(
  model: cnn.CNN,
  variables: dict[str, Any],
  images: jax.Array,
  labels: jax.Array,
  rng: jax.Array | None = None,
  label_smoothing: float = 0.0,
):
  """((loss, (logits, batch_stats)), grads) by jax.grad of train.train_step's loss_fn."""

  def loss_fn(params):
    v = {'params': params, 'batch_stats': variables['batch_stats']}
    logits, batch_stats = cnn.apply(model, v, images, train=True, rng=rng)
    return train.cross_entropy(logits, labels, label_smoothing).mean(), (logits, batch_stats)

  return jax.value_and_grad(loss_fn, has_aux=True)(variables['params'])


@dataclasses.dataclass(frozen=True)
class Row:
  path: str  # 'Conv_0/kernel'
  shape: tuple[int, ...]
  max_abs_diff: float
  relative_error: float  # max |hand - jax.grad| / max |jax.grad| over the parameter
  agrees: bool


def _flat(tree: Any) -> dict[str, np.ndarray]:
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  return {'/'.join(k.key for k in path): np.asarray(v) for path, v in leaves}


def compare(hand: Any, autodiff: Any, precision: str, layers: Sequence[cnn.Layer]) -> list[Row]:
  """One Row per parameter of `layers`, in forward order (Conv_0, BatchNorm_0, ..., Dense_0)."""
  rtol = TOLERANCES[precision]
  order = {name: i for i, name in enumerate(cnn_backprop.param_names(layers))}
  hand = _flat(hand)
  autodiff = dict(sorted(_flat(autodiff).items(), key=lambda kv: order[kv[0].split('/')[0]]))
  if hand.keys() != autodiff.keys():
    raise AssertionError(f'parameter paths differ: {sorted(hand)} vs {sorted(autodiff)}')
  scale = max(float(np.max(np.abs(a))) for a in autodiff.values())
  rows = []
  for path, a in autodiff.items():
    h = hand[path]
    if h.shape != a.shape:
      raise AssertionError(f'{path}: hand gradient of shape {h.shape}, jax.grad {a.shape}')
    diff = np.abs(h - a)
    ok = bool(np.all(diff <= rtol * np.abs(a) + rtol * scale))
    top = float(np.max(np.abs(a)))
    rel = float(np.max(diff)) / top if top else float(np.max(diff) > 0) * np.inf
    rows.append(Row(path, a.shape, float(np.max(diff)), rel, ok))
  return rows


def first_disagreement(rows: Sequence[Row]) -> Row | None:
  """The disagreeing parameter nearest the loss (the last layer's first): the gradient flows
  back from the loss, so the first one wrong on the way sits next to the wrong rule."""
  bad = [r for r in rows if not r.agrees]
  return bad[-1] if bad else None


def format_rows(rows: Sequence[Row], precision: str) -> str:
  """The table and the last line (`all N parameters agree` or the disagreeing parameter)."""
  width = max(len(r.path) for r in rows)
  lines = [f'{"parameter":<{width}}  {"shape":<14}  max |hand - jax.grad|  relative error']
  for r in rows:
    mark = '' if r.agrees else '  DISAGREES'
    shape = 'x'.join(map(str, r.shape))
    lines.append(
      f'{r.path:<{width}}  {shape:<14}  {r.max_abs_diff:>21.3e}  {r.relative_error:>14.3e}{mark}'
    )
  bad = first_disagreement(rows)
  rtol = TOLERANCES[precision]
  if bad is None:
    lines.append(f'all {len(rows)} parameters agree ({precision}, rtol {rtol:g})')
  else:
    lines.append(
      f'{bad.path} disagrees: max |hand - jax.grad| = {bad.max_abs_diff:.3e}, relative '
      f'{bad.relative_error:.3e} > rtol {rtol:g} ({precision}); the rule just after that layer '
      'in the backward order (nets/cnn_backprop.py) is wrong'
    )
  return '\n'.join(lines)


def check_batch(model, variables, images, labels, rng, label_smoothing, precision) -> list[Row]:
  """Both gradients of one batch, compared; AssertionError if logits or batch_stats differ."""
  args = (model, variables, images, labels, rng, label_smoothing)
  # Fresh closures: a rule patched in (the tests break one) is traced, never a cached trace.
  hand_fn = jax.jit(lambda *a: cnn_backprop.loss_and_gradients(model, *a))
  auto_fn = jax.jit(lambda *a: autodiff_loss_and_gradients(model, *a))
  (loss_h, (logits_h, stats_h)), hand = hand_fn(*args[1:])
  (loss_a, (logits_a, stats_a)), auto = auto_fn(*args[1:])
  rtol = TOLERANCES[precision]
  np.testing.assert_allclose(loss_h, loss_a, rtol=rtol, err_msg='loss')
  np.testing.assert_allclose(logits_h, logits_a, rtol=rtol, atol=rtol, err_msg='logits')
  for path, s in _flat(stats_a).items():
    np.testing.assert_allclose(_flat(stats_h)[path], s, rtol=rtol, atol=rtol, err_msg=path)
  return compare(hand, auto, precision, model.layers)


def run(config: ml_collections.ConfigDict, batch: int, precision: str) -> list[Row]:
  """The check on the config's net and the first `batch` training images."""
  cnn_backprop.check_layers(cnn.layers_of(config.arch))
  data = input_pipeline.get_datasets(config.data_dir, config.data_url, config.download_dir)
  train_split = data['train']
  init_rng, rng = jax.random.split(jax.random.key(config.seed))
  model = cnn.build(config.arch, config.dropout_rate)
  with jax.enable_x64(precision == 'float64'):
    dtype = jnp.dtype(precision)
    variables = jax.tree.map(lambda a: a.astype(dtype), cnn.init(model, init_rng))
    images = augment.preprocess(jnp.asarray(train_split.images[:batch])).astype(dtype)
    labels = jnp.asarray(train_split.labels[:batch])
    return check_batch(model, variables, images, labels, rng, config.label_smoothing, precision)


def define_flags() -> None:
  """--cnn, --cnn_batch and train.py's --config (with its --config.* overrides)."""
  flags.DEFINE_bool(
    'cnn', False, "Check the CNN's hand gradients (nets/cnn_backprop.py) against jax.grad."
  )
  flags.DEFINE_integer('cnn_batch', 64, '--cnn: training images in the batch.', lower_bound=1)
  config_flags.DEFINE_config_file(
    'config', 'configs/mnist.py', '--cnn: the training config whose net is checked.',
    lock_config=True,
  )  # fmt: skip


def main(flag_values: flags.FlagValues) -> int:
  """`backprop_check.py --cnn`: prints the table; 0 if every parameter agrees, else 1."""
  config = cli.load_config(flag_values)
  preflight.validate_config(config)
  rows = run(config, flag_values.cnn_batch, flag_values.precision)
  print(f'{config.arch}: {flag_values.cnn_batch} training images, seed {config.seed}')
  print(format_rows(rows, flag_values.precision))
  return 0 if first_disagreement(rows) is None else 1
