"""Semantic segmentation: UperNet on ADE20K (``config.task = 'segmentation'``, docs/segmentation.md).

The train step's loss is mmseg's decode + 0.4 x auxiliary pixel cross-entropy; the evaluator type
``segmentation`` scores mIoU, aAcc, mAcc and the per-class IoU over a split, each image once, in mmseg's
``mode='whole'`` (in training: the images batched by padded shape; from ``python -m lgvit.evaluate``:
image by image, also ``slide`` and ``multiscale``). The metrics and inference helpers are
:mod:`lgvit.segmentation`'s.
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow_datasets as tfds

from lgvit import evals, schema, segmentation
from lgvit.data import classes, pipeline, seg_pipeline
from lgvit.data.seg_transforms import reduce_zero_label
from lgvit.modeling import normalize
from lgvit.models.layers import resize_bilinear
from lgvit.segmentation import confusion_matrix, metrics_from_confusion, upernet_loss, zero_outside
from lgvit.tasks.base import Task, register

Array = jax.Array
#: mmseg's test modes (python -m lgvit.evaluate --segment-mode).
MODES = ('whole', 'slide', 'multiscale')


def logits_at_label_size(logits: Array, scaled: Array, size: Array, label_canvas: Sequence[int]) -> Array:
  """mmseg ``mode='whole'`` on a batch of one padded shape: (B, h, w, K) logits of padded images, each holding its
  image at ``scaled`` (B, 2) = (h, w) in the top-left corner, -> logits at the label's own ``size`` (B, 2)
  in the top-left corner of ``label_canvas``: resized to the canvas (bilinear), then the scaled region
  resized to the original size (bilinear, half-pixel centres; outside it the values are meaningless)."""
  return jax.vmap(lambda l, s, z: _region_to_size(l, s, z, tuple(label_canvas)))(logits, scaled, size)


def _region_to_size(logits, scaled, size, label_canvas):
  scaled = jnp.maximum(scaled, 1)
  # The region's last row/column repeated over the padding: the resize then clamps at the region's
  # border, as resizing the cropped region on its own does.
  rows = jnp.minimum(jnp.arange(logits.shape[0]), scaled[0] - 1)
  cols = jnp.minimum(jnp.arange(logits.shape[1]), scaled[1] - 1)
  logits = logits[rows][:, cols]
  factor = jnp.maximum(size, 1).astype(jnp.float32) / scaled.astype(jnp.float32)
  return jax.image.scale_and_translate(logits, label_canvas + logits.shape[2:], (0, 1), factor,
                                       jnp.zeros(2, jnp.float32), method='linear', antialias=False)


def make_eval_step(model, settings: schema.Settings):
  """``(variables, batch) -> {'confusion', 'count', 'skipped', 'downscaled'}`` sums over a batch of
  :func:`lgvit.data.seg_pipeline.eval_dataset` (one padded image shape per batch; masked slots count for
  nothing): mmseg ``mode='whole'`` for each image, its padding set to the mean colour."""
  dtype, seg, num_classes = settings.dtype, settings.options, settings.num_classes

  def eval_step(variables, batch):
    images = zero_outside(normalize(batch['image'], dtype), batch['scaled'])
    logits = model.apply(variables, images, train=False).astype(jnp.float32)
    logits = resize_bilinear(logits, images.shape[1:3])
    logits = logits_at_label_size(logits, batch['scaled'], batch['size'], batch['label'].shape[1:3])
    mask = batch['mask']
    return {'confusion': confusion_matrix(batch['label'], jnp.argmax(logits, -1), num_classes,
                                          seg.ignore_label, mask),
            'count': jnp.sum(mask), 'skipped': jnp.sum(batch['unreadable']),
            'downscaled': jnp.sum(batch['downscaled'] * mask)}

  return eval_step


def metrics_row(confusion, dataset: str, num_classes: int) -> dict:
  """``mIoU``, ``aAcc``, ``mAcc`` and ``IoU/<class>`` (the dataset's class names, as predict prints them)."""
  metrics = metrics_from_confusion(np.asarray(confusion, np.int64), classes.class_names(dataset, num_classes))
  row = {k: metrics[k] for k in ('mIoU', 'aAcc', 'mAcc')}
  row.update({f'IoU/{name}': v for name, v in metrics['IoU_per_class'].items()})
  return row


def summary(metrics: dict) -> str:
  """``mIoU 0.4610 | aAcc 0.8123 | mAcc 0.5712 | 2000 images`` (percentages as fractions)."""
  text = ' | '.join(f'{k} {metrics[k]:.4f}' for k in ('mIoU', 'aAcc', 'mAcc')) + f" | {metrics['count']} images"
  if metrics.get('downscaled'):
    text += f" ({metrics['downscaled']} scaled down to fit the eval canvas)"
  return text


class SegmentationEvaluator(evals.Evaluator):
  """mIoU, aAcc, mAcc (0..1), ``IoU/<class>`` per class, ``count``, ``skipped`` (unreadable) and ``downscaled``
  (images scaled down to fit ``seg.eval_canvas``) over every image of a split once.

  In training (no ``mode`` option) each process scores its own shard on its own devices, in batches of
  one padded image shape (so the shapes need not agree between processes: the step is compiled once per
  shape); the sums are then gathered, so every process returns the metrics of the whole split. With
  ``mode`` (the evaluate command) every image runs alone through :func:`evaluate_per_image`."""

  def __init__(self, spec: evals.EvalSpec, context: evals.Context):
    super().__init__(spec, context)
    self.mode = context.options.get('mode')
    if self.mode is not None and self.mode not in MODES:
      raise ValueError(f"mode must be one of {', '.join(map(repr, MODES))}, got {self.mode!r}")
    self.builder = pipeline.get_builder(spec.dataset, context.settings.data_dir)
    self.num_examples = pipeline.num_examples(self.builder, spec.split)
    self.step = jax.jit(make_eval_step(context.model, context.settings))
    self.apply = jax.jit(lambda variables, x: context.model.apply(variables, x, train=False))  # normalised images

  def run(self, variables) -> dict:
    settings = self.context.settings
    if self.mode is not None:  # the weights are an argument: baked in as constants, each compile would copy them
      return evaluate_per_image(functools.partial(self.apply, variables), settings, self.builder, self.mode,
                                self.spec.split)
    local_batch = settings.eval_batch_size // jax.process_count()
    local_variables, sharded = evals.on_local_devices(variables)
    ds = seg_pipeline.eval_dataset(settings.data, settings.options, self.builder, local_batch=local_batch,
                                   process_index=jax.process_index(), process_count=jax.process_count(),
                                   split=self.spec.split)
    totals = {'confusion': np.zeros((settings.num_classes,) * 2, np.int64), 'count': 0, 'skipped': 0, 'downscaled': 0}
    for batch in pipeline.as_numpy(ds):
      placed = jax.device_put(evals.pad_batch(batch, local_batch), sharded)
      out = jax.device_get(self.step(local_variables, placed))
      totals = {k: totals[k] + np.asarray(out[k], np.int64) for k in totals}
    totals = evals.sum_over_processes(totals)
    row = metrics_row(totals['confusion'], self.spec.dataset, settings.num_classes)
    row.update(count=int(totals['count']), skipped=int(totals['skipped']), downscaled=int(totals['downscaled']))
    return row

  def summary(self, metrics: dict) -> str:
    return summary(metrics)


def evaluate_per_image(apply_fn, settings: schema.Settings, builder, mode: str = 'whole',
                       split: Optional[str] = None) -> dict:
  """mmseg's test modes exactly, each image at its own size (one compile per distinct size):
  ``mode`` 'whole' (resize to ``data.scale``), 'slide' (``seg.eval_crop`` windows at ``seg.eval_stride``)
  or 'multiscale' (``seg.ms_ratios`` x flip if ``seg.flip``, whole or slide per ``seg.eval_mode``).
  ``apply_fn`` maps normalised images (``lgvit.modeling.normalize``) to logits. In 'whole' mode the
  image is scaled as the in-training eval scales it (:func:`lgvit.data.seg_pipeline.scale_for_eval`:
  mmcv's uint8 resize), so the two agree image by image. Every process scores its shard; the sums are
  gathered, so every process returns the metrics of the whole split."""
  if mode not in ('whole', 'slide', 'multiscale'):
    raise ValueError(f"mode must be 'whole', 'slide' or 'multiscale', got {mode!r}")
  data, seg, num_classes = settings.data, settings.options, settings.num_classes
  shard = pipeline.process_split(split or data.eval_split, jax.process_index(), jax.process_count())
  ds = builder.as_dataset(split=shard, shuffle_files=False,
                          decoders={k: tfds.decode.SkipDecoding() for k in seg_pipeline.ENCODED})
  ds = ds.map(lambda ex: seg_pipeline.decode(ex))
  if data.reduce_zero_label:
    ds = ds.map(lambda image, label: (image, reduce_zero_label(label)))
  scale = tuple(data.scale)
  if mode == 'whole':  # scaled here, as the in-training eval does (no canvas bound: every image at its size)
    ds = ds.map(lambda image, label: (seg_pipeline.scale_for_eval(image, scale, (2**30, 2**30))[0], label))
  score = jax.jit(lambda label, logits: confusion_matrix(label, jnp.argmax(logits, -1), num_classes,
                                                          seg.ignore_label))
  confusion, count = np.zeros((num_classes,) * 2, np.int64), 0
  for image, label in tfds.as_numpy(ds):
    x = normalize(jnp.asarray(image[None]))
    if mode == 'whole':
      logits = resize_bilinear(segmentation.infer_whole(apply_fn, x), label.shape)
    elif mode == 'slide':
      logits = segmentation.infer_slide(apply_fn, x, crop=tuple(seg.eval_crop), stride=tuple(seg.eval_stride), scale=scale)
    else:
      logits = segmentation.infer_multiscale(apply_fn, x, scale=scale, ratios=tuple(seg.ms_ratios), flip=seg.flip,
                                        mode=seg.eval_mode, crop=tuple(seg.eval_crop), stride=tuple(seg.eval_stride))
    confusion += np.asarray(score(label[None], logits), np.int64)
    count += 1
  totals = evals.sum_over_processes({'confusion': confusion, 'count': np.int64(count)})
  row = metrics_row(totals['confusion'], data.dataset, num_classes)
  row['count'] = int(totals['count'])
  return row


class Segmentation(Task):
  name = 'segmentation'
  main_metric = 'mIoU'
  section = 'seg'

  def train_forward(self, model, settings: schema.Settings):
    """UperNet's loss; unreadable images (``valid == 0``) count for nothing. The crop padding (outside
    ``batch['content']``) is the mean colour, as mmseg pads after normalising."""
    seg, dtype = settings.options, settings.dtype

    def forward(params, batch_stats, images, batch, rngs, aug_keys):
      del aug_keys  # the augmentations ran on the host (lgvit.data.seg_pipeline)
      if 'content' in batch:
        images = zero_outside(images, batch['content'])
      outputs, new_vars = model.apply({'params': params, 'batch_stats': batch_stats}, images.astype(dtype),
                                      train=True, rngs=rngs, mutable=['batch_stats'])
      valid = batch['valid'].astype(jnp.float32)
      labels = batch['label'].astype(jnp.int32)
      # Resized to the labels once, for the loss (whose own resize is then a no-op) and the accuracy.
      logits, aux = outputs
      logits = resize_bilinear(logits.astype(jnp.float32), labels.shape[1:3])
      loss, terms = upernet_loss((logits, aux), labels, aux_weight=seg.aux_weight, ignore_label=seg.ignore_label,
                                 mask=valid, avg_non_ignore=seg.avg_non_ignore)
      preds = jnp.argmax(logits, -1)
      counted = (labels != seg.ignore_label) * valid[:, None, None]
      terms['train_pixel_acc'] = jnp.sum((preds == labels) * counted) / jnp.maximum(jnp.sum(counted), 1.0)
      return loss, (terms, new_vars.get('batch_stats', {}))

    return forward

  def eval_step(self, model, settings: schema.Settings):
    return make_eval_step(model, settings)

  def shard_fn(self, settings: schema.Settings):
    return seg_pipeline.shard_dataset

  def dataset_classes(self, builder, settings: schema.Settings) -> Optional[int]:
    return seg_pipeline.num_classes(builder, settings.data.reduce_zero_label)

  def batch_shapes(self, settings, batch, train):
    if not train:  # evaluation runs image by image in size buckets (evaluate_per_image): no one batch shape
      raise NotImplementedError('segmentation evaluates image by image in size buckets; compile its train step')
    s = settings.data.image_size  # the train crop
    return {'image': ((batch, s, s, 3), jnp.uint8), 'label': ((batch, s, s), jnp.uint8),
            'content': ((batch, 2), jnp.int32), 'valid': ((batch,), jnp.int32)}

  def summary(self, result) -> str:
    return f"mIoU {result['eval_mIoU']:.4f} | aAcc {result['eval_aAcc']:.4f}"


register(Segmentation())
evals.register('segmentation', SegmentationEvaluator)
