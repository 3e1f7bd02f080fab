"""The PyTorch twin of nets.cnn for the side-by-side benchmark (bench/bench.py).

Built from the same `nets.cnn.Layer` specs, so the two networks cannot drift apart: conv
(no bias) -> BatchNorm -> ReLU, 2x2 max-pool, 1x1 convs, a VALID 3x3 conv, global average
pool or a flatten (the spatial heads) and a Linear head. PyTorch's BatchNorm `momentum` is the
weight of the new batch, so flax's 0.9 (the weight of the old average) is 0.1 here; both use
eps 1e-5.

Importing this module imports torch (the optional `bench` extra: pip install torch==2.13.0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nets import cnn


class TorchCNN(nn.Module):
  """nets.cnn.CNN in PyTorch, NCHW (PyTorch's default layout, as its users write it)."""

  def __init__(
    self,
    layers: Sequence[cnn.Layer],
    bn_momentum: float = 0.9,
    in_channels: int = 1,
    image_size: int = 28,
  ):
    super().__init__()
    # Each layer's input shape (H, W, C), from the flax net's own summary.
    rows = cnn.summary(cnn.CNN(layers=tuple(layers)), (image_size, image_size, in_channels))
    inputs = [(image_size, image_size, in_channels)] + [r['output'] for r in rows[:-1]]
    modules = []
    for layer, shape in zip(layers, inputs, strict=True):
      if layer.kind == 'conv':
        pad = (layer.kernel - 1) // 2 if layer.padding == 'SAME' else 0
        modules += [
          nn.Conv2d(shape[-1], layer.features, layer.kernel, padding=pad, bias=False),
          nn.BatchNorm2d(layer.features, eps=1e-5, momentum=1 - bn_momentum),
          nn.ReLU(inplace=True),
        ]
      elif layer.kind == 'pool':
        modules.append(nn.MaxPool2d(layer.kernel))
      elif layer.kind == 'gap':
        modules += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
      elif layer.kind == 'flatten':
        # NCHW order, not flax's HWC: the same function class and parameter count (the
        # benchmark trains both from scratch; no weights cross between them).
        modules.append(nn.Flatten())
      elif layer.kind == 'dropout':
        modules.append(nn.Identity())  # The benchmark runs without dropout (rate 0).
      elif layer.kind == 'dense':
        modules.append(nn.Linear(math.prod(shape), layer.features))
      else:
        raise ValueError(f'unknown layer kind {layer.kind!r}')
    self.net = nn.Sequential(*modules)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.net(x)


def build(arch: str) -> TorchCNN:
  """The PyTorch network for a nets.cnn.ARCHITECTURES name or layer spec."""
  return TorchCNN(cnn.layers_of(arch))


def count_params(model: nn.Module) -> int:
  """Trainable scalars (BatchNorm running statistics are buffers, not parameters)."""
  return sum(p.numel() for p in model.parameters() if p.requires_grad)


def augment(
  x: torch.Tensor, max_degrees: float, max_shift: float, generator: torch.Generator
) -> torch.Tensor:
  """Random rotation and shift of a [B, 1, 28, 28] batch, bilinear, zero fill.

  The batched PyTorch equivalent of augment.augment (affine_grid + grid_sample), as a
  PyTorch user who augments on the tensor batch would write it.
  """
  b, _, h, w = x.shape
  # Drawn from the (CPU) generator, then moved: the same numbers on any device.
  angle = (torch.rand(b, generator=generator) * 2 - 1) * math.radians(max_degrees)
  shift = (torch.rand(b, 2, generator=generator) * 2 - 1) * max_shift
  cos, sin = torch.cos(angle), torch.sin(angle)
  # affine_grid works in [-1, 1] coordinates: a shift of s pixels is 2 s / size.
  theta = torch.stack(
    [
      torch.stack([cos, -sin, -2 * shift[:, 1] / w], 1),
      torch.stack([sin, cos, -2 * shift[:, 0] / h], 1),
    ],
    1,
  ).to(x.device)
  grid = F.affine_grid(theta, list(x.shape), align_corners=False)
  return F.grid_sample(x, grid, mode='bilinear', padding_mode='zeros', align_corners=False)
