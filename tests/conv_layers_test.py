"""bench/conv_layers.py: the layer shapes it times and its matmul-per-tap kernel gradient.

Needs no PyTorch (the module imports it only in main).
"""

import jax
import numpy as np
from absl.testing import absltest, parameterized

from bench import conv_layers
from nets import cnn


class ConvLayersTest(parameterized.TestCase):
  @parameterized.parameters('gap', 'spatial')
  def test_shifted_matmul_kernel_grad_equals_xla_vjp_for_every_layer(self, arch):
    shapes = conv_layers.conv_shapes(arch)
    self.assertLen(shapes, sum(layer.kind == 'conv' for layer in cnn.build(arch).layers))
    rng = np.random.default_rng(0)
    for s in shapes:
      with self.subTest(layer=s):
        k, pad = s['kernel'], s['padding']
        x = rng.standard_normal((2, s['size'], s['size'], s['cin']), np.float32)
        w = rng.standard_normal((k, k, s['cin'], s['cout']), np.float32)
        dy = rng.standard_normal((2, s['out_size'], s['out_size'], s['cout']), np.float32)

        def conv(w, x=x, pad=pad):
          return jax.lax.conv_general_dilated(
            x, w, (1, 1), pad, dimension_numbers=('NHWC', 'HWIO', 'NHWC')
          )

        self.assertEqual(conv(w).shape, dy.shape)
        expected = jax.vjp(conv, w)[1](dy)[0]
        got = conv_layers.kernel_grad_shifted_matmuls(x, dy, k, pad)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-3)


if __name__ == '__main__':
  absltest.main()
