"""What the jitted train step does to a batch of uint8 MNIST images on the device: pure JAX.

  * `preprocess(images_u8, rng, **jitter)`: to normalised float32 [B, 28, 28, 1], augmented
    when `rng` is given.
  * `augment(rng, images, ...)`: rotation, zoom, shift and an elastic warp in one bilinear
    resampling, then brightness/contrast jitter; each jitter at 0 is off and adds nothing to
    the program.

The images come from input_pipeline.py as uint8 arrays.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import scipy.ndimage

# Mean and std of the MNIST training pixels scaled to [0, 1] (the usual constants).
PIXEL_MEAN = 0.1307
PIXEL_STD = 0.3081

# The config fields of the augmentation, `augment`'s keyword arguments (0: that jitter is off;
# elastic_sigma only sets the smoothness of the elastic jitter that elastic_alpha turns on).
FIELDS = (
  'max_degrees', 'max_shift', 'max_scale', 'max_brightness', 'max_contrast', 'elastic_alpha',
  'elastic_sigma',
)  # fmt: skip


def gaussian_matrix(n: int, sigma: float) -> np.ndarray:
  """[n, n] matrix G with G @ v = scipy.ndimage.gaussian_filter1d(v, sigma, mode='constant')
  (truncated at 4 sigma, zeros beyond the ends): the filter applied to each unit impulse."""
  return scipy.ndimage.gaussian_filter1d(np.eye(n), sigma, axis=0, mode='constant', truncate=4.0)


def elastic_field(rng: jax.Array, shape: tuple[int, ...], alpha: float, sigma: float) -> jax.Array:
  """Simard et al. (2003)'s elastic displacement, [B, 2, H, W] in pixels: uniform noise in
  [-1, 1] per pixel and axis, smoothed by a Gaussian of std `sigma` pixels, times `alpha`."""
  batch, h, w = shape
  noise = jax.random.uniform(rng, (batch, 2, h, w), minval=-1, maxval=1)
  g_h, g_w = (jnp.asarray(gaussian_matrix(n, sigma), noise.dtype) for n in (h, w))
  return alpha * jnp.einsum('ij,bajk,lk->bail', g_h, noise, g_w)  # Rows, then columns.


def _affine_one(
  image: jax.Array,
  angle: jax.Array,
  shift: jax.Array,
  scale: jax.Array | None = None,
  displacement: jax.Array | None = None,
) -> jax.Array:
  """Rotates one [28, 28] float image by `angle` radians about its centre, zooms it by `scale`
  (> 1 enlarges; None: unscaled), then shifts it. `displacement` ([2, 28, 28] pixels, None:
  none) moves where each output pixel samples the input: an elastic warp."""
  h, w = image.shape
  rows, cols = jnp.meshgrid(
    jnp.arange(h, dtype=image.dtype), jnp.arange(w, dtype=image.dtype), indexing='ij'
  )
  cy, cx = (h - 1) / 2, (w - 1) / 2
  # Inverse map: output (r, c) samples the input at R(-angle) @ ((r, c) - centre - shift) / scale.
  y, x = rows - cy - shift[0], cols - cx - shift[1]
  if scale is not None:
    y, x = y / scale, x / scale
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  src_r = cos * y - sin * x + cy
  src_c = sin * y + cos * x + cx
  if displacement is not None:
    src_r, src_c = src_r + displacement[0], src_c + displacement[1]
  return jax.scipy.ndimage.map_coordinates(image, [src_r, src_c], order=1, cval=0.0)


def _factors(rng: jax.Array, batch: int, spread: float) -> jax.Array:
  """One factor per image, uniform in [1 - spread, 1 + spread]."""
  return 1 + jax.random.uniform(rng, (batch,), minval=-spread, maxval=spread)


def jitter_intensity(
  rng: jax.Array, images: jax.Array, max_brightness: float, max_contrast: float
) -> jax.Array:
  """torchvision's ColorJitter on grey [B, H, W] images in [0, 1]: each image's pixels times a
  brightness factor in 1 ± max_brightness, then spread about the image's mean by a contrast
  factor in 1 ± max_contrast, clipped to [0, 1] after each."""
  rng_b, rng_c = jax.random.split(rng)
  if max_brightness:
    b = _factors(rng_b, images.shape[0], max_brightness)[:, None, None]
    images = jnp.clip(images * b, 0, 1)
  if max_contrast:
    c = _factors(rng_c, images.shape[0], max_contrast)[:, None, None]
    mean = images.mean(axis=(1, 2), keepdims=True)
    images = jnp.clip((images - mean) * c + mean, 0, 1)
  return images


def augment(
  rng: jax.Array,
  images: jax.Array,
  max_degrees: float = 0.0,
  max_shift: float = 0.0,
  max_scale: float = 0.0,
  max_brightness: float = 0.0,
  max_contrast: float = 0.0,
  elastic_alpha: float = 0.0,
  elastic_sigma: float = 4.0,
) -> jax.Array:
  """Random rotation (±max_degrees), zoom (1 ± max_scale), translation (±max_shift px), an
  elastic warp (elastic_field; alpha 0: none) and brightness/contrast jitter (jitter_intensity)
  of float [B, 28, 28] images in [0, 1].

  Applied before normalisation so that the filled-in border is black (0). A jitter at 0 adds
  nothing to the program, and rotation and shift draw from the same keys whatever else is on,
  so a config that leaves the newer jitters off trains on the same images as before they were.
  """
  batch = images.shape[0]
  if max_degrees or max_shift or max_scale or elastic_alpha:
    rng_angle, rng_shift = jax.random.split(rng)
    angles = jax.random.uniform(rng_angle, (batch,), minval=-1, maxval=1)
    angles = angles * jnp.deg2rad(max_degrees)
    shifts = jax.random.uniform(rng_shift, (batch, 2), minval=-max_shift, maxval=max_shift)
    scales = _factors(jax.random.fold_in(rng, 1), batch, max_scale) if max_scale else None
    field = (
      elastic_field(jax.random.fold_in(rng, 3), images.shape, elastic_alpha, elastic_sigma)
      if elastic_alpha
      else None
    )
    images = jax.vmap(_affine_one)(images, angles, shifts, scales, field)
  if max_brightness or max_contrast:
    images = jitter_intensity(jax.random.fold_in(rng, 2), images, max_brightness, max_contrast)
  return images


def preprocess(
  images_u8: jax.Array,
  rng: jax.Array | None = None,
  **jitter: float,
) -> jax.Array:
  """uint8 [B, 28, 28] -> normalised float32 [B, 28, 28, 1], augmented when `rng` is given
  (`jitter`: `augment`'s keyword arguments, FIELDS)."""
  x = images_u8.astype(jnp.float32) / 255.0
  if rng is not None:
    x = augment(rng, x, **jitter)
  return ((x - PIXEL_MEAN) / PIXEL_STD)[..., None]
