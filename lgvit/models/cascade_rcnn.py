"""Cascade (Mask) R-CNN (Cai and Vasconcelos, CVPR 2018) with FPN over any registered backbone, static shapes.

The detector of NomMer Table 2 and CoTNet Tables 7-8. It is :class:`lgvit.models.mask_rcnn.MaskRCNN`
(backbone, FPN, RPN, RoIAlign, the heads, every target function) with the one RoI head replaced by a
cascade of stages, each trained at a higher IoU on the boxes the stage before it refined. The numbers,
parameter tables and what differs from the authors' code are in ``docs/detection.md`` ("Cascade R-CNN").

Two reference implementations differ in how the stages are chained; both are fields here:

* mmdetection's ``CascadeRoIHead`` (the Swin configs NomMer trained with; the default):
  RPN SmoothL1 (beta 1/9), only anchors inside the image train it (``allowed_border=0``), 2000
  training proposals. Stage ``t`` assigns its proposals at IoU ``stage_ious[t]`` (0.5, 0.6, 0.7; no
  low-quality matches), adds the ground truths and samples 512 RoIs (a quarter positive), encodes with
  its own stds (0.1/0.1/0.2/0.2, then halved, then a third), and weights its losses by
  ``stage_loss_weights[t]`` (1, 0.5, 0.25). Each stage has a mask head, trained on its own positives.
  Between stages every sampled RoI but the added ground truths is regressed by its class (the gt
  class, or for a negative the best foreground logit) and clipped to the image: the next stage's
  proposals. Test: each stage refines the RoIs by its argmax class, the class logits are averaged
  over the stages (``score_average='logits'``), the last stage's deltas give the boxes, and the masks
  of the final boxes are the mean of every stage's mask probabilities.
* detectron2's ``CascadeROIHeads`` (ResNeSt's configs, which CoTNet cites for its detection
  settings): ``stage_resample=False`` keeps the first stage's 512 samples and only relabels their
  refined boxes at the later IoUs (no new sampling, no added ground truths, empty boxes dropped);
  each stage's RoI features pass their gradient at ``stage_gradient_scale`` (1/3) with stage weights
  1; ``score_average='probabilities'`` averages softmax scores; ``mask_stages='last'``: one mask head,
  on the last stage's positives.

``box_head='4conv1fc'`` with ``class_agnostic=False`` and ``box_loss='giou'`` (weight 10) are the Swin
3x configs' heads (GIoU on the decoded boxes); the R50 base config keeps the 2fc class-agnostic heads
with SmoothL1 (beta 1). ``with_mask=False`` is Cascade R-CNN (CoTNet Table 7).

The API is MaskRCNN's; the losses are named as mmdet's (``s0.loss_cls`` ... ``s2.loss_mask``).
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp

from lgvit.models import box_ops, mask_rcnn, registry
from lgvit.models.mask_rcnn import ZERO_MEANS, class_deltas, rcnn_box_losses

Array = jax.Array

#: mmdet's and detectron2's cascade stages: IoU thresholds and box coder stds (detectron2's BBOX_REG_WEIGHTS
#: (10, 10, 5, 5), (20, 20, 10, 10), (30, 30, 15, 15) are the reciprocals).
STAGE_IOUS = (0.5, 0.6, 0.7)
STAGE_STDS = ((0.1, 0.1, 0.2, 0.2), (0.05, 0.05, 0.1, 0.1), (0.033, 0.033, 0.067, 0.067))
MMDET_STAGE_WEIGHTS = (1.0, 0.5, 0.25)


def scale_gradient(x: Array, scale: float) -> Array:
  """``x`` forward; its gradient times ``scale`` backward (detectron2's ``_ScaleGradient``)."""
  if scale == 1.0:
    return x
  return x * scale + jax.lax.stop_gradient(x * (1.0 - scale))


def regress_by_class(rois: Array, deltas: Array, labels: Array, image_hw: Array, *, num_classes: int,
                     stds: Sequence[float]) -> Array:
  """mmdet ``BBoxHead.regress_by_class`` for one image: ``rois [R, 4]`` moved by the deltas of class
  ``labels [R]`` (class-agnostic deltas pass as they are), clipped to ``image_hw``."""
  return box_ops.decode_boxes(rois, class_deltas(deltas, labels, num_classes), ZERO_MEANS, stds, max_shape=image_hw)


def label_rois(rois: Array, roi_valid: Array, gt_boxes: Array, gt_labels: Array, gt_valid: Array, *,
               num_classes: int, iou_threshold: float, stds: Sequence[float]) -> dict[str, Array]:
  """detectron2 ``CascadeROIHeads._match_and_label_boxes`` for one image: every valid RoI is labelled by
  its best gt at ``iou_threshold`` (no sampling, no added ground truths, no low-quality matches).
  Returns :func:`lgvit.models.mask_rcnn.sample_rois`' dict, positives first (stable), ``is_gt`` False."""
  assigned, _ = box_ops.max_iou_assign(rois, gt_boxes, gt_valid, iou_threshold, iou_threshold, iou_threshold,
                                       match_low_quality=False, box_valid=roi_valid)
  order = jnp.argsort(~((assigned > 0) & roi_valid), stable=True)
  rois, valid, assigned = rois[order], roi_valid[order], assigned[order]
  positive = (assigned > 0) & valid
  gt_index = jnp.maximum(assigned - 1, 0)
  matched = gt_boxes[gt_index].astype(jnp.float32)
  targets = box_ops.encode_boxes(rois, jnp.where(positive[:, None], matched, rois), ZERO_MEANS, stds)
  return dict(rois=rois, valid=valid, positive=positive,
              labels=jnp.where(positive, gt_labels[gt_index], num_classes).astype(jnp.int32), gt_index=gt_index,
              matched=jnp.where(positive[:, None], matched, 0.0),
              box_targets=jnp.where(positive[:, None], targets, 0.0),
              is_gt=jnp.zeros_like(valid))


class CascadeRCNN(mask_rcnn.MaskRCNN):
  """MaskRCNN with a cascade of RoI stages (module docstring); the defaults are mmdet's cascade configs."""
  # mmdet's cascade base configs (RPN and sampling) where they differ from Mask R-CNN's.
  rpn_smooth_l1_beta: float = 1.0 / 9.0
  rpn_allowed_border: int = 0
  rpn_train_max_proposals: int = 2000
  rcnn_match_low_quality: bool = False
  class_agnostic: bool = True
  box_loss: str = 'smooth_l1'
  # The cascade.
  stage_ious: Sequence[float] = STAGE_IOUS
  stage_stds: Sequence[Sequence[float]] = STAGE_STDS
  stage_loss_weights: Sequence[float] = MMDET_STAGE_WEIGHTS
  stage_resample: bool = True  # False: detectron2 (the first stage's samples, relabelled)
  stage_gradient_scale: float = 1.0  # detectron2: 1 / number of stages on each stage's RoI features
  score_average: str = 'logits'  # 'logits' (mmdet) | 'probabilities' (detectron2)
  mask_stages: str = 'all'  # 'all' (mmdet: a mask head per stage) | 'last' (detectron2)

  def setup(self):
    stages = len(self.stage_ious)
    if len(self.stage_stds) != stages or len(self.stage_loss_weights) != stages:
      raise ValueError(f'{self.name or "CascadeRCNN"}: stage_ious, stage_stds and stage_loss_weights need one entry '
                       f'per stage; got {stages}, {len(self.stage_stds)} and {len(self.stage_loss_weights)}')
    if self.score_average not in ('logits', 'probabilities') or self.mask_stages not in ('all', 'last'):
      raise ValueError(f"score_average must be 'logits' or 'probabilities' and mask_stages 'all' or 'last'; got "
                       f'{self.score_average!r} and {self.mask_stages!r}')
    self.setup_pyramid_and_rpn()
    self.bbox_heads = [self.make_box_head() for _ in range(stages)]
    if self.with_mask:
      self.mask_heads = [self.make_mask_head() for _ in range(stages if self.mask_stages == 'all' else 1)]

  def _mask_head_of_stage(self, stage: int):
    """The mask head stage ``stage`` trains, or None."""
    if not self.with_mask:
      return None
    if self.mask_stages == 'all':
      return self.mask_heads[stage]
    return self.mask_heads[0] if stage == len(self.stage_ious) - 1 else None

  def _relabel(self, rois, roi_valid, gt, *, iou, stds):
    return jax.vmap(lambda r, v, b, l, g: label_rois(
        r, v, b, l, g, num_classes=self.num_classes, iou_threshold=iou, stds=stds))(
            rois, roi_valid, gt['boxes'], gt['labels'], gt['valid'])

  def _refine(self, rois, deltas, labels, image_hw, stds):
    return jax.vmap(lambda r, d, l, hw: regress_by_class(r, d, l, hw, num_classes=self.num_classes, stds=stds))(
        rois, deltas, labels, image_hw)

  def roi_train(self, pyramid: Sequence[Array], proposals: Array, proposal_valid: Array, image_hw: Array,
                gt: Mapping[str, Array], mask_stride: int, key: Array):
    """Every stage's losses on the training proposals: ``(losses, metrics)``."""
    batch, num_classes = proposals.shape[0], self.num_classes
    losses, metrics = {}, {}
    stages = len(self.stage_ious)
    for t, (iou, stds, weight) in enumerate(zip(self.stage_ious, self.stage_stds, self.stage_loss_weights)):
      if t == 0 or self.stage_resample:
        stage_key = key if t == 0 else jax.random.fold_in(key, t)  # one stage: Mask R-CNN's samples
        samples = self._sample(stage_key, proposals, proposal_valid, gt, iou=iou,
                               match_low_quality=self.rcnn_match_low_quality, stds=stds)
      else:
        samples = self._relabel(proposals, proposal_valid, gt, iou=iou, stds=stds)
      rois = jax.lax.stop_gradient(samples['rois'])
      features = scale_gradient(self._roi_features(pyramid, rois, 7), self.stage_gradient_scale)
      logits, deltas = self.bbox_heads[t](features, train=True, mask=samples['valid'])
      loss_cls, loss_bbox, accuracy = rcnn_box_losses(logits, deltas, samples, num_classes, box_loss=self.box_loss,
                                                      stds=stds, box_loss_weight=self.box_loss_weight)
      losses[f's{t}.loss_cls'], losses[f's{t}.loss_bbox'] = weight * loss_cls, weight * loss_bbox
      metrics[f's{t}.accuracy'] = accuracy
      metrics[f's{t}.positives'] = jnp.sum(samples['positive']) / batch
      if (mask_head := self._mask_head_of_stage(t)) is not None:
        losses[f's{t}.loss_mask'] = weight * self._mask_loss(mask_head, pyramid, samples, gt['masks'], mask_stride)
      if t < stages - 1:  # the next stage's proposals: these RoIs regressed, without gradient
        labels = jnp.where(samples['labels'] == num_classes, jnp.argmax(logits[..., :num_classes], axis=-1),
                           samples['labels'])
        proposals = jax.lax.stop_gradient(self._refine(rois, deltas, labels, image_hw, stds))
        if self.stage_resample:  # mmdet: the added ground truths leave
          proposal_valid = samples['valid'] & ~samples['is_gt']
        else:  # detectron2: empty boxes leave
          proposal_valid = samples['valid'] & box_ops.nonempty(proposals)
    return losses, metrics

  def detect_rois(self, pyramid: Sequence[Array], proposals: Array, proposal_valid: Array,
                  image_hw: Array) -> dict[str, Array]:
    """The cascade's test path on the RPN's proposals: the detections dict (MaskRCNN's)."""
    stages = len(self.stage_ious)
    rois, stage_scores = proposals, []
    for t, stds in enumerate(self.stage_stds):
      logits, deltas = self.bbox_heads[t](self._roi_features(pyramid, rois, 7))
      stage_scores.append(logits if self.score_average == 'logits' else jax.nn.softmax(logits, axis=-1))
      if t < stages - 1:
        rois = self._refine(rois, deltas, jnp.argmax(logits[..., :self.num_classes], axis=-1), image_hw, stds)
    mean = sum(stage_scores) / stages
    if self.score_average == 'probabilities':  # detections() takes logits: softmax(log p) is p again
      mean = jnp.log(jnp.maximum(mean, jnp.finfo(jnp.float32).tiny))
    found = self._detections(mean, deltas, rois, proposal_valid, image_hw, stds=self.stage_stds[-1])
    if self.with_mask:
      probabilities = self._mask_probabilities(self.mask_heads, pyramid, found)
      found['masks'] = jnp.where(found['valid'][:, :, None, None], probabilities, 0.0)
    return found


def _create_cascade_rcnn(name: str, **kwargs) -> CascadeRCNN:
  return mask_rcnn.build_detector(CascadeRCNN, name, **kwargs)


# The Swin 3x cascade configs' heads (NomMer Table 2 uses them for every transformer row).
SWIN_CASCADE_HEADS = dict(box_head='4conv1fc', class_agnostic=False, box_loss='giou', box_loss_weight=10.0)
# ResNeSt's detectron2 cascade (CoTNet Tables 7-8): its chaining, and detectron2's RPN and box losses.
DETECTRON2_CASCADE = dict(stage_resample=False, stage_gradient_scale=1.0 / 3.0, stage_loss_weights=(1.0, 1.0, 1.0),
                          score_average='probabilities', mask_stages='last', box_loss='l1', rpn_smooth_l1_beta=0.0,
                          rpn_allowed_border=-1, class_agnostic=True, box_loss_weight=1.0)


#: Swin's 3x heads: every row of NomMer Table 2 (its R50 row is Swin's, trained with the same heads), and SALG.
_SWIN_HEADS = ('resnet50', 'resnet101', 'swin_t', 'swin_s', 'salg_st', 'salg_t', 'salg_s', 'nommer_t', 'nommer_s',
               'nommer_b')
_COTNET = ('cotnet50', 'cotnet101', 'cotnext50_2x48d')


def _heads(backbone: str) -> dict:
  """The cascade heads of ``backbone``'s paper: Swin's 3x configs (NomMer Table 2), ResNeSt's detectron2
  cascade for CoTNet, mmdet's R50 base config (2fc, class-agnostic, SmoothL1) for LESA and SA."""
  if backbone in _SWIN_HEADS:
    return SWIN_CASCADE_HEADS
  return DETECTRON2_CASCADE if backbone in _COTNET else {}


# params: exact at 80 classes. paper: NomMer Table 2 (Cascade Mask R-CNN, 3x: params in M, box and mask AP;
# Res50 82M, Swin-T 86M, Swin-S 107M) and CoTNet Tables 7-8 (1x). docs/detection.md has the tables.
_CASCADE_MASK_PAPER = {
    'resnet50': dict(params=82e6, box_ap=46.3, mask_ap=40.1),
    'swin_t': dict(params=86e6, box_ap=50.5, mask_ap=43.7), 'swin_s': dict(params=107e6, box_ap=51.8, mask_ap=44.7),
    'nommer_t': dict(params=80e6, box_ap=51.8, mask_ap=44.7), 'nommer_s': dict(params=99e6, box_ap=52.4, mask_ap=45.1),
    'nommer_b': dict(params=130e6, box_ap=52.7, mask_ap=45.6),
    'cotnet50': dict(box_ap=46.94, mask_ap=40.25), 'cotnet101': dict(box_ap=48.97, mask_ap=41.98),
    'cotnext50_2x48d': dict(box_ap=47.63, mask_ap=40.76),
}
_CASCADE_PAPER = {'cotnet50': dict(box_ap=46.11), 'cotnet101': dict(box_ap=48.19),
                  'cotnext50_2x48d': dict(box_ap=46.79)}
CASCADE_MASK_PARAMS = {
    'resnet50': 82_231_538, 'resnet101': 101_223_666, 'swin_t': 85_629_804, 'swin_s': 106_947_708,
    'salg_st': 63_074_534, 'salg_t': 85_756_470, 'salg_s': 107_091_798, 'lesa_resnet50': 75_300_574,
    'lesa_wrn50': 112_424_574, 'sa_resnet50': 69_573_854, 'cotnet50': 72_641_734, 'cotnet101': 88_691_366,
    'cotnext50_2x48d': 80_465_594, 'nommer_t': 82_431_494, 'nommer_s': 101_508_078, 'nommer_b': 134_125_998,
}
CASCADE_PARAMS = {
    'resnet50': 74_301_698, 'resnet101': 93_293_826, 'swin_t': 77_699_964, 'swin_s': 99_017_868,
    'salg_st': 55_144_694, 'salg_t': 77_826_630, 'salg_s': 99_161_958, 'lesa_resnet50': 67_370_734,
    'lesa_wrn50': 104_494_734, 'sa_resnet50': 61_644_014, 'cotnet50': 69_997_430, 'cotnet101': 86_047_062,
    'cotnext50_2x48d': 77_821_290, 'nommer_t': 74_501_654, 'nommer_s': 93_578_238, 'nommer_b': 126_196_158,
}
mask_rcnn.register_detectors('cascade_mask_rcnn', _create_cascade_rcnn, {
    b: (CASCADE_MASK_PARAMS[b], _CASCADE_MASK_PAPER.get(b, {}), _heads(b)) for b in mask_rcnn.DETECTION_BACKBONES})
mask_rcnn.register_detectors('cascade_rcnn', _create_cascade_rcnn, {
    b: (CASCADE_PARAMS[b], _CASCADE_PAPER.get(b, {}), _heads(b)) for b in mask_rcnn.DETECTION_BACKBONES},
    with_mask=False)
