"""mmsegmentation's ADE20K training transforms as stateless TF ops (docs/segmentation.md).

Every draw comes from a 2-int64 seed (``tf.random.stateless_*``), so an example's augmentation is a
pure function of its seed, as in :mod:`lgvit.data.pipeline` (exact resume). In mmseg's order:

1. ``reduce_zero_label``: ADE20K's 0 ("other") -> 255 (ignored), classes 1..150 -> 0..149;
2. ``Resize(img_scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True)``: a ratio r ~ U(0.5, 2.0),
   the scale truncated to integers (``int(2048 r), int(512 r)``, as mmseg's ``random_sample_ratio``), the
   image rescaled so that its long side <= that long bound and short side <= the short one (bilinear;
   labels nearest);
3. ``RandomCrop(512, cat_max_ratio=0.75)``: up to 10 tries for a crop in which no class covers 75% of
   the non-ignored pixels (and at least two classes occur), else an 11th crop;
4. ``RandomFlip(0.5)``;
5. ``PhotoMetricDistortion``: each with probability 1/2, brightness +-32, contrast x U(0.5, 1.5)
   (before or after the HSV steps, 1/2 each), saturation x U(0.5, 1.5) then truncated to uint8 steps of
   the 0..255 saturation channel, hue + an integer in [-18, 18) (numpy's ``randint(-18, 18)``, of 180),
   each step truncated to uint8 as mmseg does; TF's float HSV stands in for OpenCV's uint8 HSV;
6. ``Pad(512, pad_val=0, seg_pad_val=255)`` at the bottom/right. mmseg pads *after* ``Normalize``, so
   the padded pixels are the mean colour; the uint8 batch cannot hold the mean exactly, so the example
   carries its ``content`` size and the train step zeroes the normalised pixels outside it
   (:func:`lgvit.segmentation.zero_outside`).
"""
from __future__ import annotations

from typing import Sequence

import tensorflow as tf

IGNORE_LABEL = 255
CROP_TRIES = 10  # mmseg RandomCrop


def reduce_zero_label(label: tf.Tensor) -> tf.Tensor:
  """0 -> 255, k -> k - 1, 255 stays 255 (uint8), as mmseg's ``LoadAnnotations(reduce_zero_label=True)``."""
  label = tf.cast(label, tf.int32)
  return tf.cast(tf.where((label == 0) | (label == IGNORE_LABEL), IGNORE_LABEL, label - 1), tf.uint8)


def rescale_size(h: tf.Tensor, w: tf.Tensor, scale: Sequence[float], ratio=None) -> tuple[tf.Tensor, tf.Tensor]:
  """mmcv keep-ratio rule (as :func:`lgvit.segmentation.rescale_size`) on tensors, for ``scale`` or, with
  ``ratio`` (a tensor: the random resize's draw), for mmseg's ``(int(long * ratio), int(short * ratio))``."""
  h, w = tf.cast(h, tf.float64), tf.cast(w, tf.float64)
  long, short = float(max(scale)), float(min(scale))
  if ratio is not None:
    long, short = tf.floor(long * ratio), tf.floor(short * ratio)
  factor = tf.minimum(long / tf.maximum(h, w), short / tf.minimum(h, w))
  return tf.cast(tf.floor(h * factor + 0.5), tf.int32), tf.cast(tf.floor(w * factor + 0.5), tf.int32)


def random_resize(image, label, seed, scale: Sequence[int], ratio_range: Sequence[float]):
  ratio = tf.random.stateless_uniform([], seed, ratio_range[0], ratio_range[1], tf.float64)
  h, w = rescale_size(tf.shape(image)[0], tf.shape(image)[1], scale, ratio)
  image = tf.image.resize(image, (h, w), 'bilinear')
  label = tf.image.resize(label[..., None], (h, w), 'nearest')[..., 0]
  return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8), label


def choose_crop(label, offsets, crop: Sequence[int], cat_max_ratio: float):
  """The index into ``offsets`` (CROP_TRIES + 1, 2) of mmseg's crop: the first of the first 10 whose
  class histogram passes (>1 class, largest share < cat_max_ratio), else the last one."""
  ch, cw = crop

  def passes(offset):
    window = tf.cast(label[offset[0]:offset[0] + ch, offset[1]:offset[1] + cw], tf.int32)
    counts = tf.math.bincount(tf.reshape(window, [-1]), minlength=256, maxlength=256)[:IGNORE_LABEL]
    total = tf.reduce_sum(counts)
    many = tf.math.count_nonzero(counts) > 1
    return many & (tf.cast(tf.reduce_max(counts), tf.float32) < cat_max_ratio * tf.cast(total, tf.float32))

  ok = tf.map_fn(passes, offsets[:CROP_TRIES], fn_output_signature=tf.bool)
  return tf.where(tf.reduce_any(ok), tf.argmax(tf.cast(ok, tf.int32), output_type=tf.int32), CROP_TRIES)


def random_crop(image, label, seed, crop: Sequence[int], cat_max_ratio: float):
  ch, cw = crop
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  margins = tf.stack([tf.maximum(h - ch, 0) + 1, tf.maximum(w - cw, 0) + 1])
  draws = tf.random.stateless_uniform([CROP_TRIES + 1, 2], seed, 0, 2**31 - 1, tf.int32)
  offsets = draws % margins[None, :]  # mmseg: randint(0, margin + 1)
  pick = choose_crop(label, offsets, crop, cat_max_ratio) if cat_max_ratio < 1.0 else 0
  y, x = offsets[pick][0], offsets[pick][1]
  return image[y:y + ch, x:x + cw], label[y:y + ch, x:x + cw]


def hue_shift(seed) -> tf.Tensor:
  """The hue step in OpenCV's units (degrees / 2): numpy's ``randint(-18, 18)``, i.e. -18..17."""
  return tf.random.stateless_uniform([], seed, -18, 18, tf.int32)


def scale_saturation(saturation, alpha):
  """A 0..1 saturation times ``alpha`` on OpenCV's uint8 scale: clipped to 0..255, truncated, back to 0..1."""
  return tf.floor(tf.clip_by_value(saturation * 255.0 * alpha, 0.0, 255.0)) / 255.0


def photometric_distortion(image, seed):
  """mmseg ``PhotoMetricDistortion`` (defaults) on a uint8 RGB image."""
  s = tf.random.experimental.stateless_split(seed, 9)
  coin = lambda i: tf.random.stateless_uniform([], s[i]) < 0.5
  uniform = lambda i, lo, hi: tf.random.stateless_uniform([], s[i], lo, hi)

  def to_uint8(x):  # mmseg clips to [0, 255] and casts to uint8 after every step
    return tf.floor(tf.clip_by_value(x, 0.0, 255.0))

  x = tf.cast(image, tf.float32)
  x = tf.where(coin(0), to_uint8(x + uniform(1, -32.0, 32.0)), x)
  contrast_alpha = uniform(3, 0.5, 1.5)
  contrast_first = coin(4)
  do_contrast = coin(2)
  x = tf.where(do_contrast & contrast_first, to_uint8(x * contrast_alpha), x)
  hsv = tf.image.rgb_to_hsv(x / 255.0)
  saturation = tf.where(coin(5), scale_saturation(hsv[..., 1], uniform(6, 0.5, 1.5)), hsv[..., 1])
  hue_delta = tf.cast(hue_shift(s[8]), tf.float32) / 180.0
  hue = tf.where(coin(7), tf.math.floormod(hsv[..., 0] + hue_delta, 1.0), hsv[..., 0])
  x = to_uint8(tf.image.hsv_to_rgb(tf.stack([hue, saturation, hsv[..., 2]], -1)) * 255.0 + 0.5)
  x = tf.where(do_contrast & ~contrast_first, to_uint8(x * contrast_alpha), x)
  return tf.cast(x, tf.uint8)


def train_transform(image, label, seed, *, scale: Sequence[int] = (2048, 512), ratio_range=(0.5, 2.0),
                    crop: Sequence[int] = (512, 512), cat_max_ratio: float = 0.75, hflip: bool = True,
                    photometric: bool = True, zero_label_is_ignored: bool = True):
  """(H, W, 3) uint8 image and (H, W) label -> a (crop, crop, 3) uint8 image, a (crop, crop) uint8 label and
  the (2,) int32 ``content`` size: the image fills ``[:content[0], :content[1]]``, the rest is padding."""
  seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 4)
  label = tf.cast(label, tf.uint8)
  if zero_label_is_ignored:
    label = reduce_zero_label(label)
  image, label = random_resize(image, label, seeds[0], scale, ratio_range)
  image, label = random_crop(image, label, seeds[1], crop, cat_max_ratio)
  if hflip:
    flip = tf.random.stateless_uniform([], seeds[2]) < 0.5
    image = tf.where(flip, image[:, ::-1], image)
    label = tf.where(flip, label[:, ::-1], label)
  if photometric:
    image = photometric_distortion(image, seeds[3])
  content = tf.shape(image)[:2]
  pad_h, pad_w = crop[0] - content[0], crop[1] - content[1]
  image = tf.pad(image, [[0, pad_h], [0, pad_w], [0, 0]])
  label = tf.pad(label, [[0, pad_h], [0, pad_w]], constant_values=IGNORE_LABEL)
  return tf.ensure_shape(image, (*crop, 3)), tf.ensure_shape(label, tuple(crop)), tf.cast(content, tf.int32)
