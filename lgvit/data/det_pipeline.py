"""Detection / instance-segmentation input: COCO (``lgvit_coco/2017``, lgvit/data/coco.py) or the embedded
``lgvit_digits_det`` (lgvit/data/digits_det.py); docs/detection.md, "Data".

The design of :mod:`lgvit.data.pipeline` and :mod:`lgvit.data.seg_pipeline`: the training stream of an
epoch is a pure function of ``(seed, epoch, shard)`` (exact resume: consumed records are skipped
before their image and masks are decoded), every augmentation draw is a stateless function of the
example's position, an undecodable example keeps its slot with ``valid == 0``, and the evaluation split
is padded with ``mask == 0`` slots so that every image counts once. The transforms are
:func:`lgvit.data.det_transforms.transform`'s (mmdet's Resize, RandomFlip, Normalize, Pad to one canvas).

Batch contract (B images, G = ``data.max_instances``, canvas (H, W) = ``data.pad_size``, s = ``data.mask_stride``):

=============  =====================  =======  =====================================================
key            shape                  dtype    meaning
=============  =====================  =======  =====================================================
image          (B, H, W, 3)           uint8    the resized (flipped) image, 0 outside ``image_hw``
image_hw       (B, 2)                 int32    (h, w) of the resized image in the canvas' top-left
gt_boxes       (B, G, 4)              float32  x1, y1, x2, y2 pixels of the resized (flipped) image
gt_labels      (B, G)                 int32    0-based contiguous class (COCO: 0..79)
gt_masks       (B, G, H / s, W / s)   uint8    coverage 0..255 of each s x s canvas block
gt_valid       (B, G)                 bool     a real, trainable object (crowd ones are never in)
valid          (B,)                   int32    train: 0 for an undecodable image's slot
=============  =====================  =======  =====================================================

The eval batches add ``image_id`` (B,) int64 (COCO's), ``orig_hw`` (B, 2) int32 (the image's size
before resizing), ``scale`` (B, 2) float32 (the y, x resize factors: a box maps back to the original
image as ``box / [sx, sy, sx, sy]``), ``mask`` (B,) int32 (0: padding slot) and ``unreadable`` (B,) int32;
their gt fields follow the training rule (crowd left out), so exact COCO metrics should come from
:func:`coco_ground_truth` (every object, crowd ones included, at the original resolution).

Config fields read (``default_fields`` sets their defaults on a config): ``data.dataset``,
``data.train_split``, ``data.eval_split``, ``data.shuffle_buffer``, ``data.cache_train``, ``data.shards``
(as classification), ``data.scale`` (long, short; mmdet ``img_scale``), ``data.keep_ratio``,
``data.pad_size``, ``data.max_instances``, ``data.mask_stride``; ``aug.hflip``, ``aug.scales`` (the
multi-scale list, mmdet ``multiscale_mode='value'``; empty: ``data.scale``) and ``aug.autoaugment_crop`` (the Swin
configs' AutoAugment crop policy, :func:`lgvit.data.det_transforms.crop_window`; absent: off).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from pycocotools import mask as mask_utils

from lgvit import detection
from lgvit.data import classes, det_transforms, pipeline

#: How the records are read: image and masks stay encoded until the record is used.
DECODERS = {'image': tfds.decode.SkipDecoding(), 'objects': {'mask': tfds.decode.SkipDecoding()}}
#: Class counts of the detection datasets lgvit knows.
NUM_CLASSES = {'lgvit_coco': 80, 'lgvit_digits_det': 10}


def default_fields(c) -> None:
  """Adds the detection input fields with mmdet's Mask R-CNN 1x COCO values to a config (``c.data``,
  ``c.aug``) where absent; a recipe changes them (3x: ``aug.scales = det_transforms.MULTISCALE_3X``; LESA:
  ``data.scale = (1024, 1024)``, ``data.keep_ratio = False``, ``data.pad_size = (1024, 1024)``)."""
  defaults = {**detection.TEST_INPUT, 'max_instances': 100, 'mask_stride': 2}
  for k, v in defaults.items():
    if k not in c.data:
      c.data[k] = v
  if 'scales' not in c.aug:
    c.aug.scales = ()
  if 'hflip' not in c.aug:
    c.aug.hflip = True
  if 'autoaugment_crop' not in c.aug:
    c.aug.autoaugment_crop = False


def num_classes(builder) -> Optional[int]:
  return NUM_CLASSES.get(builder.name)


def geometry(data, aug=None) -> dict:
  """The keyword arguments of :func:`lgvit.data.det_transforms.transform` for training (with ``aug``) or
  evaluation (without: the fixed ``data.scale``, no flip)."""
  scales = tuple(tuple(s) for s in aug.scales) if aug is not None and len(aug.scales) else (tuple(data.scale),)
  return dict(scales=scales, keep_ratio=bool(data.keep_ratio), pad_size=tuple(data.pad_size),
              max_instances=int(data.max_instances), mask_stride=int(data.mask_stride),
              hflip=bool(aug.hflip) if aug is not None else False,
              crop_policy=bool(aug.get('autoaugment_crop', False)) if aug is not None else False)


def decode_image(example):
  return tf.io.decode_image(example['image'], channels=3, expand_animations=False)


def _unreadable_fields(kw: dict) -> dict:
  """An all-empty example of the contract's shapes (``gt_valid`` all False, the canvas zeros)."""
  ph, pw = kw['pad_size']
  g, s = kw['max_instances'], kw['mask_stride']
  return {'image': tf.zeros((ph, pw, 3), tf.uint8), 'image_hw': tf.constant([ph, pw], tf.int32),
          'gt_boxes': tf.zeros((g, 4), tf.float32), 'gt_labels': tf.zeros((g,), tf.int32),
          'gt_masks': tf.zeros((g, ph // s, pw // s), tf.uint8), 'gt_valid': tf.zeros((g,), tf.bool)}


def shard_records(data, builder, *, seed: int, epoch: int, start_step: int, steps_per_epoch: int, shard_batch: int,
                  shard: int, shard_count: int):
  """:func:`lgvit.data.pipeline.shard_records` with the masks kept encoded too (its ``encoded`` names
  top-level features only): the same file order, shuffle, take and resume skip."""
  split = pipeline.process_split(data.train_split, shard, shard_count)
  epoch_seed = (seed * 1_000_003 + epoch * 1_009 + shard) % (2**31 - 1)
  read_config = tfds.ReadConfig(shuffle_seed=epoch_seed, interleave_cycle_length=16, try_autocache=False)
  ds = builder.as_dataset(split=split, shuffle_files=True, read_config=read_config, decoders=DECODERS)
  if data.cache_train:
    ds = ds.cache()
  ds = ds.shuffle(data.shuffle_buffer, seed=epoch_seed, reshuffle_each_iteration=False)
  ds = ds.take(steps_per_epoch * shard_batch).enumerate().skip(start_step * shard_batch)
  return ds, pipeline._example_seed(seed, epoch, shard)


def shard_dataset(data, aug, builder, *, seed: int, epoch: int, start_step: int, steps_per_epoch: int,
                  shard_batch: int, shard: int, shard_count: int) -> tf.data.Dataset:
  """One shard's train batches (``lgvit.data.pipeline.train_dataset``'s ``shard_fn``): the contract's keys
  and ``valid``."""
  ds, seed_of = shard_records(data, builder, seed=seed, epoch=epoch, start_step=start_step,
                              steps_per_epoch=steps_per_epoch, shard_batch=shard_batch, shard=shard,
                              shard_count=shard_count)
  kw = geometry(data, aug)
  train_keys = tuple(_unreadable_fields(kw))

  def preprocess(pos, example):
    out = det_transforms.transform(decode_image(example), example['objects'], seed_of(pos), **kw)
    return {**{k: out[k] for k in train_keys}, 'valid': tf.constant(1, tf.int32)}

  def unreadable(pos, example):
    del pos, example
    return {**_unreadable_fields(kw), 'valid': tf.constant(0, tf.int32)}

  return pipeline._map_or_flag(ds, preprocess, unreadable).batch(shard_batch, drop_remainder=True)


def eval_dataset(data, det, builder, *, local_batch: int, process_index: int, process_count: int,
                 split: Optional[str] = None) -> tuple[tf.data.Dataset, int]:
  """This process's shard of the eval split, each image once, padded with ``mask == 0`` slots to the
  same number of ``local_batch`` batches on every process; returns the dataset and that number. One
  canvas for every image, so one compiled eval step. ``det`` (the task's section) is not read yet."""
  del det
  split = split or data.eval_split
  kw = geometry(data)
  total = pipeline.num_examples(builder, split)
  largest = -(-total // process_count)
  steps = -(-largest // local_batch)
  shard = pipeline.process_split(split, process_index, process_count)
  ds = builder.as_dataset(split=shard, shuffle_files=False, decoders=DECODERS)

  def preprocess(example):
    out = det_transforms.transform(decode_image(example), example['objects'], None, **kw)
    return {**out, 'image_id': tf.cast(example['image/id'], tf.int64), 'mask': tf.constant(1, tf.int32),
            'unreadable': tf.constant(0, tf.int32)}

  def unreadable(example):
    return {**_unreadable_fields(kw), 'orig_hw': tf.constant(kw['pad_size'], tf.int32),
            'scale': tf.ones((2,), tf.float32), 'image_id': tf.cast(example['image/id'], tf.int64),
            'mask': tf.constant(0, tf.int32), 'unreadable': tf.constant(1, tf.int32)}

  ds = pipeline._map_or_flag(ds, preprocess, unreadable)
  pad = {k: tf.zeros(spec.shape, spec.dtype) for k, spec in ds.element_spec.items()}
  ds = ds.concatenate(tf.data.Dataset.from_tensors(pad).repeat())
  ds = ds.batch(local_batch, drop_remainder=True).take(steps)
  return ds.prefetch(tf.data.AUTOTUNE), steps


def build_detection_input(data, aug, builder, *, split: str, training: bool, batch_size: int, seed: int = 0,
                          epoch: int = 0, start_step: int = 0, steps_per_epoch: Optional[int] = None,
                          process_index: int = 0, process_count: int = 1) -> tf.data.Dataset:
  """Either stream in one call (notebooks, benchmarks, tests). Training (``split`` must be
  ``data.train_split``): ``lgvit.data.pipeline.train_dataset`` with :func:`shard_dataset`, this process's
  part of the global ``batch_size`` batches of ``epoch`` from ``start_step``; evaluation:
  :func:`eval_dataset` with ``batch_size // process_count`` per process. The train loop itself calls
  ``shard_dataset`` / ``eval_dataset`` through the detection task, as segmentation does."""
  if training:
    if split != data.train_split:
      raise ValueError(f'the training stream reads data.train_split={data.train_split!r}, got split={split!r}')
    if steps_per_epoch is None:
      steps_per_epoch = pipeline.steps_per_epoch(data, batch_size, pipeline.num_examples(builder, split),
                                                 process_count)
    return pipeline.train_dataset(data, aug, builder, batch_size=batch_size, seed=seed, epoch=epoch,
                                  start_step=start_step, steps_per_epoch=steps_per_epoch,
                                  process_index=process_index, process_count=process_count, shard_fn=shard_dataset)
  return eval_dataset(data, None, builder, local_batch=batch_size // process_count, process_index=process_index,
                      process_count=process_count, split=split)[0]


def category_ids(builder) -> np.ndarray:
  """Label -> the category id of result files: COCO's original ids for ``lgvit_coco``, label + 1 otherwise."""
  if builder.name == 'lgvit_coco':
    return classes.coco_label_to_category_id()
  return np.arange(1, builder.info.features['objects']['label'].num_classes + 1, dtype=np.int64)


def coco_ground_truth(builder, split: str) -> dict:
  """The split as a COCO annotation dict (``images``, ``annotations`` with RLE masks, ``categories``) for
  ``pycocotools.coco.COCO`` / ``COCOeval``: every object at the original resolution, crowd ones
  included, the stored ``area``, boxes ``[x, y, w, h]``; category ids from :func:`category_ids`."""
  ids = category_ids(builder)
  names = builder.info.features['objects']['label'].names
  images, annotations = [], []
  for ex in tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)):
    h, w = ex['image'].shape[:2]
    image_id = int(ex['image/id'])
    images.append({'id': image_id, 'height': int(h), 'width': int(w), 'file_name': ex['image/filename'].decode()})
    objects = ex['objects']
    for k in range(len(objects['label'])):
      ymin, xmin, ymax, xmax = (float(v) for v in objects['bbox'][k])
      rle = mask_utils.encode(np.asfortranarray(objects['mask'][k][..., 0] > 0, dtype=np.uint8))
      rle['counts'] = rle['counts'].decode('ascii')
      annotations.append({'id': len(annotations) + 1, 'image_id': image_id,
                          'category_id': int(ids[objects['label'][k]]), 'iscrowd': int(objects['is_crowd'][k]),
                          'area': float(objects['area'][k]), 'segmentation': rle,
                          'bbox': [xmin * w, ymin * h, (xmax - xmin) * w, (ymax - ymin) * h]})
  categories = [{'id': int(i), 'name': n} for i, n in zip(ids, names)]
  return {'images': images, 'annotations': annotations, 'categories': categories}
