"""bench/torch_cnn.py builds the same network as nets.cnn for every architecture.

Runs only where PyTorch is installed (the optional `bench` extra); skipped elsewhere.
"""

import pytest
from absl.testing import absltest

from nets import cnn

torch = pytest.importorskip('torch')
from bench import torch_cnn  # noqa: E402 (after the skip, so no torch means no import)


class TorchTwinTest(absltest.TestCase):
  def test_every_architecture_has_flax_parameter_count_and_ten_logits(self):
    for arch in cnn.ARCHITECTURES:
      with self.subTest(arch=arch):
        model = torch_cnn.build(arch).eval()
        self.assertEqual(torch_cnn.count_params(model), cnn.param_count(cnn.build(arch)))
        self.assertEqual(tuple(model(torch.zeros(3, 1, 28, 28)).shape), (3, 10))

  def test_augment_keeps_shape_and_moves_pixels(self):
    x = torch.zeros(4, 1, 28, 28)
    x[:, :, 10:18, 12:16] = 1.0
    gen = torch.Generator().manual_seed(0)
    y = torch_cnn.augment(x, 7.0, 2.0, gen)
    self.assertEqual(y.shape, x.shape)
    self.assertGreater(float((y - x).abs().sum()), 1.0)


if __name__ == '__main__':
  absltest.main()
