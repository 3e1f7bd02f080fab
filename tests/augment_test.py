"""Tests for augment: the on-device warp, its jitters and their draws, normalisation."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import scipy.ndimage
from absl.testing import absltest, parameterized

import augment


def _rotation_and_shift_draws(rng, n, max_degrees=7.0, max_shift=2.0):
  """The angles and shifts augment draws from `rng`, written out independently of it."""
  rng_angle, rng_shift = jax.random.split(rng)
  angles = jax.random.uniform(rng_angle, (n,), minval=-1, maxval=1) * jnp.deg2rad(max_degrees)
  return angles, jax.random.uniform(rng_shift, (n, 2), minval=-max_shift, maxval=max_shift)


class AugmentTest(chex.TestCase):
  def setUp(self):
    super().setUp()
    self.image = jax.random.uniform(jax.random.key(0), (28, 28))

  def test_identity(self):
    out = augment._affine_one(self.image, jnp.float32(0), jnp.zeros(2))
    np.testing.assert_allclose(out, self.image, atol=1e-6)

  def test_integer_shift_moves_pixels(self):
    out = augment._affine_one(self.image, jnp.float32(0), jnp.asarray([1.0, -2.0]))
    np.testing.assert_allclose(out[1:, :-2], self.image[:-1, 2:], atol=1e-6)
    np.testing.assert_array_equal(out[0], 0.0)  # Filled border is black.

  def test_quarter_turn_is_rot90(self):
    out = augment._affine_one(self.image, jnp.float32(np.pi / 2), jnp.zeros(2))
    # Sign convention aside, a 90° turn about the centre must be an exact pixel permutation.
    self.assertTrue(
      np.allclose(out, np.rot90(self.image), atol=1e-5)
      or np.allclose(out, np.rot90(self.image, -1), atol=1e-5)
    )

  def test_zoom_scales_distances_from_the_centre(self):
    # Bilinear sampling is exact on a ramp: zooming by 2 halves every row's distance from the
    # centre row (13.5) in the value it reads, inside the rows that sample the input.
    ramp = jnp.broadcast_to(jnp.arange(28, dtype=jnp.float32)[:, None], (28, 28))
    out = augment._affine_one(ramp, jnp.float32(0), jnp.zeros(2), jnp.float32(2.0))
    rows = np.arange(28)
    np.testing.assert_allclose(out[:, 5], 13.5 + (rows - 13.5) / 2, atol=1e-5)
    shrunk = augment._affine_one(ramp, jnp.float32(0), jnp.zeros(2), jnp.float32(0.5))
    np.testing.assert_array_equal(shrunk[0], 0.0)  # Zoomed out: the border is filled black.

  def test_brightness_and_contrast_stay_in_their_ranges(self):
    # Mid-grey images with a small spread: no pixel clips, so the factors can be read back.
    images = 0.5 + 0.1 * jax.random.uniform(jax.random.key(1), (64, 28, 28), minval=-1, maxval=1)
    bright = augment.jitter_intensity(jax.random.key(2), images, 0.2, 0.0)
    factor = np.asarray(bright / images)
    np.testing.assert_allclose(factor, factor[:, :1, :1] * np.ones_like(factor), rtol=1e-5)
    self.assertTrue(np.all((factor >= 0.8 - 1e-6) & (factor <= 1.2 + 1e-6)))
    self.assertGreater(factor.std(), 0.05)  # Each image draws its own factor.
    contrast = augment.jitter_intensity(jax.random.key(2), images, 0.0, 0.3)
    np.testing.assert_allclose(contrast.mean((1, 2)), images.mean((1, 2)), atol=1e-5)
    spread = np.asarray(contrast.std((1, 2)) / images.std((1, 2)))
    self.assertTrue(np.all((spread >= 0.7 - 1e-5) & (spread <= 1.3 + 1e-5)), spread)
    full = augment.jitter_intensity(jax.random.key(3), self.image[None] * 2, 0.5, 0.5)
    self.assertTrue(bool((full >= 0).all() & (full <= 1).all()))  # Clipped to [0, 1].

  def test_new_jitters_off_keep_the_rotation_and_shift_draws(self):
    # The committed runs trained before zoom and intensity jitter existed: with those off,
    # augment must draw the same angles and shifts from the same keys.
    images = jnp.stack([self.image] * 4)
    rng = jax.random.key(7)
    expected = jax.vmap(augment._affine_one)(images, *_rotation_and_shift_draws(rng, 4))
    out = augment.augment(rng, images, max_degrees=7.0, max_shift=2.0)
    np.testing.assert_array_equal(out, expected)
    jittered = augment.augment(rng, images, max_degrees=7.0, max_shift=2.0, max_scale=0.1)
    self.assertFalse(np.allclose(jittered, expected))

  @parameterized.parameters(1.0, 4.0, 6.5)
  def test_elastic_smoothing_is_scipys_gaussian_filter(self, sigma):
    noise = np.random.default_rng(0).uniform(-1, 1, (28, 28))
    g = augment.gaussian_matrix(28, sigma)
    expected = scipy.ndimage.gaussian_filter(noise, sigma, mode='constant', truncate=4.0)
    np.testing.assert_allclose(g @ noise @ g.T, expected, atol=1e-12)

  def test_elastic_field_is_smooth_noise_times_alpha(self):
    field = augment.elastic_field(jax.random.key(3), (8, 28, 28), 34.0, 4.0)
    chex.assert_shape(field, (8, 2, 28, 28))
    doubled = augment.elastic_field(jax.random.key(3), (8, 28, 28), 68.0, 4.0)
    np.testing.assert_allclose(doubled, 2 * field, rtol=1e-5, atol=1e-6)
    step = np.abs(np.diff(np.asarray(field), axis=-1)).mean()  # Neighbours move together:
    self.assertLess(step, 0.2 * np.abs(np.asarray(field)).mean())  # smooth, not pixel noise.
    self.assertGreater(np.abs(np.asarray(field)).mean(), 0.3)  # ~1 pixel at alpha 34, sigma 4.

  def test_a_constant_displacement_is_a_shift(self):
    # The output samples the input at (r, c) + d: d = (-1, +2) is the shift by (1, -2).
    displacement = jnp.stack([jnp.full((28, 28), -1.0), jnp.full((28, 28), 2.0)])
    out = augment._affine_one(self.image, jnp.float32(0), jnp.zeros(2), None, displacement)
    shifted = augment._affine_one(self.image, jnp.float32(0), jnp.asarray([1.0, -2.0]))
    np.testing.assert_allclose(out, shifted, atol=1e-6)

  def test_elastic_jitter_warps_and_keeps_the_other_draws(self):
    images = jnp.stack([self.image] * 4)
    rng = jax.random.key(7)
    plain = augment.augment(rng, images, max_degrees=7.0, max_shift=2.0)
    warped = augment.augment(rng, images, max_degrees=7.0, max_shift=2.0, elastic_alpha=34.0)
    self.assertGreater(float(jnp.abs(warped - plain).mean()), 0.05)
    angles, shifts = _rotation_and_shift_draws(rng, 4)  # The same draws, plus the field.
    field = augment.elastic_field(jax.random.fold_in(rng, 3), images.shape, 34.0, 4.0)
    expected = jax.vmap(augment._affine_one)(images, angles, shifts, None, field)
    np.testing.assert_allclose(warped, expected, atol=1e-6)
    elastic_only = augment.augment(rng, images, elastic_alpha=1e-4)
    np.testing.assert_allclose(elastic_only, images, atol=1e-3)  # A tiny field: nearly as is.

  @chex.variants(with_jit=True, without_jit=True)
  def test_preprocess_shapes_and_normalisation(self):
    images = jnp.full((4, 28, 28), 255, jnp.uint8)
    out = self.variant(augment.preprocess)(images)
    chex.assert_shape(out, (4, 28, 28, 1))
    np.testing.assert_allclose(out, (1 - augment.PIXEL_MEAN) / augment.PIXEL_STD, rtol=1e-6)
    aug = self.variant(
      lambda x, r: augment.preprocess(
        x, r, max_degrees=10.0, max_shift=2.0, max_scale=0.1, max_brightness=0.2, max_contrast=0.2
      )
    )(images, jax.random.key(1))
    chex.assert_shape(aug, (4, 28, 28, 1))
    chex.assert_tree_all_finite(aug)
    self.assertFalse(np.allclose(aug, out))  # Augmentation really changed the images.


if __name__ == '__main__':
  absltest.main()
