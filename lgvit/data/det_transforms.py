"""mmdetection's COCO instance-segmentation transforms as stateless TF ops (docs/detection.md, "Data").

Every random draw comes from the example's 2-int64 seed (``tf.random.stateless_*``), as in
:mod:`lgvit.data.seg_transforms`, so an example's augmentation is a pure function of its seed. In
mmdet's order (``LoadAnnotations(with_bbox, with_mask)``, ``Resize``, ``RandomFlip``, ``Normalize``,
``Pad``):

1. Ground truth: boxes ``[x1, y1, x2, y2]`` in pixels of the original image (COCO's ``[x, y, x + w,
   y + h]``); crowd objects and boxes under 1 px wide or high (or of zero area) are left out of the
   training targets, as mmdet's ``CocoDataset._parse_ann_info`` moves them to ``gt_bboxes_ignore``,
   which Mask R-CNN's assigners do not read. At most ``max_instances`` are kept (annotation order).
2. ``Resize``: a scale ``(long, short)`` (one of ``scales``, drawn uniformly: mmdet's
   ``multiscale_mode='value'``; one scale = the fixed 1x resize). ``keep_ratio=True``: mmcv's
   ``rescale_size``, factor ``min(long / max(h, w), short / min(h, w))`` and sides ``int(side * factor
   + 0.5)`` (:func:`lgvit.data.seg_transforms.rescale_size`); ``keep_ratio=False`` (LESA's 1024x1024):
   the image is stretched to exactly ``scale`` read as mmcv reads it, ``(w, h)``. The image is resized
   bilinearly (half-pixel centres, no antialiasing, rounded to uint8 as mmcv's uint8 resize); the
   masks with OpenCV's nearest rule (source index ``floor(dst * src / dst_size)``); boxes are
   multiplied by the per-axis factors ``new_w / w``, ``new_h / h`` and clipped to the new image.
   With ``crop_policy=True`` (the Swin detection configs' ``AutoAugment``, which the transformer recipes use),
   half of the images, drawn per image, take a second policy instead (:func:`crop_window`): resize to
   one of ``CROP_PRE_SCALES`` (shorter side 400, 500 or 600), crop a random ``crop_h`` x ``crop_w``
   window (each side drawn uniformly from ``CROP_SIZE_RANGE`` = 384..600 px, capped by the image: mmdet
   ``RandomCrop(crop_type='absolute_range', allow_negative_crop=True)``, offsets uniform over the
   margin), drop the objects whose clipped box is empty, and resize the window to one of ``scales``
   as above (mmdet ``Resize(override=True)``). The image is rounded to uint8 after each resize and the
   masks follow the composed nearest indices, as mmcv's two resizes do.
3. ``RandomFlip(0.5)``, horizontal: image and masks mirrored, boxes ``[w - x2, y1, w - x1, y2]``. (The
   Swin configs flip before ``AutoAugment``; flipping after the crop gives the same distribution, as
   the crop offsets are uniform over the margin.)
4. ``Normalize`` and 5. ``Pad``: mmdet normalises (ImageNet mean / std in RGB on the 0..255 scale) and
   then pads each image with 0 to a multiple of 32 and a batch to its largest image. Here the image
   leaves the host as uint8 (a quarter of float32's bytes per step), padded at the bottom / right to one
   fixed ``pad_size`` canvas (h, w) for static shapes, with its own size after resizing carried as
   ``image_hw``; the device normalises it (:func:`lgvit.modeling.normalize`, the constants of mmdet's
   ``img_norm_cfg``) and sets everything outside ``image_hw`` to 0, the normalised mean colour
   (:func:`lgvit.segmentation.zero_outside`), which is mmdet's padding exactly.

Masks leave the host at ``1 / mask_stride`` of the canvas, as uint8 *coverage*: entry ``[g, i, j]`` is
``round(255 * fraction of the canvas block [i*s:(i+1)*s, j*s:(j+1)*s] inside object g)`` after the
full-resolution resize and flip above, so ``mask_stride=1`` gives mmdet's binary mask times 255. A
RoIAlign of ``gt_masks / 255`` at box coordinates divided by the stride (then ``>= 0.5``) approximates
mmdet's 28x28 targets, which RoIAlign the full-resolution binary mask.
"""
from __future__ import annotations

from typing import Optional, Sequence

import tensorflow as tf

from lgvit import detection
from lgvit.data.seg_transforms import rescale_size

#: mmdet's 1x COCO scale and the shorter sides of the 3x multi-scale recipes (Swin's ``mstrain_480-800``).
SCALE_1X = tuple(detection.TEST_INPUT['scale'])  # (1333, 800)
MULTISCALE_3X = tuple((1333, short) for short in range(480, 801, 32))
#: The crop policy of the Swin detection configs' AutoAugment: its first resize and RandomCrop's size range.
CROP_PRE_SCALES = ((1333, 400), (1333, 500), (1333, 600))
CROP_SIZE_RANGE = (384, 600)


def check_geometry(scales: Sequence[Sequence[int]], keep_ratio: bool, pad_size: Sequence[int], mask_stride: int):
  """Refuses a canvas that a resized image might not fit, or that the mask stride does not divide."""
  ph, pw = pad_size
  if ph % mask_stride or pw % mask_stride:
    raise ValueError(f'pad_size {tuple(pad_size)} must be a multiple of mask_stride={mask_stride}')
  for scale in scales:
    fits = (scale[1] <= ph and scale[0] <= pw) if not keep_ratio else max(scale) <= min(ph, pw)
    if not fits:
      raise ValueError(f'an image resized to scale {tuple(scale)} (keep_ratio={keep_ratio}) may not fit the '
                       f'pad_size {tuple(pad_size)} canvas; with keep_ratio the long side {max(scale)} must fit '
                       'both canvas sides (portrait and landscape images)')


def target_size(h, w, scale: Sequence[int], keep_ratio: bool):
  """(new_h, new_w) int32 of an ``h`` x ``w`` image for one ``scale`` (tensors allowed)."""
  if keep_ratio:
    return rescale_size(h, w, scale)
  return tf.constant(scale[1], tf.int32), tf.constant(scale[0], tf.int32)


def choose_scale(seed, scales: Sequence[Sequence[int]]):
  """mmdet ``multiscale_mode='value'``: the index of one of ``scales``, uniformly (always 0 for one scale)."""
  if len(scales) == 1:
    return tf.constant(0, tf.int32)
  return tf.random.stateless_uniform([], seed, 0, len(scales), tf.int32)


def resize_to_scale(h, w, index, scales, keep_ratio: bool):
  """(new_h, new_w) for ``scales[index]`` (``index`` a tensor)."""
  sizes = tf.stack([tf.stack(target_size(h, w, s, keep_ratio)) for s in scales])
  return sizes[index][0], sizes[index][1]


def crop_window(seed, h, w):
  """The Swin configs' AutoAugment draw for one ``h`` x ``w`` image with the example's ``seed`` (2 ints;
  its own stream, apart from the scale and flip draws): ``(cropped, pre_hw, window)``, where
  ``cropped`` (bool) says whether the crop policy was chosen (probability 1/2), ``pre_hw`` = (h1, w1) is
  the size the image is resized to before cropping and ``window`` = (y0, x0, crop_h, crop_w) the crop in
  that resized image. Without the crop policy: ``pre_hw = (h, w)`` and the window is the whole image."""
  own = tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), 1)
  seeds = tf.random.experimental.stateless_split(own, 6)
  cropped = tf.random.stateless_uniform([], seeds[0]) < 0.5
  h1, w1 = resize_to_scale(h, w, choose_scale(seeds[1], CROP_PRE_SCALES), CROP_PRE_SCALES, True)
  low, high = CROP_SIZE_RANGE

  def draw(seed, lo, hi):  # uniform integer in [lo, hi]
    return tf.random.stateless_uniform([], seed, lo, hi + 1, tf.int32)

  crop_h = draw(seeds[2], tf.minimum(h1, low), tf.minimum(h1, high))
  crop_w = draw(seeds[3], tf.minimum(w1, low), tf.minimum(w1, high))
  y0, x0 = draw(seeds[4], 0, h1 - crop_h), draw(seeds[5], 0, w1 - crop_w)
  pick = lambda a, b: tf.where(cropped, a, b)
  zero = tf.constant(0, tf.int32)
  return cropped, (pick(h1, h), pick(w1, w)), (pick(y0, zero), pick(x0, zero), pick(crop_h, h), pick(crop_w, w))


def resize_image(image, new_h, new_w):
  """uint8 (h, w, 3) -> uint8 (new_h, new_w, 3): bilinear, half-pixel centres, rounded."""
  out = tf.image.resize(image, tf.stack([new_h, new_w]), 'bilinear', antialias=False)
  return tf.cast(tf.clip_by_value(tf.round(out), 0, 255), tf.uint8)


def nearest_indices(src: tf.Tensor, dst: tf.Tensor) -> tf.Tensor:
  """OpenCV ``INTER_NEAREST``'s source index of each of ``dst`` outputs: ``floor(i * src / dst)``."""
  ratio = tf.cast(src, tf.float64) / tf.cast(dst, tf.float64)
  idx = tf.cast(tf.floor(tf.cast(tf.range(dst), tf.float64) * ratio), tf.int32)
  return tf.minimum(idx, src - 1)


def resize_mask(mask, new_h, new_w):
  """(h, w) mask -> (new_h, new_w), OpenCV's nearest rule (mmcv ``imresize(interpolation='nearest')``)."""
  rows = nearest_indices(tf.shape(mask)[0], new_h)
  cols = nearest_indices(tf.shape(mask)[1], new_w)
  return tf.gather(tf.gather(mask, rows, axis=0), cols, axis=1)


def pool_mask(mask, stride: int, out_hw: Sequence[int]):
  """A 0/1 uint8 (h, w) mask at the top-left of the canvas -> (out_h, out_w) uint8 coverage of each
  ``stride`` x ``stride`` block, 0..255 (the module docstring)."""
  h, w = tf.shape(mask)[0], tf.shape(mask)[1]
  if stride == 1:
    full = mask * 255
  else:
    bh, bw = -(-h // stride), -(-w // stride)
    padded = tf.pad(mask, [[0, bh * stride - h], [0, bw * stride - w]])
    blocks = tf.reshape(tf.cast(padded, tf.int32), [bh, stride, bw, stride])
    count = tf.reduce_sum(blocks, axis=[1, 3])
    full = tf.cast((count * 255 * 2 + stride * stride) // (2 * stride * stride), tf.uint8)  # round half up
    h, w = bh, bw
  return tf.pad(full, [[0, out_hw[0] - h], [0, out_hw[1] - w]])


def pad_image(image, pad_size: Sequence[int]):
  """uint8 (h, w, 3) -> uint8 (pad_h, pad_w, 3), zeros at the bottom / right (the device replaces them
  by the mean colour after normalising)."""
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  x = tf.pad(image, [[0, pad_size[0] - h], [0, pad_size[1] - w], [0, 0]])
  return tf.ensure_shape(x, (*pad_size, 3))


def pixel_boxes(bbox, h, w):
  """TFDS ``BBoxFeature`` rows (normalised ymin, xmin, ymax, xmax) -> (N, 4) float32 x1, y1, x2, y2 pixels."""
  h, w = tf.cast(h, tf.float32), tf.cast(w, tf.float32)
  bbox = tf.reshape(tf.cast(bbox, tf.float32), [-1, 4])
  return tf.stack([bbox[:, 1] * w, bbox[:, 0] * h, bbox[:, 3] * w, bbox[:, 2] * h], axis=1)


def training_instances(boxes, is_crowd, area=None, max_instances: Optional[int] = 100):
  """Indices (K,) int32, K <= max_instances (None: all), of the objects mmdet trains on: not crowd, at
  least 1 px wide and high (1e-3 px slack for the float32 normalised boxes), positive area."""
  width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
  keep = ~tf.cast(is_crowd, tf.bool) & (width >= 1 - 1e-3) & (height >= 1 - 1e-3)
  if area is not None:
    keep &= tf.cast(area, tf.float32) > 0
  return tf.cast(tf.reshape(tf.where(keep), [-1]), tf.int32)[:max_instances]


def flip_boxes(boxes, w):
  w = tf.cast(w, tf.float32)
  return tf.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], axis=1)


def _pad_rows(x, rows: int):
  pad = [[0, rows - tf.shape(x)[0]]] + [[0, 0]] * (len(x.shape) - 1)
  return tf.pad(x, pad)


def transform(image, objects, seed=None, *, scales: Sequence[Sequence[int]] = (SCALE_1X,), keep_ratio: bool = True,
              pad_size: Sequence[int] = (1344, 1344), max_instances: int = 100, mask_stride: int = 2,
              hflip: bool = False, crop_policy: bool = False, scale_index: Optional[tf.Tensor] = None) -> dict:
  """One decoded image (h, w, 3) uint8 and its ``objects`` (``bbox`` (N, 4) normalised, ``label`` (N,),
  ``is_crowd`` (N,), ``mask`` (N,) PNG strings, optional ``area``) -> the per-example fields of the batch
  contract (docs/detection.md): ``image``, ``image_hw``, ``gt_boxes``, ``gt_labels``, ``gt_masks``,
  ``gt_valid``, and ``orig_hw``, ``scale`` (y, x factors). ``seed`` (2 ints) draws the scale among
  ``scales``, with ``hflip`` the flip and with ``crop_policy`` the crop policy (:func:`crop_window`; ``scale`` is
  then the product of both resizes' factors, which does not map the crop back: a training-only
  option); ``scale_index`` overrides the scale draw."""
  scales = tuple(tuple(int(v) for v in s) for s in scales)
  check_geometry(scales, keep_ratio, pad_size, mask_stride)
  seeds = tf.random.experimental.stateless_split(tf.cast(seed if seed is not None else [0, 0], tf.int64), 2)
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  index = choose_scale(seeds[0], scales) if scale_index is None else tf.cast(scale_index, tf.int32)
  if crop_policy:
    cropped, (pre_h, pre_w), (y0, x0, src_h, src_w) = crop_window(seed if seed is not None else [0, 0], h, w)
  else:
    src_h, src_w = h, w
  new_h, new_w = resize_to_scale(src_h, src_w, index, scales, keep_ratio)
  sy = tf.cast(new_h, tf.float32) / tf.cast(src_h, tf.float32)
  sx = tf.cast(new_w, tf.float32) / tf.cast(src_w, tf.float32)
  flip = (tf.random.stateless_uniform([], seeds[1]) < 0.5) if hflip else tf.constant(False)

  boxes = pixel_boxes(objects['bbox'], h, w)
  keep = training_instances(boxes, objects['is_crowd'], objects.get('area'), None if crop_policy else max_instances)
  boxes = tf.gather(boxes, keep)
  if crop_policy:
    source = tf.cond(cropped, lambda: resize_image(image, pre_h, pre_w)[y0:y0 + src_h, x0:x0 + src_w],
                     lambda: image)
    pre_y, pre_x = tf.cast(pre_h / h, tf.float32), tf.cast(pre_w / w, tf.float32)
    pre = tf.stack([pre_x, pre_y] * 2)
    offset = tf.cast(tf.stack([x0, y0] * 2), tf.float32)
    window = tf.cast(tf.stack([src_w, src_h] * 2), tf.float32)
    boxes = tf.clip_by_value(boxes * pre - offset, 0.0, window)
    inside = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])  # mmdet RandomCrop's valid_inds
    keep = tf.boolean_mask(keep, inside)[:max_instances]
    boxes = tf.boolean_mask(boxes, inside)[:max_instances]
    scale = tf.stack([sy * pre_y, sx * pre_x])
  else:
    source, scale = image, tf.stack([sy, sx])
  resized = resize_image(source, new_h, new_w)
  resized = tf.cond(flip, lambda: resized[:, ::-1], lambda: resized)
  boxes = boxes * tf.stack([sx, sy, sx, sy])
  limit = tf.cast(tf.stack([new_w, new_h, new_w, new_h]), tf.float32)
  boxes = tf.clip_by_value(boxes, 0.0, limit)
  boxes = tf.cond(flip, lambda: flip_boxes(boxes, new_w), lambda: boxes)
  labels = tf.cast(tf.gather(tf.reshape(objects['label'], [-1]), keep), tf.int32)

  mask_hw = (pad_size[0] // mask_stride, pad_size[1] // mask_stride)

  def one_mask(png):
    mask = tf.cast(tf.io.decode_png(png, channels=1)[..., 0] > 0, tf.uint8)
    if crop_policy:  # nearest resize to pre_hw, crop, nearest resize: one composed gather per axis
      rows = tf.gather(nearest_indices(h, pre_h), y0 + nearest_indices(src_h, new_h))
      cols = tf.gather(nearest_indices(w, pre_w), x0 + nearest_indices(src_w, new_w))
      mask = tf.gather(tf.gather(mask, rows, axis=0), cols, axis=1)
    else:
      mask = resize_mask(mask, new_h, new_w)
    mask = tf.cond(flip, lambda: mask[:, ::-1], lambda: mask)
    return tf.ensure_shape(pool_mask(mask, mask_stride, mask_hw), mask_hw)

  pngs = tf.gather(tf.reshape(objects['mask'], [-1]), keep)
  masks = tf.map_fn(one_mask, pngs, fn_output_signature=tf.TensorSpec(mask_hw, tf.uint8))
  count = tf.shape(keep)[0]
  return {
      'image': pad_image(resized, pad_size),
      'image_hw': tf.stack([new_h, new_w]),
      'gt_boxes': tf.ensure_shape(_pad_rows(boxes, max_instances), (max_instances, 4)),
      'gt_labels': tf.ensure_shape(_pad_rows(labels, max_instances), (max_instances,)),
      'gt_masks': tf.ensure_shape(_pad_rows(masks, max_instances), (max_instances, *mask_hw)),
      'gt_valid': tf.range(max_instances) < count,
      'orig_hw': tf.stack([h, w]),
      'scale': scale,
  }
