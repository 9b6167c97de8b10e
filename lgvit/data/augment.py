"""Training augmentations of the papers' recipes: RandAugment (TF, host) and RandomErasing (JAX, device).

RandAugment
-----------
A TensorFlow re-implementation of timm's PIL RandAugment, applied per image inside the tf.data map.
Every draw comes from stateless random ops seeded by the example's seed, so the augmented image is a
pure function of ``(image, seed)`` and a resumed run sees the very same pixels.

Policy strings follow timm's grammar: dash-separated sections, the first naming the variant, the
others ``<key><value>``:

* ``rand-...``: timm 0.4.12's RandAugment (the version Swin pins; NomMer and SALG use Swin's data
  code). Keys: ``m`` magnitude (default 10), ``n`` ops per image (2), ``mstd`` std of the per-op
  magnitude noise (0; > 100 means uniform in [0, m], as newer timm), ``mmax`` clip bound of the
  magnitude (10, newer timm), ``inc1`` the 'increasing severity' op set (timm takes any ``inc``
  value as on; here ``inc0`` is off). Each of the n ops is drawn
  uniformly with replacement from 15 ops and applied with probability 0.5; its magnitude is
  ``N(m, mstd)`` clipped to [0, mmax]. Translations are relative (0.45 of the side at level 10).
  ``rand-m9-mstd0.5-inc1`` is the NomMer/SALG/Swin/DeiT policy.
* ``cotrand-...``: CoTNet's modified RandAugment (its repo's ``datasets/rand_augment.py``), which
  the CoTNet configs spell ``rand-m15-mstd0.5-n2``. The op set is selected by the variant name,
  because the same string means something else to timm (there m15 is silently clipped to 10 and the
  ops differ). Differences to timm: 16 ops (the non-increasing set plus Cutout with half-size
  ``40 * level``), absolute translations (``100 * level`` pixels), each op fires with a probability
  drawn from U(0.2, 0.8), and magnitudes are clipped to [0, 15], so levels go past the usual
  maximum (rotate up to 45 degrees, shear 0.45, enhance factors up to 2.8; Solarize then never
  fires because its threshold exceeds 255, as in the original). Keys: ``m``, ``n``, ``mstd``.

A ``rand-`` policy with ``m`` above its clip bound is rejected (timm would silently clip it), with a
hint to use ``cotrand-`` or ``mmax``.

Both recipes fill uncovered pixels with the ImageNet mean (124, 116, 104): timm's create_transform
passes ``img_mean`` in the hparams, and CoTNet's factory does the same. Both train with bicubic
interpolation, which timm also passes to the geometric ops, so ``interpolation='bicubic'`` is the
default here.

Fidelity: every op reproduces the PIL operation timm calls (same look-up tables, the same integer
RGB->L conversion, float32 blending with truncation, SMOOTH filter with a copied border, and for
geometric ops PIL's affine sampler: pixel-centre coordinates, the source point must lie inside the
image, edge-clamped taps, PIL's a = -1 bicubic kernel, truncation to uint8). Point ops, blends and
Cutout match PIL bit for bit. The geometric sampler computes in float32 where PIL uses double, so a
value that is an integer in exact arithmetic can truncate to its neighbour: up to a few percent of
the values differ by one grey level (tests/test_augment.py bounds them). Posterize to 0 bits gives
black, as the Pillow of timm's era did (current Pillow rejects bits=0).

RandomErasing
-------------
timm's RandomErasing (count 1) on the normalised batch, vectorised over the images for jit.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import re
from typing import Callable

import jax
import jax.numpy as jnp

from lgvit import quiet

quiet.import_tensorflow()  # before TensorFlow's first import: no start-up noise, no matplotlib (lgvit/quiet.py)
import tensorflow as tf  # noqa: E402

from lgvit.data.transforms import MEAN_RGB

#: ``round(255 * IMAGENET_DEFAULT_MEAN)`` = (124, 116, 104), the fill timm's and CoTNet's factories pass as img_mean.
IMAGENET_MEAN_FILL = tuple(int(round(v)) for v in MEAN_RGB)

# ---------------------------------------------------------------------------------------------
# Point operations (PIL ImageOps): per-channel 256-entry look-up tables.
# ---------------------------------------------------------------------------------------------


def _apply_lut(image: tf.Tensor, lut: tf.Tensor) -> tf.Tensor:
  """``image.point(lut)`` with one table per channel; ``lut`` is (3, 256) of integers in [0, 255]."""
  flat_lut = tf.cast(tf.reshape(lut, [-1]), tf.uint8)
  return tf.gather(flat_lut, tf.cast(image, tf.int32) + tf.constant([0, 256, 512]))


def _histograms(image: tf.Tensor) -> tf.Tensor:
  """Per-channel histograms, (3, 256) int64."""
  flat = tf.reshape(tf.cast(image, tf.int32) + tf.constant([0, 256, 512]), [-1])
  counts = tf.math.bincount(flat, minlength=768, maxlength=768, dtype=tf.int64)
  return tf.reshape(counts, [3, 256])


def invert(image: tf.Tensor) -> tf.Tensor:
  return 255 - image


def posterize(image: tf.Tensor, bits) -> tf.Tensor:
  """Keeps the ``bits`` most significant bits (0 gives black, 8 or more the image itself)."""
  drop = 8 - tf.clip_by_value(tf.cast(bits, tf.int32), 0, 8)
  kept = tf.bitwise.left_shift(tf.bitwise.right_shift(tf.cast(image, tf.int32), drop), drop)
  return tf.cast(kept, tf.uint8)


def solarize(image: tf.Tensor, threshold) -> tf.Tensor:
  """Inverts values at or above ``threshold`` (256 or more: no change)."""
  pixels = tf.cast(image, tf.int32)
  return tf.cast(tf.where(pixels < tf.cast(threshold, tf.int32), pixels, 255 - pixels), tf.uint8)


def solarize_add(image: tf.Tensor, addition, threshold=128) -> tf.Tensor:
  """timm's SolarizeAdd: adds ``addition`` (saturating) to values below ``threshold``."""
  pixels = tf.cast(image, tf.int32)
  added = tf.minimum(pixels + tf.cast(addition, tf.int32), 255)
  return tf.cast(tf.where(pixels < tf.cast(threshold, tf.int32), added, pixels), tf.uint8)


def auto_contrast(image: tf.Tensor) -> tf.Tensor:
  """``ImageOps.autocontrast``: stretches each channel's [min, max] to [0, 255]."""
  lo = tf.cast(tf.reduce_min(image, axis=[0, 1]), tf.float64)[:, None]
  hi = tf.cast(tf.reduce_max(image, axis=[0, 1]), tf.float64)[:, None]
  # PIL's exact double arithmetic, truncated like Python's int(): ix * scale + offset.
  scale = tf.math.divide_no_nan(tf.constant(255.0, tf.float64), hi - lo)
  offset = -lo * scale
  ramp = tf.range(256, dtype=tf.float64)[None, :]
  stretched = tf.clip_by_value(tf.cast(ramp * scale + offset, tf.int32), 0, 255)
  lut = tf.where(hi > lo, stretched, tf.cast(ramp, tf.int32))
  return _apply_lut(image, lut)


def equalize(image: tf.Tensor) -> tf.Tensor:
  """``ImageOps.equalize`` (Pillow's integer algorithm, per channel)."""
  hist = _histograms(image)
  last_index = 255 - tf.argmax(tf.reverse(hist, axis=[1]) > 0, axis=1, output_type=tf.int32)
  last_count = tf.gather(hist, last_index, batch_dims=1)
  step = (tf.reduce_sum(hist, axis=1) - last_count) // 255
  used_values = tf.math.count_nonzero(hist, axis=1)
  safe_step = tf.maximum(step, 1)[:, None]
  below = tf.cumsum(hist, axis=1, exclusive=True)
  equalized = tf.minimum((safe_step // 2 + below) // safe_step, 255)
  identity = tf.range(256, dtype=tf.int64)[None, :]
  keep = ((used_values <= 1) | (step == 0))[:, None]
  return _apply_lut(image, tf.where(keep, identity, equalized))


# ---------------------------------------------------------------------------------------------
# Enhancements (PIL ImageEnhance): a blend of the image with a degenerate version of itself.
# ---------------------------------------------------------------------------------------------


def _blend(degenerate: tf.Tensor, image: tf.Tensor, factor) -> tf.Tensor:
  """``Image.blend(degenerate, image, factor)``: float32 arithmetic, clipped, truncated like PIL."""
  degenerate = tf.cast(degenerate, tf.float32)
  blended = degenerate + tf.cast(factor, tf.float32) * (tf.cast(image, tf.float32) - degenerate)
  return tf.cast(tf.clip_by_value(blended, 0.0, 255.0), tf.uint8)


def _luminance(image: tf.Tensor) -> tf.Tensor:
  """PIL's RGB -> L conversion: (19595 R + 38470 G + 7471 B + 2^15) >> 16, exact in int32."""
  pixels = tf.cast(image, tf.int32)
  weighted = 19595 * pixels[..., 0] + 38470 * pixels[..., 1] + 7471 * pixels[..., 2] + 32768
  return tf.bitwise.right_shift(weighted, 16)


def color(image: tf.Tensor, factor) -> tf.Tensor:
  """``ImageEnhance.Color``: 0 gives the grey image, 1 the image."""
  return _blend(_luminance(image)[..., None], image, factor)


def contrast(image: tf.Tensor, factor) -> tf.Tensor:
  """``ImageEnhance.Contrast``: blends with a flat image at the rounded mean luminance."""
  luminance = tf.cast(_luminance(image), tf.float64)
  mean = tf.floor(tf.reduce_mean(luminance) + 0.5)
  return _blend(tf.fill(tf.shape(image), tf.cast(mean, tf.float32)), image, factor)


def brightness(image: tf.Tensor, factor) -> tf.Tensor:
  """``ImageEnhance.Brightness``: blends with black."""
  return _blend(tf.zeros_like(image), image, factor)


_SMOOTH_KERNEL = ((1, 1, 1), (1, 5, 1), (1, 1, 1))  # PIL's ImageFilter.SMOOTH, divided by 13


def sharpness(image: tf.Tensor, factor) -> tf.Tensor:
  """``ImageEnhance.Sharpness``: blends with PIL's SMOOTH-filtered image (its 1-pixel border unfiltered)."""
  pixels = tf.cast(image, tf.float32)
  kernel = tf.tile(tf.constant(_SMOOTH_KERNEL, tf.float32)[:, :, None, None], [1, 1, 3, 1])
  weighted_sum = tf.nn.depthwise_conv2d(pixels[None], kernel, [1, 1, 1, 1], 'VALID')[0]
  # The sums are integers, so sum / 13 is never within 1/26 of a rounding tie: exact like PIL's clip8.
  smoothed = tf.floor(weighted_sum / 13.0 + 0.5)
  padded = tf.pad(smoothed, [[1, 1], [1, 1], [0, 0]])
  shape = tf.shape(image)
  rows = tf.range(shape[0])[:, None, None]
  cols = tf.range(shape[1])[None, :, None]
  interior = (rows > 0) & (rows < shape[0] - 1) & (cols > 0) & (cols < shape[1] - 1)
  return _blend(tf.where(interior, padded, pixels), image, factor)


# ---------------------------------------------------------------------------------------------
# Geometric operations: PIL's affine sampler.
# ---------------------------------------------------------------------------------------------


def _tap_offsets(interpolation: str) -> list[int]:
  """Offsets from floor(x) of the pixels an interpolated sample reads."""
  if interpolation == 'bilinear':
    return [0, 1]
  if interpolation == 'bicubic':
    return [-1, 0, 1, 2]
  raise ValueError(f"interpolation must be 'bilinear' or 'bicubic', got {interpolation!r}")


def _interpolate(taps: list[tf.Tensor], frac: tf.Tensor, interpolation: str) -> tf.Tensor:
  """PIL's 1-D interpolation formulas, evaluated in the same order (flat regions stay exact).

  Bicubic is PIL's transform kernel, the cubic convolution with a = -1 (not resize's a = -0.5).
  """
  if interpolation == 'bilinear':
    v0, v1 = taps
    return v0 + (v1 - v0) * frac
  v0, v1, v2, v3 = taps
  return v1 + frac * ((v2 - v0) + frac * ((2 * (v0 - v1) + v2 - v3) + frac * (v1 - v0 + v3 - v2)))


def _pil_sampler(image: tf.Tensor, src_x: tf.Tensor, src_y: tf.Tensor, fill, interpolation: str,
                 exact_rows: bool = False) -> tf.Tensor:
  """PIL's transform filter at the source points (src_x, src_y), (H, W) each, in continuous coordinates.

  A point outside [0, W) x [0, H) gets ``fill``; otherwise the taps around it (pixel centres, indices
  clamped to the image) are interpolated and the result truncated to uint8. ``exact_rows`` says that
  every src_y lies on a pixel centre (shears and translations along x), so one row of taps suffices.
  """
  shape = tf.shape(image)
  height, width = shape[0], shape[1]
  inside = ((src_x >= 0) & (src_x < tf.cast(width, tf.float32)) & (src_y >= 0) &
            (src_y < tf.cast(height, tf.float32)))
  src_x, src_y = src_x - 0.5, src_y - 0.5
  x0, y0 = tf.floor(src_x), tf.floor(src_y)
  offsets = _tap_offsets(interpolation)
  taps = len(offsets)
  # Replicating the edge 2 pixels wide equals PIL's clamping of each tap, and makes the taps of a
  # row contiguous: `windows[r, j]` holds the `taps` pixels from padded column j on, so a pixel
  # needs one gather per tap row instead of one per tap. Points inside the image have
  # floor in [-1, W - 1]; clipping to that range only moves points that get `fill` anyway.
  pad = 2
  padded = tf.concat([image[:1]] * pad + [image] + [image[-1:]] * pad, axis=0)
  padded = tf.concat([padded[:, :1]] * pad + [padded] + [padded[:, -1:]] * pad, axis=1)
  num_windows = width + 2 * pad + 1 - taps
  windows = tf.concat([padded[:, k:k + num_windows] for k in range(taps)], axis=-1)
  windows = tf.reshape(windows, [-1, taps * 3])
  first_col = tf.clip_by_value(tf.cast(x0, tf.int32), -1, width - 1) + (offsets[0] + pad)
  first_row = tf.clip_by_value(tf.cast(y0, tf.int32), -1, height - 1) + pad
  if exact_rows:
    tap_rows = first_row[..., None]
  else:
    tap_rows = first_row[..., None] + tf.constant(offsets, tf.int32)
  row_taps = tf.cast(tf.gather(windows, tap_rows * num_windows + first_col[..., None]), tf.float32)
  row_taps = tf.reshape(row_taps, [height, width, -1, taps, 3])  # (H, W, tap rows, taps, 3)
  along_x = _interpolate(tf.unstack(row_taps, axis=-2), (src_x - x0)[..., None, None], interpolation)
  if exact_rows:
    value = along_x[..., 0, :]
  else:
    value = _interpolate(tf.unstack(along_x, axis=-2), (src_y - y0)[..., None], interpolation)
  value = tf.cast(tf.clip_by_value(value, 0.0, 255.0), tf.uint8)
  return tf.where(inside[..., None], value, tf.constant(fill, tf.uint8))


def _pixel_centres(image: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  shape = tf.shape(image)
  xs = tf.range(tf.cast(shape[1], tf.float32))[None, :] + 0.5
  ys = tf.range(tf.cast(shape[0], tf.float32))[:, None] + 0.5
  return xs, ys


def affine(image: tf.Tensor, matrix, fill=IMAGENET_MEAN_FILL, interpolation: str = 'bicubic') -> tf.Tensor:
  """``Image.transform(size, AFFINE, matrix, resample, fillcolor=fill)`` on a uint8 (H, W, 3) image.

  ``matrix = (a, b, c, d, e, f)`` maps an output pixel centre (x + 0.5, y + 0.5) to the source point
  (a x + b y + c, d x + e y + f), in PIL's continuous coordinates.
  """
  a, b, c, d, e, f = tf.unstack(tf.cast(tf.convert_to_tensor(matrix), tf.float32))
  xs, ys = _pixel_centres(image)
  return _pil_sampler(image, a * xs + b * ys + c, d * xs + e * ys + f, fill, interpolation)


def _warp_rows(image: tf.Tensor, shear, shift, fill, interpolation: str) -> tf.Tensor:
  """The affine (1, shear, shift, 0, 1, 0): each row resampled along x, rows untouched."""
  xs, ys = _pixel_centres(image)
  src_x = xs + tf.cast(shear, tf.float32) * ys + tf.cast(shift, tf.float32)
  return _pil_sampler(image, src_x, tf.broadcast_to(ys, tf.shape(src_x)), fill, interpolation, exact_rows=True)


def _transpose(image: tf.Tensor) -> tf.Tensor:
  return tf.transpose(image, [1, 0, 2])


def rotate(image: tf.Tensor, degrees, fill=IMAGENET_MEAN_FILL, interpolation: str = 'bicubic') -> tf.Tensor:
  """``Image.rotate(degrees, resample, fillcolor=fill)``: counter-clockwise about the image centre."""
  shape = tf.cast(tf.shape(image), tf.float64)
  center_x, center_y = shape[1] / 2, shape[0] / 2
  angle = -tf.cast(degrees, tf.float64) * (math.pi / 180.0)
  a, b = tf.cos(angle), tf.sin(angle)
  d, e = -tf.sin(angle), tf.cos(angle)
  c = a * -center_x + b * -center_y + center_x
  f = d * -center_x + e * -center_y + center_y
  return affine(image, tf.stack([a, b, c, d, e, f]), fill, interpolation)


def shear_x(image: tf.Tensor, factor, fill=IMAGENET_MEAN_FILL, interpolation: str = 'bicubic') -> tf.Tensor:
  """The affine (1, factor, 0, 0, 1, 0)."""
  return _warp_rows(image, factor, 0.0, fill, interpolation)


def shear_y(image: tf.Tensor, factor, fill=IMAGENET_MEAN_FILL, interpolation: str = 'bicubic') -> tf.Tensor:
  """The affine (1, 0, 0, factor, 1, 0), i.e. shear_x of the transposed image."""
  return _transpose(_warp_rows(_transpose(image), factor, 0.0, fill, interpolation))


def translate_x(image: tf.Tensor, pixels, fill=IMAGENET_MEAN_FILL, interpolation: str = 'bicubic') -> tf.Tensor:
  """The affine (1, 0, pixels, 0, 1, 0): positive ``pixels`` move the content left."""
  return _warp_rows(image, 0.0, pixels, fill, interpolation)


def translate_y(image: tf.Tensor, pixels, fill=IMAGENET_MEAN_FILL, interpolation: str = 'bicubic') -> tf.Tensor:
  """The affine (1, 0, 0, 0, 1, pixels): positive ``pixels`` move the content up."""
  return _transpose(_warp_rows(_transpose(image), 0.0, pixels, fill, interpolation))


def cutout(image: tf.Tensor, center_x, center_y, half_size, fill=IMAGENET_MEAN_FILL) -> tf.Tensor:
  """CoTNet's Cutout: ``ImageDraw.rectangle`` from (int(max(0, c - s)), ...) to that + 2 s, inclusive."""
  shape = tf.shape(image)
  half_size = tf.cast(half_size, tf.int32)
  x0 = tf.cast(tf.maximum(0.0, tf.cast(center_x, tf.float32) - tf.cast(half_size, tf.float32)), tf.int32)
  y0 = tf.cast(tf.maximum(0.0, tf.cast(center_y, tf.float32) - tf.cast(half_size, tf.float32)), tf.int32)
  x1 = tf.minimum(shape[1], x0 + 2 * half_size)
  y1 = tf.minimum(shape[0], y0 + 2 * half_size)
  rows = tf.range(shape[0])[:, None, None]
  cols = tf.range(shape[1])[None, :, None]
  box = (rows >= y0) & (rows <= y1) & (cols >= x0) & (cols <= x1)
  return tf.where(box, tf.constant(fill, tf.uint8), image)


# ---------------------------------------------------------------------------------------------
# Policies.
# ---------------------------------------------------------------------------------------------

TIMM_OPS = ('AutoContrast', 'Equalize', 'Invert', 'Rotate', 'Posterize', 'Solarize', 'SolarizeAdd', 'Color',
            'Contrast', 'Brightness', 'Sharpness', 'ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel')
TIMM_INCREASING_OPS = ('AutoContrast', 'Equalize', 'Invert', 'Rotate', 'PosterizeIncreasing',
                       'SolarizeIncreasing', 'SolarizeAdd', 'ColorIncreasing', 'ContrastIncreasing',
                       'BrightnessIncreasing', 'SharpnessIncreasing', 'ShearX', 'ShearY', 'TranslateXRel',
                       'TranslateYRel')
COTNET_OPS = ('AutoContrast', 'Equalize', 'Invert', 'Rotate', 'Posterize', 'Solarize', 'SolarizeAdd', 'Color',
              'Contrast', 'Brightness', 'Sharpness', 'ShearX', 'ShearY', 'TranslateX', 'TranslateY', 'Cutout')


class RandAugmentPolicyError(ValueError):
  pass


@dataclasses.dataclass(frozen=True)
class RandAugmentPolicy:
  """What a policy string means. ``magnitude`` is on timm's 0..10 scale (level = magnitude / 10)."""
  ops: tuple[str, ...]
  magnitude: float = 10.0
  num_layers: int = 2
  magnitude_std: float = 0.0  # inf: uniform in [0, magnitude]
  magnitude_max: float = 10.0
  prob_range: tuple[float, float] = (0.5, 0.5)  # each op fires with probability ~ U(prob_range)
  translate_pct: float = 0.45  # relative translations at level 1
  translate_const: float = 100.0  # absolute translations (pixels) at level 1
  cutout_const: int = 40  # Cutout half-size (pixels) at level 1
  fill: tuple[int, int, int] = IMAGENET_MEAN_FILL


def parse_policy(policy: str) -> RandAugmentPolicy:
  """``'rand-m9-mstd0.5-inc1'`` (timm) or ``'cotrand-m15-mstd0.5-n2'`` (CoTNet) -> RandAugmentPolicy."""
  variant, *sections = policy.split('-')
  if variant not in ('rand', 'cotrand'):
    raise RandAugmentPolicyError(f"RandAugment policy {policy!r} must start with 'rand-' (timm) or 'cotrand-' "
                                 "(CoTNet's variant), e.g. 'rand-m9-mstd0.5-inc1'")
  allowed = {'m', 'n', 'mstd'} | ({'mmax', 'inc'} if variant == 'rand' else set())
  values = {}
  for section in sections:
    match = re.fullmatch(r'([a-z]+)(\d[\d.]*)', section)
    if not match or match.group(1) not in allowed:
      raise RandAugmentPolicyError(f'bad section {section!r} in RandAugment policy {policy!r}; {variant!r} '
                                   f'takes {", ".join(sorted(k + "<number>" for k in allowed))}')
    values[match.group(1)] = float(match.group(2))
  std = values.get('mstd', 0.0)
  common = dict(magnitude=values.get('m', 10.0), num_layers=int(values.get('n', 2)),
                magnitude_std=math.inf if std > 100 else std)
  if variant == 'cotrand':
    return RandAugmentPolicy(ops=COTNET_OPS, magnitude_max=15.0, prob_range=(0.2, 0.8), **common)
  spec = RandAugmentPolicy(ops=TIMM_INCREASING_OPS if values.get('inc', 0) else TIMM_OPS,
                           magnitude_max=values.get('mmax', 10.0), **common)
  if spec.magnitude > spec.magnitude_max:
    raise RandAugmentPolicyError(
        f'RandAugment policy {policy!r}: magnitude {spec.magnitude:g} exceeds the clip bound '
        f'{spec.magnitude_max:g}, so timm would silently use {spec.magnitude_max:g}. For CoTNet\'s variant write '
        f"'cotrand-{'-'.join(sections)}'; to go past 10 with timm's ops add 'mmax{spec.magnitude:g}'.")
  return spec


def op_arguments(name: str, magnitude, negate, image_hw, policy: RandAugmentPolicy) -> tuple:
  """The PIL-level arguments timm's ``level_fn`` derives from ``magnitude`` (after clipping)."""
  level = tf.cast(magnitude, tf.float64) / 10.0  # double like timm, so e.g. factor 2.8 rounds like PIL's
  signed = lambda value: tf.where(negate, -value, value)
  truncate = lambda value: tf.cast(value, tf.int32)  # Python's int() on a non-negative float
  height, width = (tf.cast(side, tf.float64) for side in image_hw)
  rules = {
      'AutoContrast': lambda: (),
      'Equalize': lambda: (),
      'Invert': lambda: (),
      'Rotate': lambda: (signed(level * 30.0),),
      'Posterize': lambda: (truncate(level * 4.0),),
      'PosterizeIncreasing': lambda: (4 - truncate(level * 4.0),),
      'Solarize': lambda: (truncate(level * 256.0),),
      'SolarizeIncreasing': lambda: (256 - truncate(level * 256.0),),
      'SolarizeAdd': lambda: (truncate(level * 110.0),),
      'ShearX': lambda: (signed(level * 0.3),),
      'ShearY': lambda: (signed(level * 0.3),),
      'TranslateXRel': lambda: (signed(level * policy.translate_pct) * width,),
      'TranslateYRel': lambda: (signed(level * policy.translate_pct) * height,),
      'TranslateX': lambda: (signed(level * policy.translate_const),),
      'TranslateY': lambda: (signed(level * policy.translate_const),),
      'Cutout': lambda: (truncate(level * policy.cutout_const),),
  }
  for enhance in ('Color', 'Contrast', 'Brightness', 'Sharpness'):
    rules[enhance] = lambda: (level * 1.8 + 0.1,)
    rules[enhance + 'Increasing'] = lambda: (tf.maximum(tf.constant(0.1, tf.float64), 1.0 + signed(level * 0.9)),)
  if name not in rules:
    raise KeyError(f'unknown RandAugment op {name!r}')
  return rules[name]()


def apply_op(image: tf.Tensor, name: str, magnitude, negate, seed, policy: RandAugmentPolicy,
             interpolation: str = 'bicubic') -> tf.Tensor:
  """One RandAugment op at a given (already clipped) magnitude; ``seed`` places the Cutout box."""
  shape = tf.shape(image)
  args = op_arguments(name, magnitude, negate, (shape[0], shape[1]), policy)
  base = name.replace('Increasing', '')
  if base in ('Rotate', 'ShearX', 'ShearY', 'TranslateX', 'TranslateY', 'TranslateXRel', 'TranslateYRel'):
    warp = {'Rotate': rotate, 'ShearX': shear_x, 'ShearY': shear_y, 'TranslateX': translate_x,
            'TranslateY': translate_y, 'TranslateXRel': translate_x, 'TranslateYRel': translate_y}[base]
    return warp(image, *args, fill=policy.fill, interpolation=interpolation)
  if base == 'Cutout':
    # CoTNet draws the centre with np.random.uniform(w), i.e. low=w, high=1: uniform on (1, w].
    u = tf.random.stateless_uniform([2], seed)
    size = tf.cast(tf.stack([shape[1], shape[0]]), tf.float32)
    center = size + (1.0 - size) * u
    return cutout(image, center[0], center[1], *args, fill=policy.fill)
  pointwise = {'AutoContrast': auto_contrast, 'Equalize': equalize, 'Invert': invert, 'Posterize': posterize,
               'Solarize': solarize, 'SolarizeAdd': solarize_add, 'Color': color, 'Contrast': contrast,
               'Brightness': brightness, 'Sharpness': sharpness}
  return pointwise[base](image, *args)


def _sample_magnitude(seed, policy: RandAugmentPolicy):
  magnitude = tf.constant(policy.magnitude, tf.float32)
  if policy.magnitude_std == math.inf:
    magnitude = tf.random.stateless_uniform([], seed, 0.0, policy.magnitude)
  elif policy.magnitude_std > 0:
    magnitude += policy.magnitude_std * tf.random.stateless_normal([], seed)
  return tf.clip_by_value(magnitude, 0.0, policy.magnitude_max)


Augment = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]


def randaugment(policy: RandAugmentPolicy, interpolation: str = 'bicubic') -> Augment:
  """RandAugment as a pure function of (uint8 (H, W, 3) image, int64[2] seed)."""
  _tap_offsets(interpolation)  # validate early

  def random_op(image, seed):
    seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 6))
    choice_seed, prob_seed, fire_seed, magnitude_seed, sign_seed, cutout_seed = seeds
    index = tf.random.stateless_uniform([], choice_seed, 0, len(policy.ops), dtype=tf.int32)
    lo, hi = policy.prob_range
    prob = lo if lo == hi else tf.random.stateless_uniform([], prob_seed, lo, hi)
    fires = tf.random.stateless_uniform([], fire_seed) <= prob  # timm skips the op when random() > p
    magnitude = _sample_magnitude(magnitude_seed, policy)
    negate = tf.random.stateless_uniform([], sign_seed) > 0.5
    branches = [
        functools.partial(apply_op, image, name, magnitude, negate, cutout_seed, policy, interpolation)
        for name in policy.ops
    ]
    return tf.cond(fires, lambda: tf.switch_case(index, branches), lambda: image)

  def augment(image, seed):
    image = tf.convert_to_tensor(image, tf.uint8)
    static_shape = image.shape
    for layer_seed in tf.unstack(tf.random.experimental.stateless_split(seed, policy.num_layers)):
      image = random_op(image, layer_seed)
      image.set_shape(static_shape)
    return image

  return augment


def randaugment_from_policy(policy: str, *, interpolation: str = 'bicubic') -> Augment:
  """The pipeline's entry point: a timm/CoTNet policy string -> ``augment(image_uint8_hwc, seed)``."""
  return randaugment(parse_policy(policy), interpolation)


# ---------------------------------------------------------------------------------------------
# Random erasing (on device).
# ---------------------------------------------------------------------------------------------

ERASE_MODES = ('pixel', 'rand', 'const')


def random_erasing(rng: jax.Array, images: jax.Array, prob: float, mode: str = 'pixel', *,
                   min_area: float = 0.02, max_area: float = 1 / 3, min_aspect: float = 0.3,
                   max_attempts: int = 10) -> jax.Array:
  """timm's RandomErasing (count 1) on normalised NHWC images, independently per image.

  With probability ``prob`` an image gets one box of area U(min_area, max_area) * H * W and
  log-uniform aspect ratio in [min_aspect, 1 / min_aspect]; of the ``max_attempts`` proposals the
  first that fits strictly inside the image is used (none fits: the image is left alone). The box is
  filled with per-pixel N(0, 1) noise ('pixel'), one N(0, 1) colour per image ('rand') or zeros
  ('const'), i.e. in normalised space like timm.
  """
  if mode not in ERASE_MODES:
    raise ValueError(f'random erasing mode must be one of {ERASE_MODES}, got {mode!r}')
  if prob <= 0:
    return images
  batch, height, width, channels = images.shape
  k_uniform, k_fill = jax.random.split(rng)
  # One draw for all uniforms: jax.random ops are slow to compile on CPU, one per call.
  uniforms = jax.random.uniform(k_uniform, (batch, 2 * max_attempts + 3))
  area_u, aspect_u = uniforms[:, :max_attempts], uniforms[:, max_attempts:2 * max_attempts]
  top_u, left_u, fire_u = uniforms[:, -3], uniforms[:, -2], uniforms[:, -1]
  area = (min_area + (max_area - min_area) * area_u) * (height * width)
  log_lo, log_hi = math.log(min_aspect), math.log(1 / min_aspect)
  aspect = jnp.exp(log_lo + (log_hi - log_lo) * aspect_u)
  box_h = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
  box_w = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
  fits = (box_w < width) & (box_h < height)
  first = jnp.argmax(fits, axis=1)[:, None]
  box_h = jnp.take_along_axis(box_h, first, axis=1)[:, 0]
  box_w = jnp.take_along_axis(box_w, first, axis=1)[:, 0]
  # random.randint(0, H - h) is inclusive of both ends.
  top = jnp.floor(top_u * (height - box_h + 1)).astype(jnp.int32)
  left = jnp.floor(left_u * (width - box_w + 1)).astype(jnp.int32)
  erase = jnp.any(fits, axis=1) & (fire_u < prob)
  rows = jnp.arange(height)[None, :, None]
  cols = jnp.arange(width)[None, None, :]
  box = ((rows >= top[:, None, None]) & (rows < (top + box_h)[:, None, None]) & (cols >= left[:, None, None]) &
         (cols < (left + box_w)[:, None, None]) & erase[:, None, None])
  if mode == 'pixel':
    fill = jax.random.normal(k_fill, images.shape, images.dtype)
  elif mode == 'rand':
    fill = jax.random.normal(k_fill, (batch, 1, 1, channels), images.dtype)
  else:
    fill = jnp.zeros((), images.dtype)
  return jnp.where(box[..., None], fill, images)
