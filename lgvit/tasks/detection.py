"""Object detection and instance segmentation: Mask R-CNN on COCO (``config.task = 'detection'``,
docs/detection.md).

The train step's loss is the detector's own (:meth:`lgvit.models.mask_rcnn.MaskRCNN.train_losses`: RPN
classification + box, RoI classification + box, mask), on uint8 canvases normalised on the device with
everything outside each image's ``image_hw`` set to the mean colour (mmdet pads after normalising). An
undecodable image's slot (``valid == 0``) gets an empty image region and no objects, so it adds no
anchor, proposal or RoI to any loss.

The evaluator type ``detection`` runs the static, padded test path on every image of a split once,
maps the boxes back to each image's original size, pastes the 28x28 masks there (0.5 threshold) and
scores ``bbox`` and ``segm`` AP with pycocotools (:mod:`lgvit.detection`) against the split's full
ground truth (crowd objects included, as COCO's own annotation file).
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from lgvit import detection, evals, schema
from lgvit.data import det_pipeline, pipeline
from lgvit.segmentation import zero_outside
from lgvit.tasks.base import Task, register

#: The ground-truth fields of a batch the detector trains on.
TARGETS = ('gt_boxes', 'gt_labels', 'gt_masks', 'gt_valid')


def make_eval_step(model, settings: schema.Settings):
  """``(variables, batch) -> detections`` of a batch of :func:`lgvit.data.det_pipeline.eval_dataset`:
  ``boxes`` (B, D, 4) in the resized image's pixels, ``scores``, ``labels``, ``valid`` (B, D) and
  ``masks`` (B, D, 28, 28) probabilities (D = the model's ``max_detections``)."""
  dtype = settings.dtype

  def eval_step(variables, batch):
    image_hw = batch['image_hw'].astype(jnp.int32)
    found = model.apply(variables, detection.device_images(batch['image'], image_hw, dtype), train=False,
                        image_hw=image_hw)
    return {k: v.astype(jnp.float32) if jnp.issubdtype(v.dtype, jnp.floating) else v for k, v in found.items()}

  return eval_step


def image_results(found: dict, batch: dict, i: int, with_masks: bool) -> Optional[dict]:
  """Slot ``i`` of a host batch of detections -> its image's results in original pixels (``boxes`` (N, 4),
  ``scores``, ``labels`` and, ``with_masks``, ``masks`` as COCO RLEs), or None for a padding slot."""
  if not batch['mask'][i]:
    return None
  keep = np.asarray(found['valid'][i], bool)
  boxes = detection.to_original(found['boxes'][i][keep], batch['scale'][i], batch['orig_hw'][i])
  out = {'image_id': int(batch['image_id'][i]), 'boxes': boxes, 'scores': np.asarray(found['scores'][i][keep]),
         'labels': np.asarray(found['labels'][i][keep])}
  if with_masks:
    out['masks'] = detection.encode_masks(detection.paste_masks(found['masks'][i][keep], boxes, batch['orig_hw'][i]))
  return out


def summary(metrics: dict) -> str:
  """``bbox AP 0.3800 | segm AP 0.3440 | 5000 images`` (AP as fractions)."""
  parts = [f"{t} AP {metrics[f'{t}_AP']:.4f}" for t in detection.IOU_TYPES if f'{t}_AP' in metrics]
  parts.append(f"{metrics['count']} images")
  if metrics.get('skipped'):
    parts.append(f"{metrics['skipped']} unreadable")
  return ' | '.join(parts)


class DetectionEvaluator(evals.Evaluator):
  """COCO AP, AP50, AP75, APs, APm, APl of boxes (``bbox_*``) and masks (``segm_*``) as fractions, ``count``
  (images scored) and ``skipped`` (unreadable ones, scored as detecting nothing) over a split.

  Each process runs its shard of the images on its own devices; the results (boxes, scores, labels,
  RLE masks: a few kB per image) are gathered, so every process returns the metrics of the whole split.
  The ground truth is read once per evaluator (:func:`lgvit.data.det_pipeline.coco_ground_truth`)."""

  def __init__(self, spec: evals.EvalSpec, context: evals.Context):
    super().__init__(spec, context)
    self.builder, self.num_examples = evals.find_dataset(spec, context.settings.data_dir)
    self.iou_types = tuple(context.settings.options.get('iou_types', detection.IOU_TYPES))
    self.step = jax.jit(make_eval_step(context.model, context.settings))
    self._ground_truth = None

  def ground_truth(self) -> dict:
    if self._ground_truth is None:
      self._ground_truth = det_pipeline.coco_ground_truth(self.builder, self.spec.split)
    return self._ground_truth

  def run(self, variables) -> dict:
    settings = self.context.settings
    local_batch = settings.eval_batch_size // jax.process_count()
    local_variables, sharded = evals.on_local_devices(variables)
    ds, _ = det_pipeline.eval_dataset(settings.data, settings.options, self.builder, local_batch=local_batch,
                                      process_index=jax.process_index(), process_count=jax.process_count(),
                                      split=self.spec.split)
    with_masks = 'segm' in self.iou_types
    results, skipped = [], 0
    for batch in pipeline.as_numpy(ds):
      found = jax.device_get(self.step(local_variables, jax.device_put(batch, sharded)))
      skipped += int(np.sum(batch['unreadable']))
      results += [r for i in range(len(batch['mask'])) if (r := image_results(found, batch, i, with_masks))]
    scorer = detection.CocoScorer.from_dataset(self.ground_truth(), self.iou_types)
    parts = evals.gather_objects((results, skipped))
    for part_results, _ in parts:
      for r in part_results:
        scorer.add_detections(r['image_id'], r['boxes'], r['scores'], r['labels'], r.get('masks'))
    metrics = scorer.metrics()
    metrics['skipped'] = sum(part_skipped for _, part_skipped in parts)
    return metrics

  def summary(self, metrics: dict) -> str:
    return summary(metrics)


class Detection(Task):
  name = 'detection'
  main_metric = 'bbox_AP'
  section = 'det'

  def train_forward(self, model, settings: schema.Settings):
    """The detector's five losses; the metrics are its loss terms and sampling counts."""
    dtype, mask_stride = settings.dtype, int(settings.data.mask_stride)

    def forward(params, batch_stats, images, batch, rngs, aug_keys):
      # No on-device augmentation here (mmdet's flips and resizes ran on the host), so the first of the
      # augmentation keys draws the RPN's and RoI head's samples.
      rngs = {**rngs, 'sampling': aug_keys[0]}
      valid = batch['valid'] > 0
      image_hw = batch['image_hw'].astype(jnp.int32) * valid[:, None]  # an empty region: no anchors
      targets = {k: batch[k] for k in TARGETS}
      targets['gt_valid'] = targets['gt_valid'].astype(bool) & valid[:, None]
      (loss, metrics), new_vars = model.apply(
          {'params': params, 'batch_stats': batch_stats}, zero_outside(images, image_hw).astype(dtype), train=True,
          image_hw=image_hw, targets=targets, mask_stride=mask_stride, rngs=rngs, mutable=['batch_stats'])
      return loss, (metrics, new_vars.get('batch_stats', {}))

    return forward

  def eval_step(self, model, settings: schema.Settings):
    return make_eval_step(model, settings)

  def shard_fn(self, settings: schema.Settings):
    return det_pipeline.shard_dataset

  def dataset_classes(self, builder, settings: schema.Settings) -> Optional[int]:
    return det_pipeline.num_classes(builder)

  def batch_shapes(self, settings, batch, train):
    """lgvit.data.det_pipeline's batch contract at ``data.pad_size``, ``data.max_instances`` objects."""
    (h, w), g, s = settings.data.pad_size, settings.data.max_instances, settings.data.mask_stride
    one = ((batch,), jnp.int32)
    shapes = {'image': ((batch, h, w, 3), jnp.uint8), 'image_hw': ((batch, 2), jnp.int32),
              'gt_boxes': ((batch, g, 4), jnp.float32), 'gt_labels': ((batch, g), jnp.int32),
              'gt_masks': ((batch, g, h // s, w // s), jnp.uint8), 'gt_valid': ((batch, g), jnp.bool_)}
    if train:
      return {**shapes, 'valid': one}
    return {**shapes, 'image_id': ((batch,), jnp.int64), 'orig_hw': ((batch, 2), jnp.int32),
            'scale': ((batch, 2), jnp.float32), 'mask': one, 'unreadable': one}

  def summary(self, result) -> str:
    return ' | '.join(f"{t} AP {result[f'eval_{t}_AP']:.4f}" for t in detection.IOU_TYPES if f'eval_{t}_AP' in result)


register(Detection())
evals.register('detection', DetectionEvaluator)
