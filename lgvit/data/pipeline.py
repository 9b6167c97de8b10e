"""TFDS + tf.data input pipelines.

Design (what makes exact resume cheap): the training stream of epoch ``e`` is a pure function of
``(seed, e, process)``. File order, shuffle order and every augmentation draw use seeds derived from
those numbers and from the example's position in the epoch (stateless random ops), so the stream
never needs an iterator state in the checkpoint: resuming at step ``s`` rebuilds epoch
``s // steps_per_epoch`` and skips the already-consumed records *before* they are decoded.

Images leave the host as uint8 (4x less to transfer than float32); normalisation, Mixup/CutMix and
random erasing run on the accelerator inside the train step.

An image that cannot be decoded (truncated file, garbage bytes) does not stop the run: its slot in
the batch is kept, so batch boundaries and resume positions stay exactly as they are, but it is
filled with the mean colour and flagged ``valid == 0``; the train step leaves it out of the loss and
the eval out of the metrics, and both count it (``skipped_images`` / ``eval_skipped``).
"""
from __future__ import annotations

import contextlib
import io
import os
from typing import Iterator, Optional

import jax
import numpy as np
from jax.experimental import multihost_utils

from lgvit import quiet

quiet.import_tensorflow()  # before TensorFlow's first import: no start-up noise, no matplotlib (lgvit/quiet.py)
import tensorflow as tf  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from lgvit.data import augment, transforms  # noqa: E402
from lgvit.data.ade20k import LgvitAde20k  # noqa: E402
from lgvit.data.coco import LgvitCoco  # noqa: E402
from lgvit.data.digits import LgvitDigits  # noqa: E402
from lgvit.data.digits_det import LgvitDigitsDet  # noqa: E402
from lgvit.data.digits_seg import LgvitDigitsSeg  # noqa: E402
from lgvit.data.transforms import MEAN_RGB  # noqa: E402
from lgvit.errors import DatasetNotFoundError  # noqa: E402


# ---------------------------------------------------------------------------------------------
# Builders.
# ---------------------------------------------------------------------------------------------


def _embedded_builder_class(name: str):
  """The builder class of an embedded dataset (made from scikit-learn's digits, no download), or None."""
  if name == 'lgvit_digits':
    return LgvitDigits
  if name == 'lgvit_digits_seg':  # the segmentation demo (docs/segmentation.md)
    return LgvitDigitsSeg
  if name == 'lgvit_digits_det':  # the detection demo (docs/detection.md)
    return LgvitDigitsDet
  return None


def _lgvit_builder(name: str, data_dir: Optional[str]):
  """lgvit's own builders of datasets you download yourself (lgvit_ade20k), or None."""
  if name == 'lgvit_ade20k':
    return LgvitAde20k(data_dir=data_dir)
  if name in ('lgvit_coco', 'lgvit_coco/2017'):
    return LgvitCoco(config='2017', data_dir=data_dir)
  return None


def get_builder(name: str, data_dir: Optional[str], hint: Optional[str] = None) -> tfds.core.DatasetBuilder:
  """The TFDS builder of ``name``, prepared. The embedded digits datasets are built on first use.

  ``hint`` (how to prepare the dataset) replaces the default one of an unprepared-dataset error."""
  tfds.disable_progress_bar()
  embedded = _embedded_builder_class(name)
  if embedded is not None:
    # On a fresh data_dir TFDS warns that it has no dataset_info.json yet and announces a download of
    # "Unknown size": nothing is downloaded, so one line of lgvit's says what happens instead.
    with quiet.drop_log_records('absl', r'^Variant folder .* has no dataset_info\.json$'):
      builder = embedded(data_dir=data_dir)
      if not builder.is_prepared():
        if jax.process_index() == 0:  # one writer; the others wait for it
          what = {'lgvit_digits': 'digits', 'lgvit_digits_seg': 'digits segmentation'}.get(name, 'digits detection')
          print(f'building the embedded {what} dataset (once) in {builder.data_dir}', flush=True)
          with contextlib.redirect_stdout(io.StringIO()):
            builder.download_and_prepare()
        if jax.process_count() > 1:
          multihost_utils.sync_global_devices(f'{name} prepared')
          builder = embedded(data_dir=data_dir)
    return builder
  try:
    builder = _lgvit_builder(name, data_dir) or tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise DatasetNotFoundError(f'unknown TFDS dataset {name!r}; use imagenet2012, lgvit_digits or another '
                               'TFDS image classification dataset') from None
  if not builder.is_prepared():
    where = data_dir or os.path.expanduser('~/tensorflow_datasets')
    if hint is None and name.startswith('imagenet2012'):
      hint = (f' Download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar into MANUAL_DIR, then run '
              f'`tfds build {name} --manual_dir=MANUAL_DIR --data_dir={where}`.')
    if hint is None and name == 'lgvit_ade20k':
      hint = (' Download ADEChallengeData2016.zip (http://sceneparsing.csail.mit.edu/) into MANUAL_DIR, then run '
              f'`python -m lgvit.data.ade20k --manual_dir=MANUAL_DIR --data_dir={where}`.')
    if hint is None and name.startswith('lgvit_coco'):
      hint = (' Download train2017.zip, val2017.zip and annotations_trainval2017.zip (https://cocodataset.org) into '
              f'MANUAL_DIR, then run `python -m lgvit.data.coco --manual_dir=MANUAL_DIR --data_dir={where}`.')
    raise DatasetNotFoundError(f'dataset {name!r} is not prepared in {where} (set --config.data.data_dir).{hint or ""}')
  return builder


def num_examples(builder: tfds.core.DatasetBuilder, split: str) -> int:
  try:
    return builder.info.splits[split].num_examples
  except KeyError:
    raise DatasetNotFoundError(f'split {split!r} not found in {builder.name}; '
                               f'available: {", ".join(builder.info.splits)}') from None


def num_classes(builder: tfds.core.DatasetBuilder) -> int:
  return builder.info.features['label'].num_classes


def process_split(split: str, index: int, count: int) -> str:
  """Contiguous part ``index`` of ``count`` of ``split`` (sizes differ by at most one)."""
  if count == 1:
    return split
  return tfds.even_splits(split, n=count, drop_remainder=False)[index]


# ---------------------------------------------------------------------------------------------
# Image ops.
# ---------------------------------------------------------------------------------------------


def _resize(image, size_hw, method: str):
  image = tf.image.resize(image, size_hw, method=method, antialias=method != 'nearest')
  return image


def _decode_and_random_crop(image_bytes, seed, image_size: int, scale, ratio, method: str):
  """Inception-style random-resized-crop; JPEGs are only decoded inside the crop window."""
  is_jpeg = tf.io.is_jpeg(image_bytes)
  shape = tf.cond(is_jpeg, lambda: tf.image.extract_jpeg_shape(image_bytes),
                  lambda: tf.shape(tf.io.decode_image(image_bytes, channels=3, expand_animations=False)))
  bbox = tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, [1, 1, 4])
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape, bounding_boxes=bbox, seed=seed, min_object_covered=0.0, aspect_ratio_range=ratio,
      area_range=scale, max_attempts=10, use_image_if_no_bounding_boxes=True)
  oy, ox, _ = tf.unstack(begin)
  h, w, _ = tf.unstack(size)
  window = tf.stack([oy, ox, h, w])
  image = tf.cond(
      is_jpeg, lambda: tf.io.decode_and_crop_jpeg(image_bytes, window, channels=3),
      lambda: tf.image.crop_to_bounding_box(
          tf.io.decode_image(image_bytes, channels=3, expand_animations=False), oy, ox, h, w))
  return _resize(image, (image_size, image_size), method)


def _decode_and_resize_small_random_crop(image_bytes, seed, image_size: int, crop_pct: float, method: str):
  """big_vision's ``resize_small | random_crop``: the eval's resize (:func:`_resize_small`), then a window
  of ``image_size`` at a random place instead of the centre."""
  image = _resize_small(tf.io.decode_image(image_bytes, channels=3, expand_animations=False), image_size, crop_pct,
                        method)
  return tf.image.stateless_random_crop(image, (image_size, image_size, 3), seed)


def _decode_and_center_crop(image_bytes, image_size: int, crop_pct: float, method: str):
  image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
  return _center_crop(image, image_size, crop_pct, method)


def _resize_small(image, image_size: int, crop_pct: float, method: str):
  """The shorter side to floor(image_size / crop_pct), the aspect kept; neither side below image_size, so a
  crop of image_size always fits."""
  shape = tf.shape(image)
  h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
  short = tf.floor(image_size / crop_pct)
  scale = short / tf.minimum(h, w)
  new_h = tf.cast(tf.round(h * scale), tf.int32)
  new_w = tf.cast(tf.round(w * scale), tf.int32)
  new_h = tf.maximum(new_h, image_size)
  new_w = tf.maximum(new_w, image_size)
  return _resize(image, (new_h, new_w), method)


def _center_crop(image, image_size: int, crop_pct: float, method: str):
  """Resize the shorter side to image_size / crop_pct, then center-crop image_size (timm eval)."""
  image = _resize_small(image, image_size, crop_pct, method)
  shape = tf.shape(image)
  top = (shape[0] - image_size) // 2
  left = (shape[1] - image_size) // 2
  return image[top:top + image_size, left:left + image_size]


def eval_image(image, image_size: int, crop_pct: float, interpolation: str) -> np.ndarray:
  """One image through the evaluation transform: encoded bytes (JPEG/PNG/...) or an (H, W[, C])
  uint8 array in, (image_size, image_size, 3) uint8 out, exactly as :func:`eval_dataset` feeds it.
  (Inference without TensorFlow uses ``lgvit.data.transforms.eval_image``.)"""
  if isinstance(image, (bytes, bytearray)):
    decoded = tf.io.decode_image(bytes(image), channels=3, expand_animations=False)
  else:
    decoded = tf.constant(transforms.as_rgb(image))
  return _to_uint8(_center_crop(decoded, image_size, crop_pct, interpolation)).numpy()


def _map_or_flag(ds: tf.data.Dataset, preprocess, fallback) -> tf.data.Dataset:
  """``ds.map(preprocess)``, where an element that raises (an undecodable image) becomes ``fallback``.

  Each element is mapped inside its own one-element dataset whose errors are dropped, followed by the
  fallback; taking the first of the two keeps the element's slot. The interleave keeps the order.
  """

  def one(*element):
    mapped = tf.data.Dataset.from_tensors(element).map(lambda *e: preprocess(*e)).ignore_errors()
    flagged = tf.data.Dataset.from_tensors(element).map(lambda *e: fallback(*e))
    return mapped.concatenate(flagged).take(1)

  return ds.interleave(one, cycle_length=max(os.cpu_count() or 1, 2), block_length=1,
                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _placeholder_image(image_size: int):
  """The mean colour: it normalises to ~0, so a skipped slot barely touches BatchNorm statistics."""
  return tf.cast(tf.round(tf.broadcast_to(tf.constant(MEAN_RGB), (image_size, image_size, 3))), tf.uint8)


def _to_uint8(image):
  return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


# ---------------------------------------------------------------------------------------------
# Pipelines.
# ---------------------------------------------------------------------------------------------


def _example_seed(seed: int, epoch: int, shard: int):
  base = tf.constant([seed, 0], tf.int64)

  def make(pos):
    # A distinct 2-int64 stateless seed for every (epoch, shard, position).
    return tf.random.experimental.stateless_fold_in(
        tf.random.experimental.stateless_fold_in(tf.random.experimental.stateless_fold_in(base, epoch), shard), pos)

  return make


def data_shards(data, process_count: int) -> int:
  """Number of input shards; fixed by ``config.data.shards`` so the stream does not depend on the host count."""
  shards = data.shards or process_count
  if shards % process_count:
    raise ValueError(f'data.shards={shards} must be a multiple of the {process_count} processes')
  return shards


def steps_per_epoch(data, batch_size: int, n_examples: int, process_count: int) -> int:
  shards = data_shards(data, process_count)
  if batch_size % shards:
    raise ValueError(f'batch_size {batch_size} must be divisible by data.shards={shards}')
  return (n_examples // shards) // (batch_size // shards)


def shard_records(data, builder, *, seed: int, epoch: int, start_step: int, steps_per_epoch: int,
                  shard_batch: int, shard: int, shard_count: int, encoded: tuple[str, ...] = ('image',)):
  """``(position, example)`` records of steps ``start_step ..`` of ``epoch`` from one data shard,
  still encoded (the ``encoded`` features are not decoded), and the seed maker of their positions."""
  split = process_split(data.train_split, shard, shard_count)
  epoch_seed = (seed * 1_000_003 + epoch * 1_009 + shard) % (2**31 - 1)
  read_config = tfds.ReadConfig(shuffle_seed=epoch_seed, interleave_cycle_length=16, try_autocache=False)
  ds = builder.as_dataset(split=split, shuffle_files=True, read_config=read_config,
                          decoders={k: tfds.decode.SkipDecoding() for k in encoded})
  if data.cache_train:
    ds = ds.cache()
  ds = ds.shuffle(data.shuffle_buffer, seed=epoch_seed, reshuffle_each_iteration=False)
  ds = ds.take(steps_per_epoch * shard_batch)
  ds = ds.enumerate()
  ds = ds.skip(start_step * shard_batch)  # resume: skip consumed records before decoding them
  return ds, _example_seed(seed, epoch, shard)


#: ``aug.crop``, big_vision's names: 'inception_crop' (random-resized crop over ``aug.crop_scale`` and
#: ``aug.crop_ratio``) | 'resmall_crop' (the eval's resize by ``data.crop_pct``, then a random window).
TRAIN_CROPS = ('inception_crop', 'resmall_crop')


def shard_dataset(data, aug, builder, *, seed: int, epoch: int, start_step: int, steps_per_epoch: int,
                  shard_batch: int, shard: int, shard_count: int) -> tf.data.Dataset:
  """Batches ``start_step .. steps_per_epoch-1`` of ``epoch`` from one data shard, as uint8 NHWC.

  ``data`` and ``aug`` are the config's sections of those names; ``aug.crop`` (absent: the inception
  crop) picks the train crop of :data:`TRAIN_CROPS`."""
  ds, seed_of = shard_records(data, builder, seed=seed, epoch=epoch, start_step=start_step,
                              steps_per_epoch=steps_per_epoch, shard_batch=shard_batch, shard=shard,
                              shard_count=shard_count)
  method = data.interpolation
  randaug = _randaugment_fn(aug)
  crop = aug.crop
  if crop not in TRAIN_CROPS:
    raise ValueError(f"aug.crop must be one of {', '.join(map(repr, TRAIN_CROPS))}, got {crop!r}")

  def preprocess(pos, example):
    seeds = tf.random.experimental.stateless_split(seed_of(pos), 3)
    if crop == 'resmall_crop':
      image = _decode_and_resize_small_random_crop(example['image'], seeds[0], data.image_size, data.crop_pct, method)
    else:
      image = _decode_and_random_crop(example['image'], seeds[0], data.image_size, tuple(aug.crop_scale),
                                      tuple(aug.crop_ratio), method)
    if aug.hflip:
      flip = tf.random.stateless_uniform([], seeds[1]) < 0.5
      image = tf.cond(flip, lambda: tf.image.flip_left_right(image), lambda: image)
    image = _to_uint8(image)
    if randaug is not None:
      image = randaug(image, seeds[2])
    return {'image': image, 'label': tf.cast(example['label'], tf.int32), 'valid': tf.constant(1, tf.int32)}

  def unreadable(pos, example):
    del pos
    return {'image': _placeholder_image(data.image_size), 'label': tf.cast(example['label'], tf.int32),
            'valid': tf.constant(0, tf.int32)}

  ds = _map_or_flag(ds, preprocess, unreadable)
  return ds.batch(shard_batch, drop_remainder=True)


def train_dataset(data, aug, builder, *, batch_size: int, seed: int, epoch: int, start_step: int,
                  steps_per_epoch: int, process_index: int, process_count: int,
                  shard_fn=shard_dataset) -> tf.data.Dataset:
  """This process's part of the global batches ``start_step ..`` of ``epoch``.

  The global batch of a step is the concatenation, in shard order, of one batch from each of
  ``data.shards`` shards; a process reads the consecutive shards that feed its devices. The global
  stream is thus the same for any process count that divides ``data.shards``. ``shard_fn`` makes one
  shard's batches (:func:`shard_dataset`; segmentation: ``lgvit.data.seg_pipeline.shard_dataset``).
  """
  shards = data_shards(data, process_count)
  per_process = shards // process_count
  shard_batch = batch_size // shards
  parts = [shard_fn(data, aug, builder, seed=seed, epoch=epoch, start_step=start_step,
                         steps_per_epoch=steps_per_epoch, shard_batch=shard_batch,
                         shard=process_index * per_process + i, shard_count=shards)
           for i in range(per_process)]
  ds = parts[0] if per_process == 1 else tf.data.Dataset.zip(tuple(parts)).map(
      lambda *bs: {k: tf.concat([b[k] for b in bs], axis=0) for k in bs[0]})
  options = tf.data.Options()
  options.deterministic = True
  options.experimental_optimization.map_parallelization = True
  ds = ds.with_options(options)
  return ds.prefetch(tf.data.AUTOTUNE)


def _randaugment_fn(aug):
  if not aug.randaugment:
    return None
  return augment.randaugment_from_policy(aug.randaugment)


def single_label(example) -> dict[str, tf.Tensor]:
  """The eval targets of a dataset with one ``label`` per image."""
  return {'label': tf.cast(example['label'], tf.int32)}


def multi_hot_targets(feature: str, num_classes: int):
  """Eval targets from a set of labels per image (e.g. ReaL's ``real_label``): ``feature`` as a
  (num_classes,) 0/1 uint8 vector, all zeros for an empty set."""

  def targets(example):
    ids = tf.cast(tf.reshape(example[feature], [-1]), tf.int32)
    hot = tf.reduce_sum(tf.one_hot(ids, num_classes, dtype=tf.int32), axis=0)
    return {feature: tf.cast(tf.minimum(hot, 1), tf.uint8)}

  return targets


def eval_dataset(data, builder, *, local_batch: int, process_index: int, process_count: int,
                 split: Optional[str] = None, targets=None) -> tuple[tf.data.Dataset, int]:
  """Every example of this process's shard exactly once, padded to a whole number of batches.

  Returns the dataset and the number of batches, which is the same on every process (shards are
  padded with ``mask == 0`` examples up to the largest shard). ``targets`` maps an example to its
  label fields (default :func:`single_label`).
  """
  targets = targets or single_label

  def preprocess(example):
    image = _decode_and_center_crop(example['image'], data.image_size, data.crop_pct, data.interpolation)
    image = tf.ensure_shape(_to_uint8(image), (data.image_size, data.image_size, 3))  # static: the padding copies it
    return {'image': image, **targets(example), 'mask': tf.constant(1, tf.int32),
            'unreadable': tf.constant(0, tf.int32)}

  def unreadable(example):
    return {'image': _placeholder_image(data.image_size), **targets(example), 'mask': tf.constant(0, tf.int32),
            'unreadable': tf.constant(1, tf.int32)}

  return padded_eval_dataset(builder, split or data.eval_split, preprocess, unreadable, local_batch=local_batch,
                             process_index=process_index, process_count=process_count)


def padded_eval_dataset(builder, split: str, preprocess, unreadable, *, local_batch: int, process_index: int,
                        process_count: int, encoded: tuple[str, ...] = ('image',)) -> tuple[tf.data.Dataset, int]:
  """This process's shard of ``split`` through ``preprocess`` (``unreadable`` for an example that fails;
  both return ``mask`` and ``unreadable`` fields), padded with all-zero ``mask == 0`` elements to the
  same number of batches on every process; returns the dataset and that number."""
  total = num_examples(builder, split)
  shard = process_split(split, process_index, process_count)
  largest = -(-total // process_count)
  steps = -(-largest // local_batch)
  ds = builder.as_dataset(split=shard, shuffle_files=False, decoders={k: tfds.decode.SkipDecoding() for k in encoded})
  ds = _map_or_flag(ds, preprocess, unreadable)
  pad = {k: tf.zeros(spec.shape, spec.dtype) for k, spec in ds.element_spec.items()}
  ds = ds.concatenate(tf.data.Dataset.from_tensors(pad).repeat())
  ds = ds.batch(local_batch, drop_remainder=True).take(steps)
  return ds.prefetch(tf.data.AUTOTUNE), steps


def as_numpy(ds: tf.data.Dataset) -> Iterator[dict[str, np.ndarray]]:
  return iter(tfds.as_numpy(ds))
