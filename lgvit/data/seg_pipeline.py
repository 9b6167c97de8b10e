"""Semantic segmentation input: ADE20K (``lgvit_ade20k``, lgvit/data/ade20k.py) or the embedded ``lgvit_digits_seg``.

The same design as the classification pipeline (:mod:`lgvit.data.pipeline`): the training stream of
an epoch is a pure function of ``(seed, epoch, shard)`` (exact resume, per-host shards), every
augmentation draw is a stateless function of the example's position, an undecodable example keeps
its slot with ``valid == 0``, and the evaluation split is padded and masked so that every image
counts once. Both datasets store the image as ``image`` and the class-index map as ``annotation``.

Training: mmseg's ADE20K transforms (:func:`lgvit.data.seg_transforms.train_transform`) to a
``data.image_size`` square crop, with the ``content`` size of the image inside it (the rest is
padding, set to the mean colour on the device). Evaluation (mmseg ``mode='whole'``, image by image):
the image is resized with the keep-ratio rule to ``data.scale`` and padded at the bottom/right to a
multiple of the model's size divisor (32), as ``lgvit.segmentation.infer_whole`` does; images are
batched by that padded shape (one compiled program per shape, no image pooled with another's padding);
the label stays at its original resolution, padded with the ignore label to ``seg.label_canvas``. The
eval step resizes the logits of the scaled region back to each image's own size
(``lgvit.segmentation_task.make_eval_step``). An image whose scaled size exceeds ``seg.eval_canvas`` is
scaled down further to fit, a label larger than its canvas is resized (nearest) to fit; both are
counted (``eval_downscaled``) and listed in docs/segmentation.md as where the numbers can differ from
mmseg's.
"""
from __future__ import annotations

import tensorflow as tf
import tensorflow_datasets as tfds

from lgvit.data import pipeline
from lgvit.data import seg_transforms
from lgvit.data.seg_transforms import IGNORE_LABEL
from lgvit.errors import DatasetNotFoundError

ENCODED = ('image', 'annotation')
#: Class counts of the segmentation datasets lgvit knows (after reduce_zero_label for ADE20K).
NUM_CLASSES = {'lgvit_ade20k': 150, 'lgvit_digits_seg': 11}


def num_classes(builder, reduce_zero_label: bool) -> int | None:
  """The dataset's class count as the model sees it, or None for a dataset lgvit does not know."""
  if builder.name == 'scene_parse150':
    raise DatasetNotFoundError(
        "TFDS's scene_parse150 holds the Places Challenge 2017 *instance* masks (100 categories in the red "
        'channel), not the 150-class ADE20K semantic labels; use data.dataset=lgvit_ade20k, built from '
        'ADEChallengeData2016.zip (docs/segmentation.md)')
  n = NUM_CLASSES.get(builder.name)
  if n is None:
    return None
  if builder.name == 'lgvit_digits_seg' and reduce_zero_label:
    return n - 1
  return n


def decode(example):
  image = tf.io.decode_image(example['image'], channels=3, expand_animations=False)
  # As stored: ADE20K's annotations are 1-channel PNGs of class indices (a colour conversion would alter them).
  label = tf.io.decode_image(example['annotation'], channels=0, expand_animations=False)[..., 0]
  return image, tf.cast(label, tf.uint8)


def shard_dataset(data, aug, builder, *, seed: int, epoch: int, start_step: int, steps_per_epoch: int,
                  shard_batch: int, shard: int, shard_count: int) -> tf.data.Dataset:
  """One shard's train batches: ``image`` (B, S, S, 3) uint8, ``label`` (B, S, S) uint8 (255 = ignore), ``valid``."""
  ds, seed_of = pipeline.shard_records(data, builder, seed=seed, epoch=epoch, start_step=start_step,
                                       steps_per_epoch=steps_per_epoch, shard_batch=shard_batch, shard=shard,
                                       shard_count=shard_count, encoded=ENCODED)
  crop = (data.image_size, data.image_size)

  def preprocess(pos, example):
    image, label = decode(example)
    image, label, content = seg_transforms.train_transform(
        image, label, seed_of(pos), scale=tuple(data.scale), ratio_range=tuple(aug.ratio_range), crop=crop,
        cat_max_ratio=aug.cat_max_ratio, hflip=aug.hflip, photometric=aug.photometric,
        zero_label_is_ignored=data.reduce_zero_label)
    return {'image': image, 'label': label, 'content': content, 'valid': tf.constant(1, tf.int32)}

  def unreadable(pos, example):
    del pos, example
    return {'image': pipeline._placeholder_image(data.image_size),
            'label': tf.fill(crop, tf.constant(IGNORE_LABEL, tf.uint8)), 'content': tf.constant(crop, tf.int32),
            'valid': tf.constant(0, tf.int32)}

  return pipeline._map_or_flag(ds, preprocess, unreadable).batch(shard_batch, drop_remainder=True)


def _fit(h, w, bound):
  """(h, w) scaled down (never up) to fit inside ``bound``, and whether it had to be."""
  factor = tf.minimum(tf.constant(1.0, tf.float64), tf.minimum(bound[0] / tf.cast(h, tf.float64), bound[1] / tf.cast(w, tf.float64)))
  fitted_h = tf.maximum(tf.cast(tf.floor(tf.cast(h, tf.float64) * factor), tf.int32), 1)
  fitted_w = tf.maximum(tf.cast(tf.floor(tf.cast(w, tf.float64) * factor), tf.int32), 1)
  return fitted_h, fitted_w, factor < 1.0


def scale_for_eval(image, scale, bound):
  """mmseg's test ``Resize`` (keep ratio, to ``scale``) on a uint8 image, rounded back to uint8 as
  mmcv's resize of a uint8 image is; scaled down further if it exceeds ``bound`` (h, w). Returns the
  image and whether it was scaled down."""
  sh, sw = seg_transforms.rescale_size(tf.shape(image)[0], tf.shape(image)[1], scale)
  sh, sw, shrunk = _fit(sh, sw, bound)
  scaled = tf.image.resize(image, (sh, sw), 'bilinear')
  return tf.cast(tf.clip_by_value(tf.round(scaled), 0, 255), tf.uint8), shrunk


def padded_side(side, size_divisor: int):
  return (side + size_divisor - 1) // size_divisor * size_divisor


def eval_example(image, label, *, scale, canvas, label_canvas, reduce_zero_label: bool, size_divisor: int = 32):
  """One decoded example -> the fields of the segmentation eval (see the module docstring): the image
  scaled and padded at the bottom/right to the next multiple of ``size_divisor`` (its own shape; the
  padding is masked on the device), the label at its own size on the fixed ``label_canvas``."""
  if reduce_zero_label:
    label = seg_transforms.reduce_zero_label(label)
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  scaled, image_shrunk = scale_for_eval(image, scale, canvas)
  sh, sw = tf.shape(scaled)[0], tf.shape(scaled)[1]
  scaled = tf.pad(scaled, [[0, padded_side(sh, size_divisor) - sh], [0, padded_side(sw, size_divisor) - sw], [0, 0]])
  lh, lw, label_shrunk = _fit(h, w, label_canvas)
  label = tf.cond(label_shrunk, lambda: tf.image.resize(label[..., None], (lh, lw), 'nearest')[..., 0],
                  lambda: label)
  label = tf.pad(label, [[0, label_canvas[0] - lh], [0, label_canvas[1] - lw]], constant_values=IGNORE_LABEL)
  return {'image': scaled, 'label': tf.ensure_shape(label, tuple(label_canvas)),
          'size': tf.stack([lh, lw]), 'scaled': tf.stack([sh, sw]),
          'downscaled': tf.cast(image_shrunk | label_shrunk, tf.int32)}


def eval_dataset(data, seg, builder, *, local_batch: int, process_index: int, process_count: int, split=None,
                 size_divisor: int = 32) -> tf.data.Dataset:
  """This process's shard of the eval split, each image once, in batches of one padded image shape
  (the bucket: its scaled size rounded up to ``size_divisor``) of at most ``local_batch`` images:
  ``image`` (B, bucket h, bucket w, 3) uint8, ``label`` (label canvas), ``size`` (label's own h, w),
  ``scaled`` (the image's h, w inside the bucket), ``downscaled``, ``mask``, ``unreadable``.

  An image whose bucket is not yet full waits for more images of its shape; the last, partial batch
  of each bucket comes at the end. The caller pads a partial batch (mask 0) to a fixed size, so there
  is one compiled program per bucket shape."""
  canvas, label_canvas = tuple(seg.eval_canvas), tuple(seg.label_canvas)
  shard = pipeline.process_split(split or data.eval_split, process_index, process_count)
  ds = builder.as_dataset(split=shard, shuffle_files=False, decoders={k: tfds.decode.SkipDecoding() for k in ENCODED})

  def preprocess(example):
    image, label = decode(example)
    out = eval_example(image, label, scale=tuple(data.scale), canvas=canvas, label_canvas=label_canvas,
                       reduce_zero_label=data.reduce_zero_label, size_divisor=size_divisor)
    return {**out, 'mask': tf.constant(1, tf.int32), 'unreadable': tf.constant(0, tf.int32)}

  def unreadable(example):
    del example
    return {'image': tf.zeros((size_divisor, size_divisor, 3), tf.uint8),
            'label': tf.fill(label_canvas, tf.constant(IGNORE_LABEL, tf.uint8)),
            'size': tf.constant([1, 1], tf.int32), 'scaled': tf.constant([1, 1], tf.int32),
            'downscaled': tf.constant(0, tf.int32), 'mask': tf.constant(0, tf.int32),
            'unreadable': tf.constant(1, tf.int32)}

  ds = pipeline._map_or_flag(ds, preprocess, unreadable)

  def bucket(example):
    side = tf.cast(tf.shape(example['image'])[:2], tf.int64)
    return side[0] * 2**20 + side[1]

  ds = ds.group_by_window(bucket, lambda _, window: window.batch(local_batch), window_size=local_batch)
  return ds.prefetch(tf.data.AUTOTUNE)
