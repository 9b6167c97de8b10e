"""Semantic segmentation as a task of the train loop (``config.task == 'segmentation'``, docs/segmentation.md).

``lgvit.train`` calls :func:`train_forward` inside its train step (mmseg's decode + 0.4 x auxiliary
pixel cross-entropy), :func:`make_eval_step` and :func:`evaluate` at every eval (mIoU, aAcc, mAcc and
the per-class IoU over the whole eval split, each image once), and :func:`summary` for the console.
The metrics and inference helpers themselves are :mod:`lgvit.segmentation`'s.
"""
from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lgvit.models.layers import resize_bilinear
from lgvit.segmentation import confusion_matrix, metrics_from_confusion, upernet_loss, zero_outside

Array = jax.Array


def train_forward(model, config):
  """``(params, batch_stats, images, batch, rngs, aug_keys) -> (loss, (metrics, new batch_stats))`` of a UperNet
  train step (``lgvit.train.make_train_step`` calls it for ``config.task == 'segmentation'``): mmseg's
  decode + 0.4 x auxiliary pixel cross-entropy; unreadable images (``valid == 0``) count for nothing. The crop
  padding (outside ``batch['content']``) is the mean colour, as mmseg pads after normalising."""
  from lgvit.modeling import compute_dtype
  seg, dtype = config.seg, compute_dtype(config)

  def forward(params, batch_stats, images, batch, rngs, aug_keys):
    del aug_keys  # the augmentations ran on the host (lgvit.data.seg_pipeline)
    if 'content' in batch:
      images = zero_outside(images, batch['content'])
    outputs, new_vars = model.apply({'params': params, 'batch_stats': batch_stats}, images.astype(dtype), train=True,
                                    rngs=rngs, mutable=['batch_stats'])
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


def make_eval_step(model, config):
  """``(variables, batch) -> {'confusion', 'count', 'skipped', 'downscaled'}`` sums over a batch of
  :func:`lgvit.data.seg_pipeline.eval_dataset` (one padded image shape per batch; masked slots count for
  nothing): mmseg ``mode='whole'`` for each image, its padding set to the mean colour."""
  from lgvit.modeling import compute_dtype, normalize
  dtype, seg = compute_dtype(config), config.seg

  def eval_step(variables, batch):
    images = zero_outside(normalize(batch['image'], dtype), batch['scaled'])
    logits = model.apply(variables, images, train=False).astype(jnp.float32)
    logits = resize_bilinear(logits, images.shape[1:3])
    logits = logits_at_label_size(logits, batch['scaled'], batch['size'], batch['label'].shape[1:3])
    mask = batch['mask']
    return {'confusion': confusion_matrix(batch['label'], jnp.argmax(logits, -1), config.num_classes,
                                          seg.ignore_label, mask),
            'count': jnp.sum(mask), 'skipped': jnp.sum(batch['unreadable']),
            'downscaled': jnp.sum(batch['downscaled'] * mask)}

  return eval_step


def _local_copy(tree, sharding):
  """A replicated global array tree as arrays on this process's devices only (its own shards of them)."""
  def one(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
      return jax.device_put(x, sharding)
    shards = {s.device: s.data for s in x.addressable_shards}
    return jax.make_array_from_single_device_arrays(x.shape, sharding, [shards[d] for d in sharding.mesh.devices.flat])
  return jax.tree_util.tree_map(one, tree)


def _pad_batch(batch: dict, size: int) -> dict:
  """A partial batch padded with all-zero (``mask == 0``) slots to ``size`` images."""
  missing = size - len(batch['mask'])
  return {k: np.concatenate([v, np.zeros((missing,) + v.shape[1:], v.dtype)]) if missing else v
          for k, v in batch.items()}


def metrics_row(confusion, config) -> dict:
  """``mIoU``, ``aAcc``, ``mAcc`` and ``IoU/<class>`` (the dataset's class names, as predict prints them)."""
  from lgvit.predict import class_names
  metrics = metrics_from_confusion(np.asarray(confusion, np.int64), class_names(config.data.dataset, config.num_classes))
  row = {k: metrics[k] for k in ('mIoU', 'aAcc', 'mAcc')}
  row.update({f'IoU/{name}': v for name, v in metrics['IoU_per_class'].items()})
  return row


def evaluate(eval_fn, variables, config, builder, batch_sharding=None, split: Optional[str] = None) -> dict:
  """Every image of the eval split once: ``mIoU``, ``aAcc``, ``mAcc`` (0..1), ``IoU/<class>`` per class,
  ``count``, ``skipped`` (unreadable) and ``downscaled`` (images scaled down to fit ``seg.eval_canvas``).

  Each process scores its own shard on its own devices, in batches of one padded image shape (so the
  shapes need not agree between processes: ``eval_fn`` is compiled once per shape); the sums are then
  gathered, so every process returns the metrics of the whole split. ``batch_sharding`` is unused
  (the training mesh spans every process); ``eval_fn`` is a jitted :func:`make_eval_step`."""
  del batch_sharding
  from jax.sharding import NamedSharding, PartitionSpec as P
  from lgvit.data import pipeline, seg_pipeline
  from lgvit.modeling import make_mesh
  local_batch = config.eval_batch_size // jax.process_count()
  mesh = make_mesh(jax.local_devices())
  local_variables = _local_copy(variables, NamedSharding(mesh, P()))
  sharded = NamedSharding(mesh, P('data'))
  ds = seg_pipeline.eval_dataset(config, builder, local_batch=local_batch, process_index=jax.process_index(),
                                 process_count=jax.process_count(), split=split)
  totals = {'confusion': np.zeros((config.num_classes,) * 2, np.int64), 'count': 0, 'skipped': 0, 'downscaled': 0}
  for batch in pipeline.as_numpy(ds):
    placed = jax.device_put(_pad_batch(batch, local_batch), sharded)
    out = jax.device_get(eval_fn(local_variables, placed))
    totals = {k: totals[k] + np.asarray(out[k], np.int64) for k in totals}
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    totals = {k: np.asarray(multihost_utils.process_allgather(np.asarray(v, np.int64))).sum(0)
              for k, v in totals.items()}
  row = metrics_row(totals['confusion'], config)
  row.update(count=int(totals['count']), skipped=int(totals['skipped']), downscaled=int(totals['downscaled']))
  return row


def summary(metrics: dict) -> str:
  """``mIoU 0.4610 | aAcc 0.8123 | mAcc 0.5712 | 2000 images`` (percentages as fractions)."""
  text = ' | '.join(f'{k} {metrics[k]:.4f}' for k in ('mIoU', 'aAcc', 'mAcc')) + f" | {metrics['count']} images"
  if metrics.get('downscaled'):
    text += f" ({metrics['downscaled']} scaled down to fit the eval canvas)"
  return text


def evaluate_per_image(apply_fn, config, builder, mode: str = 'whole', split: Optional[str] = None) -> dict:
  """mmseg's test modes exactly, each image at its own size (one compile per distinct size):
  ``mode`` 'whole' (resize to ``data.scale``), 'slide' (``seg.eval_crop`` windows at ``seg.eval_stride``)
  or 'multiscale' (``seg.ms_ratios`` x flip if ``seg.flip``, whole or slide per ``seg.eval_mode``).
  ``apply_fn`` maps normalised images (``lgvit.modeling.normalize``) to logits. In 'whole' mode the
  image is scaled as the in-training eval scales it (:func:`lgvit.data.seg_pipeline.scale_for_eval`:
  mmcv's uint8 resize), so the two agree image by image. Every process scores its shard; the sums are
  gathered, so every process returns the metrics of the whole split."""
  import tensorflow_datasets as tfds
  from lgvit import segmentation as seg_lib
  from lgvit.data import pipeline, seg_pipeline
  from lgvit.data.seg_transforms import reduce_zero_label
  from lgvit.modeling import normalize
  if mode not in ('whole', 'slide', 'multiscale'):
    raise ValueError(f"mode must be 'whole', 'slide' or 'multiscale', got {mode!r}")
  data, seg = config.data, config.seg
  shard = pipeline.process_split(split or data.eval_split, jax.process_index(), jax.process_count())
  ds = builder.as_dataset(split=shard, shuffle_files=False,
                          decoders={k: tfds.decode.SkipDecoding() for k in seg_pipeline.ENCODED})
  ds = ds.map(lambda ex: seg_pipeline.decode(ex))
  if data.reduce_zero_label:
    ds = ds.map(lambda image, label: (image, reduce_zero_label(label)))
  scale = tuple(data.scale)
  if mode == 'whole':  # scaled here, as the in-training eval does (no canvas bound: every image at its size)
    ds = ds.map(lambda image, label: (seg_pipeline.scale_for_eval(image, scale, (2**30, 2**30))[0], label))
  score = jax.jit(lambda label, logits: confusion_matrix(label, jnp.argmax(logits, -1), config.num_classes,
                                                          seg.ignore_label))
  confusion, count = np.zeros((config.num_classes,) * 2, np.int64), 0
  for image, label in tfds.as_numpy(ds):
    x = normalize(jnp.asarray(image[None]))
    if mode == 'whole':
      logits = resize_bilinear(seg_lib.infer_whole(apply_fn, x), label.shape)
    elif mode == 'slide':
      logits = seg_lib.infer_slide(apply_fn, x, crop=tuple(seg.eval_crop), stride=tuple(seg.eval_stride), scale=scale)
    else:
      logits = seg_lib.infer_multiscale(apply_fn, x, scale=scale, ratios=tuple(seg.ms_ratios), flip=seg.flip,
                                        mode=seg.eval_mode, crop=tuple(seg.eval_crop), stride=tuple(seg.eval_stride))
    confusion += np.asarray(score(label[None], logits), np.int64)
    count += 1
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    confusion = np.asarray(multihost_utils.process_allgather(confusion)).sum(0)
    count = int(np.asarray(multihost_utils.process_allgather(np.int64(count))).sum())
  row = metrics_row(confusion, config)
  row['count'] = count
  return row
