"""Mask R-CNN with FPN (He et al., ICCV 2017) over any registered backbone, with static shapes.

Reads like mmdetection's ``configs/_base_/models/mask-rcnn_r50_fpn.py``, the detector that the Swin,
SALG, LESA and CoTNet papers trained on COCO; the numbers, the parameter table and what differs are
in ``docs/detection.md`` ("Mask R-CNN"). Top to bottom:

* backbone: the registered classification model built with ``features_only=True``, four stage maps
  at strides 4, 8, 16, 32, optionally followed by a LayerNorm per stage (Swin's detection backbone
  adds ``norm0..norm3``; the transformer entries switch it on). ``backbone_norm_eval`` runs it with
  ``train=False`` (mmdet's ``norm_eval=True``: BatchNorm uses and keeps its ImageNet statistics).
  LESA's classification layout has a stride-1 last stage (strides 4, 8, 16, 16); its official
  detection code (LESA_detection, ``strides=(1, 2, 2, 2)``, ``stage_spatial_res=[256, 128, 64, 32]``
  at 1024 px) gives the last stage stride 2 again, and so do the ``mask_rcnn_lesa_*`` entries
  (``stage_strides=(1, 2, 2, 2)``, with the detection code's 2-D position embedding,
  ``lesa_position='axial'``). Other strides are refused: the RPN anchors and the RoI level mapping
  assume an FPN whose levels double.
* FPN neck (``neck``): 1x1 lateral convs (bias) to 256 channels, top-down nearest upsampling and add,
  3x3 output convs, P6 = P5 output subsampled by 2 (mmdet's ``max_pool2d(kernel 1, stride 2)``);
  Xavier-uniform weights, zero biases.
* RPN head (``rpn_head``, shared over P2-P6): 3x3 conv 256 + ReLU, 1x1 objectness (3 anchors, sigmoid)
  and 1x1 deltas (12); N(0, 0.01) weights. Anchors: scale 8, ratios 0.5/1/2, strides 4..64.
  Targets: MaxIoUAssigner(0.7, 0.3, min_pos 0.3, low-quality matches), 256 sampled anchors with up to
  half positives, deltas with means 0 and stds 1; losses: sigmoid BCE and L1, both divided by the
  number of sampled anchors. Proposals: per level the top ``nms_pre`` by score (2000 train, 1000
  test), decoded, clipped to the image, empty boxes dropped, NMS 0.7 per level (mmdet's batched_nms
  over level ids), the best 1000 kept; gradients stop there, as in mmdet.
* RoI heads: in training the ground truths join the proposals (assigned to themselves), the
  proposals are assigned by MaxIoUAssigner(0.5, 0.5, min_pos 0.5, low-quality matches: the mask
  config's setting) and 512 RoIs sampled with up to a quarter positives. Box branch
  (``bbox_head``): RoIAlign 7x7 (sampling_ratio 0, aligned) from P2-P5 by mmdet's scale rule ->
  flatten -> fc 1024 -> fc 1024 -> classes + 1 logits (softmax CE, background last) and class-specific
  deltas (stds 0.1, 0.1, 0.2, 0.2, L1 over the positives divided by the number of sampled RoIs).
  Mask branch (``mask_head``) on the positive RoIs: RoIAlign 14x14 -> 4x (3x3 conv 256 + ReLU) ->
  2x2 stride-2 deconv + ReLU -> 1x1 conv per class; BCE of the ground-truth class's 28x28 logits
  against the gt mask RoIAligned to the RoI and binarised at 0.5, averaged over every pixel.
* Test: the box branch on the 1000 proposals, class-specific boxes decoded and clipped, score > 0.05,
  class-wise NMS 0.5, the best 100 per image; the mask branch on those boxes gives the predicted
  class's 28x28 probabilities. Pasting into the image is the evaluator's job
  (``box_ops.paste_masks``), as in mmdet.

Every selection (top-k, NMS, sampling) has a static size and a validity mask, so one compilation
serves every batch, sharded over a data mesh, with no host round trip. The heads compute in
``dtype`` (bfloat16 works); boxes, targets and losses are float32.

API: ``MaskRCNN(backbone=..., num_classes=80, ...)`` and
``__call__(images, *, train, image_hw=None, targets=None, mask_stride=None)``. ``train=True`` takes
the batch's ``gt_boxes [B, G, 4]``, ``gt_labels [B, G]``, ``gt_masks [B, G, Hm, Wm]`` and
``gt_valid [B, G]`` in ``targets`` (the data pipeline's batch; ``gt_masks`` uint8 coverage 0..255),
draws its samples from the ``'sampling'`` RNG and returns ``(total_loss, metrics)``; ``train=False``
returns ``boxes [B, 100, 4]``, ``scores``, ``labels`` (int32), ``valid`` (bool) and
``masks [B, 100, 28, 28]`` (float32 probabilities); invalid slots are zero. The parts run alone:
``pyramid(images, train=...)`` (backbone + FPN), ``train_losses(pyramid, image_hw, targets,
mask_stride)`` and ``detect(pyramid, image_hw)``, through ``apply(..., method=...)``; the target code
is plain functions (``rpn_targets``, ``sample_rois``, ``mask_targets``, ``rpn_proposals``, ``detections``).
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lgvit.errors import InvalidInputSizeError
from lgvit.models import box_ops, layers, registry

Array = jax.Array

#: mmdet's FPN init: Xavier uniform on every conv, zero bias.
_xavier = nn.initializers.xavier_uniform()
#: RPNHead's init_cfg: Normal(std=0.01) on every conv, zero bias.
_normal_001 = nn.initializers.normal(0.01)
#: BBoxHead: fc_cls N(0, 0.01), fc_reg N(0, 0.001).
_normal_0001 = nn.initializers.normal(0.001)
_zeros = nn.initializers.zeros

RPN_STDS = (1.0, 1.0, 1.0, 1.0)
RCNN_STDS = (0.1, 0.1, 0.2, 0.2)
ZERO_MEANS = (0.0, 0.0, 0.0, 0.0)
ANCHOR_RATIOS = (0.5, 1.0, 2.0)
ANCHOR_SCALES = (8,)
#: The FPN levels' strides (P2-P6); RoIs are pooled from the first four.
PYRAMID_STRIDES = (4, 8, 16, 32, 64)


def _resize_nearest(x: Array, hw: Sequence[int]) -> Array:
  """``F.interpolate(size=hw, mode='nearest')`` on NHWC: output pixel i reads input floor(i * in / out)."""
  in_h, in_w = x.shape[1:3]
  out_h, out_w = hw
  if (in_h, in_w) == (out_h, out_w):
    return x
  rows = np.floor(np.arange(out_h) * (in_h / out_h)).astype(np.int32)
  cols = np.floor(np.arange(out_w) * (in_w / out_w)).astype(np.int32)
  return x[:, rows][:, :, cols]


# ----------------------------------------------------------------------------------------------
# Modules.
# ----------------------------------------------------------------------------------------------


class FPN(nn.Module):
  """mmdet ``FPN(out_channels=256, num_outs=5)``: four backbone maps -> five 256-channel levels.

  ``norm=True`` is detectron2's ``FPN.NORM: SyncBN`` (ResNeSt's detection configs, which CoTNet
  follows): every lateral and output conv without bias, followed by BatchNorm."""
  channels: int = 256
  num_outs: int = 5
  dtype: Any = None
  norm: bool = False

  def _conv(self, x: Array, size: int, name: str, train: bool) -> Array:
    x = layers.Conv2d(self.channels, size, padding=size // 2, use_bias=not self.norm, kernel_init=_xavier,
                      bias_init=_zeros, dtype=self.dtype, name=name)(x)
    return layers.BatchNorm(dtype=self.dtype, name=f'{name}_bn')(x, train=train) if self.norm else x

  @nn.compact
  def __call__(self, features: Sequence[Array], *, train: bool = False) -> list[Array]:
    laterals = [self._conv(f, 1, f'lateral{i}', train) for i, f in enumerate(features)]
    for i in range(len(laterals) - 1, 0, -1):  # top-down: each level adds its coarser neighbour
      laterals[i - 1] = laterals[i - 1] + _resize_nearest(laterals[i], laterals[i - 1].shape[1:3])
    outs = [self._conv(lat, 3, f'fpn{i}', train) for i, lat in enumerate(laterals)]
    while len(outs) < self.num_outs:  # a 1x1 max pool with stride 2 is a plain subsampling
      outs.append(outs[-1][:, ::2, ::2])
    return outs


class RPNHead(nn.Module):
  """mmdet ``RPNHead``, one set of weights over every level: (objectness logits [B, H*W*A],
  deltas [B, H*W*A, 4]) per level, float32, in the anchors' order (location-major, anchor fastest)."""
  num_anchors: int = 3
  channels: int = 256
  dtype: Any = None

  @nn.compact
  def __call__(self, pyramid: Sequence[Array]):
    conv = layers.Conv2d(self.channels, 3, padding=1, use_bias=True, kernel_init=_normal_001, bias_init=_zeros,
                         dtype=self.dtype, name='rpn_conv')
    cls = layers.Conv2d(self.num_anchors, 1, use_bias=True, kernel_init=_normal_001, bias_init=_zeros,
                        dtype=self.dtype, name='rpn_cls')
    reg = layers.Conv2d(4 * self.num_anchors, 1, use_bias=True, kernel_init=_normal_001, bias_init=_zeros,
                        dtype=self.dtype, name='rpn_reg')
    scores, deltas = [], []
    for level in pyramid:
      hidden = nn.relu(conv(level))
      batch = level.shape[0]
      scores.append(cls(hidden).astype(jnp.float32).reshape(batch, -1))
      deltas.append(reg(hidden).astype(jnp.float32).reshape(batch, -1, 4))
    return scores, deltas


class Shared2FCBBoxHead(nn.Module):
  """mmdet ``Shared2FCBBoxHead``: [R, 7, 7, C] RoI features -> (logits [R, K+1], deltas [R, 4K]), float32.

  The flatten is NHWC (h, w, c) where PyTorch's is (c, h, w): same parameters, a permuted fc1 input
  (a weight converter must permute it)."""
  num_classes: int
  fc_channels: int = 1024
  class_agnostic: bool = False  # mmdet reg_class_agnostic: deltas [R, 4]
  dtype: Any = None

  @nn.compact
  def __call__(self, rois: Array, *, train: bool = False, mask: Optional[Array] = None):
    del train, mask  # no BatchNorm here; the arguments keep the box heads interchangeable
    x = rois.reshape(rois.shape[:-3] + (-1,))
    for i in range(2):
      x = nn.relu(nn.Dense(self.fc_channels, kernel_init=_xavier, bias_init=_zeros, dtype=self.dtype,
                           name=f'shared_fc{i}')(x))
    return box_predictions(x, self.num_classes, self.class_agnostic, self.dtype)


class ConvFCBBoxHead(nn.Module):
  """mmdet ``ConvFCBBoxHead(num_shared_convs=4, num_shared_fcs=1)`` with ``norm_cfg=SyncBN`` (the Swin
  cascade configs' "4conv1fc" head; detectron2's ``FastRCNNConvFCHead`` with NUM_CONV 4, NUM_FC 1 and
  NORM SyncBN is the same network): 4x (3x3 conv 256, no bias, BatchNorm, ReLU) -> flatten -> fc 1024 +
  ReLU -> ``box_predictions``. Convs kaiming_normal(fan_out), the fc Xavier uniform.

  ``mask [...]`` marks the real RoIs: in training only they make the BatchNorm statistics (mmdet and
  detectron2 see no padding slots). The flatten is NHWC, as in :class:`Shared2FCBBoxHead`."""
  num_classes: int
  num_convs: int = 4
  conv_channels: int = 256
  fc_channels: int = 1024
  class_agnostic: bool = False
  dtype: Any = None

  @nn.compact
  def __call__(self, rois: Array, *, train: bool = False, mask: Optional[Array] = None):
    lead = rois.shape[:-3]
    x = rois.reshape((-1,) + rois.shape[-3:])
    flat_mask = None if mask is None else mask.reshape(-1, 1, 1)
    for i in range(self.num_convs):
      x = layers.ConvBN(self.conv_channels, 3, dtype=self.dtype, name=f'shared_conv{i}')(x, train=train, mask=flat_mask)
    x = x.reshape(lead + (-1,))
    x = nn.relu(nn.Dense(self.fc_channels, kernel_init=_xavier, bias_init=_zeros, dtype=self.dtype,
                         name='shared_fc0')(x))
    return box_predictions(x, self.num_classes, self.class_agnostic, self.dtype)


#: ``MaskRCNN.box_head`` -> its module.
BOX_HEADS = {'2fc': Shared2FCBBoxHead, '4conv1fc': ConvFCBBoxHead}


def box_predictions(x: Array, num_classes: int, class_agnostic: bool, dtype: Any):
  """mmdet ``BBoxHead``'s two last layers on the head's features: (logits [.., K+1], deltas [.., 4K] or
  [.., 4]) in float32, N(0, 0.01) and N(0, 0.001) weights."""
  logits = nn.Dense(num_classes + 1, kernel_init=_normal_001, bias_init=_zeros, dtype=dtype, name='fc_cls')(x)
  deltas = nn.Dense(4 * (1 if class_agnostic else num_classes), kernel_init=_normal_0001, bias_init=_zeros,
                    dtype=dtype, name='fc_reg')(x)
  return logits.astype(jnp.float32), deltas.astype(jnp.float32)


class FCNMaskHead(nn.Module):
  """mmdet ``FCNMaskHead``: [R, 14, 14, C] -> per-class mask logits [R, 28, 28, K] (float32).

  Every conv, the deconv included, is kaiming_normal(fan_out, relu) with zero bias (mmcv
  ConvModule's init and FCNMaskHead.init_weights)."""
  num_classes: int
  num_convs: int = 4
  channels: int = 256
  dtype: Any = None
  norm: bool = False  # detectron2 ROI_MASK_HEAD.NORM SyncBN: the convs without bias, then BatchNorm

  @nn.compact
  def __call__(self, rois: Array, *, train: bool = False, mask: Optional[Array] = None) -> Array:
    """``mask`` marks the real RoIs for the BatchNorm statistics (``norm=True``, training)."""
    lead = rois.shape[:-3]  # [B, R] or [R]: the convs take one flat batch of RoIs
    x = rois.reshape((-1,) + rois.shape[-3:])
    flat_mask = None if mask is None else mask.reshape(-1, 1, 1)
    for i in range(self.num_convs):
      if self.norm:
        x = layers.ConvBN(self.channels, 3, dtype=self.dtype, name=f'conv{i}')(x, train=train, mask=flat_mask)
      else:
        x = nn.relu(layers.Conv2d(self.channels, 3, padding=1, use_bias=True,
                                  kernel_init=layers.kaiming_normal_fan_out, bias_init=_zeros, dtype=self.dtype,
                                  name=f'conv{i}')(x))
    x = layers.UpsampleConvTranspose(self.channels, 2, kernel_init=layers.kaiming_normal_fan_out, bias_init=_zeros,
                                     dtype=self.dtype, name='upsample')(x)
    x = nn.relu(x)
    x = layers.Conv2d(self.num_classes, 1, use_bias=True, kernel_init=layers.kaiming_normal_fan_out,
                      bias_init=_zeros, dtype=self.dtype, name='conv_logits')(x)
    return x.astype(jnp.float32).reshape(lead + x.shape[1:])


# ----------------------------------------------------------------------------------------------
# Targets, proposals and detections: per-image functions (vmapped over the batch by the module).
# ----------------------------------------------------------------------------------------------


def anchor_valid_flags(feature_hws: Sequence[tuple[int, int]], strides: Sequence[int], image_hw: Array,
                       size_divisor: int = 32, num_anchors: int = 3) -> Array:
  """mmdet ``AnchorGenerator.valid_flags`` over all levels (concatenated), for one image.

  An anchor is valid when its location lies inside the image's own padded size (``image_hw``
  rounded up to ``size_divisor``, mmdet's ``pad_shape``): ``y < ceil(pad_h / stride)``, likewise x.
  With ``allowed_border=-1`` these are the only anchors the RPN's targets consider."""
  pad_hw = -(-image_hw.astype(jnp.int32) // size_divisor) * size_divisor
  flags = []
  for (h, w), stride in zip(feature_hws, strides):
    valid_h = jnp.minimum(-(-pad_hw[0] // stride), h)
    valid_w = jnp.minimum(-(-pad_hw[1] // stride), w)
    inside = (jnp.arange(h)[:, None] < valid_h) & (jnp.arange(w)[None, :] < valid_w)
    flags.append(jnp.repeat(inside.reshape(-1), num_anchors))
  return jnp.concatenate(flags)


def anchor_inside_flags(anchors: Array, valid_flags: Array, image_hw: Array, allowed_border: int = -1) -> Array:
  """mmdet ``anchor_inside_flags`` for one image: ``valid_flags``, and with ``allowed_border >= 0`` only
  the anchors inside the image (``image_hw``, before padding) widened by ``allowed_border`` pixels."""
  if allowed_border < 0:
    return valid_flags
  h, w = image_hw[0].astype(jnp.float32), image_hw[1].astype(jnp.float32)
  b = float(allowed_border)
  return (valid_flags & (anchors[:, 0] >= -b) & (anchors[:, 1] >= -b) & (anchors[:, 2] < w + b)
          & (anchors[:, 3] < h + b))


def rpn_targets(key: Array, anchors: Array, anchor_valid: Array, gt_boxes: Array, gt_valid: Array, *,
                num_samples: int = 256, pos_fraction: float = 0.5, pos_iou: float = 0.7, neg_iou: float = 0.3,
                min_pos_iou: float = 0.3):
  """The RPN's sampled anchors of one image: ``(positive [N], negative [N], box_targets [N, 4])``.

  MaxIoUAssigner with low-quality matches, then RandomSampler; targets are the deltas (means 0,
  stds 1) of each positive anchor to its gt, zero elsewhere."""
  assigned, _ = box_ops.max_iou_assign(anchors, gt_boxes, gt_valid, pos_iou, neg_iou, min_pos_iou,
                                       match_low_quality=True, box_valid=anchor_valid)
  positive, negative = box_ops.sample_random(key, assigned, num_samples, pos_fraction, valid=anchor_valid)
  matched = gt_boxes[jnp.maximum(assigned - 1, 0)]
  # Non-positive anchors may be degenerate relative to an arbitrary gt: encode against themselves.
  targets = box_ops.encode_boxes(anchors, jnp.where(positive[:, None], matched, anchors), ZERO_MEANS, RPN_STDS)
  return positive, negative, jnp.where(positive[:, None], targets, 0.0)


def rpn_loss(logits: Array, deltas: Array, positive: Array, negative: Array, box_targets: Array,
             smooth_l1_beta: float = 0.0):
  """mmdet's RPN losses over a batch: ``(loss_cls, loss_bbox)``, both sums over the batch's sampled
  anchors divided by their number (``avg_factor = num_pos + num_neg``); the box loss is L1, or
  SmoothL1 with ``smooth_l1_beta > 0`` (the cascade configs' 1/9)."""
  sampled = positive | negative
  avg_factor = jnp.maximum(jnp.sum(sampled), 1).astype(jnp.float32)
  bce = optax.sigmoid_binary_cross_entropy(logits, positive.astype(jnp.float32))
  loss_cls = jnp.sum(jnp.where(sampled, bce, 0.0)) / avg_factor
  l1 = jnp.sum(box_ops.smooth_l1(deltas - box_targets, smooth_l1_beta), axis=-1)
  loss_bbox = jnp.sum(jnp.where(positive, l1, 0.0)) / avg_factor
  return loss_cls, loss_bbox


def rpn_proposals(scores: Sequence[Array], deltas: Sequence[Array], anchors: Sequence[Array], image_hw: Array, *,
                  nms_pre: int, max_proposals: int, iou_threshold: float = 0.7):
  """mmdet ``RPNHead._bbox_post_process`` for one image: ``(boxes [max_proposals, 4], valid)``.

  Per level (``scores [N_l]`` logits, ``deltas [N_l, 4]``, ``anchors [N_l, 4]``) the ``nms_pre`` best,
  decoded and clipped to ``image_hw``; boxes of zero width or height are dropped
  (``min_bbox_size=0``); NMS runs per level (level ids as batched_nms classes) and the best
  ``max_proposals`` over all levels are kept, in descending score order."""
  kept_scores, kept_boxes, level_ids = [], [], []
  for level, (s, d, a) in enumerate(zip(scores, deltas, anchors)):
    k = min(nms_pre, s.shape[0])
    top, index = jax.lax.top_k(jax.nn.sigmoid(s), k)
    kept_scores.append(top)
    kept_boxes.append(box_ops.decode_boxes(a[index], d[index], ZERO_MEANS, RPN_STDS, max_shape=image_hw))
    level_ids.append(jnp.full((k,), level, jnp.int32))
  boxes = jnp.concatenate(kept_boxes)
  level_scores = jnp.concatenate(kept_scores)
  level_scores = jnp.where(box_ops.nonempty(boxes), level_scores, -jnp.inf)  # NMS drops scores <= -inf
  index, valid = box_ops.batched_nms(boxes, level_scores, jnp.concatenate(level_ids), iou_threshold, max_proposals)
  return jnp.where(valid[:, None], boxes[index], 0.0), valid


def sample_rois(key: Array, proposals: Array, proposal_valid: Array, gt_boxes: Array, gt_labels: Array,
                gt_valid: Array, *, num_classes: int, num_samples: int = 512, pos_fraction: float = 0.25,
                iou_threshold: float = 0.5, match_low_quality: bool = True,
                stds: Sequence[float] = RCNN_STDS) -> dict[str, Array]:
  """StandardRoIHead's assignment and sampling for one image, ``num_samples`` RoIs, positives first.

  As mmdet: the proposals are assigned (MaxIoUAssigner, pos = neg = min_pos = ``iou_threshold``),
  then the valid ground truths are prepended as proposals assigned to themselves
  (``add_gt_as_proposals``), then RandomSampler draws up to ``num_samples * pos_fraction``
  positives and fills the rest with negatives. Returns ``rois [S, 4]``, ``valid [S]`` (a sampled
  RoI), ``positive [S]``, ``labels [S]`` (the gt class for positives, ``num_classes`` =
  background otherwise), ``gt_index [S]``, ``matched [S, 4]`` (the positives' gt boxes, zero
  elsewhere), ``box_targets [S, 4]`` (their deltas with ``stds``, default 0.1, 0.1, 0.2, 0.2; zero for
  negatives) and ``is_gt [S]`` (the RoI is a ground truth added as a proposal). The first
  ``int(num_samples * pos_fraction)`` slots hold every positive."""
  num_gts = gt_boxes.shape[0]
  assigned, _ = box_ops.max_iou_assign(proposals, gt_boxes, gt_valid, iou_threshold, iou_threshold, iou_threshold,
                                       match_low_quality=match_low_quality, box_valid=proposal_valid)
  gt_assigned = jnp.where(gt_valid, jnp.arange(1, num_gts + 1, dtype=jnp.int32), -1)
  boxes = jnp.concatenate([gt_boxes.astype(jnp.float32), proposals])
  assigned = jnp.concatenate([gt_assigned, assigned])
  candidate = jnp.concatenate([gt_valid, proposal_valid])
  positive, negative = box_ops.sample_random(key, assigned, num_samples, pos_fraction, valid=candidate)
  rank = jnp.where(positive, 0, jnp.where(negative, 1, 2))
  order = jnp.argsort(rank, stable=True)[:num_samples]
  rois, roi_rank = boxes[order], rank[order]
  gt_index = jnp.maximum(assigned[order] - 1, 0)
  is_positive = roi_rank == 0
  matched = gt_boxes[gt_index].astype(jnp.float32)
  targets = box_ops.encode_boxes(rois, jnp.where(is_positive[:, None], matched, rois), ZERO_MEANS, stds)
  return dict(rois=rois, valid=roi_rank < 2, positive=is_positive,
              labels=jnp.where(is_positive, gt_labels[gt_index], num_classes).astype(jnp.int32),
              gt_index=gt_index, matched=jnp.where(is_positive[:, None], matched, 0.0),
              box_targets=jnp.where(is_positive[:, None], targets, 0.0), is_gt=(order < num_gts) & (roi_rank < 2))


def mask_targets(gt_masks: Array, rois: Array, gt_index: Array, *, mask_stride: int = 1, size: int = 28,
                 full: Optional[float] = None) -> Array:
  """mmdet ``mask_target``: each RoI's gt mask RoIAligned to ``size`` x ``size`` and binarised (>= 0.5).

  ``gt_masks [G, Hm, Wm]`` are at ``1 / mask_stride`` of the image (``rois [R, 4]`` are image pixels)
  and hold coverage, ``full`` meaning an object pixel: 255 for uint8 (the data pipeline's 0..255
  coverage of each mask_stride x mask_stride block, docs/detection.md "Data"), else 1. The target is
  ``RoIAlign(gt_masks / full) >= 0.5``; at ``mask_stride=1`` (values 0 and 255) that is mmdet's.
  One RoIAlign serves all gts: the masks are stacked along y, each with its first and last row
  repeated above and below it, and every RoI is shifted down to its own mask. RoIs lie inside the
  image, so their samples stay within one mask plus its border rows, where the repeated rows give
  exactly RoIAlign's clamp at the border. The stack is bfloat16 (exact for integers up to 256; the
  pooled value is rounded to bfloat16, within 0.25 of 127.5 on the 0..255 scale) to halve its memory."""
  num_gts, mask_h, mask_w = gt_masks.shape
  if full is None:
    full = 255.0 if gt_masks.dtype == jnp.uint8 else 1.0
  stacked = jnp.pad(gt_masks.astype(jnp.bfloat16), ((0, 0), (1, 1), (0, 0)), mode='edge')
  table = stacked.reshape(num_gts * (mask_h + 2), mask_w, 1)
  shift = (gt_index.astype(jnp.float32) * (mask_h + 2) + 1.0) * mask_stride
  shifted = rois.astype(jnp.float32) + jnp.stack([jnp.zeros_like(shift), shift] * 2, axis=-1)
  pooled = box_ops.roi_align(table, shifted, size, 1.0 / mask_stride, sampling_ratio=0, aligned=True)
  return (pooled[..., 0].astype(jnp.float32) >= 0.5 * full).astype(jnp.float32)


def detections(logits: Array, deltas: Array, proposals: Array, proposal_valid: Array, image_hw: Array, *,
               score_threshold: float = 0.05, iou_threshold: float = 0.5, max_detections: int = 100,
               max_candidates: int = 10000, stds: Sequence[float] = RCNN_STDS):
  """mmdet ``BBoxHead.predict_by_feat`` + ``multiclass_nms`` for one image.

  ``logits [P, K+1]``, ``deltas [P, 4K]`` (or ``[P, 4]``, class-agnostic) of ``proposals [P, 4]``:
  softmax scores, boxes decoded (``stds``) and clipped to ``image_hw``; every (proposal, class) pair
  with score > ``score_threshold`` is a candidate, class-wise NMS at ``iou_threshold`` keeps the best
  ``max_detections``. Returns ``boxes [D, 4]``, ``scores [D]``, ``labels [D]`` (int32), ``valid [D]``;
  invalid slots are zero.
  Static bound: only the best ``max_candidates`` pairs enter the NMS, which changes nothing unless
  more pairs pass the threshold and fewer than ``max_detections`` of those survive NMS."""
  num_proposals, num_classes = logits.shape[0], logits.shape[1] - 1
  scores = jax.nn.softmax(logits, axis=-1)[:, :num_classes]
  scores = jnp.where(proposal_valid[:, None], scores, -jnp.inf)
  per_class = deltas.reshape(num_proposals, -1, 4)  # [P, K, 4], or [P, 1, 4] class-agnostic
  boxes = box_ops.decode_boxes(proposals[:, None], per_class, ZERO_MEANS, stds, max_shape=image_hw)
  boxes = jnp.broadcast_to(boxes, (num_proposals, num_classes, 4))
  flat_scores = scores.reshape(-1)
  flat_boxes = boxes.reshape(-1, 4)
  flat_labels = jnp.tile(jnp.arange(num_classes, dtype=jnp.int32), num_proposals)
  if flat_scores.shape[0] > max_candidates:
    flat_scores, pick = jax.lax.top_k(flat_scores, max_candidates)
    flat_boxes, flat_labels = flat_boxes[pick], flat_labels[pick]
  keep, valid = box_ops.batched_nms(flat_boxes, flat_scores, flat_labels, iou_threshold, max_detections,
                                    score_threshold=score_threshold)
  return dict(boxes=jnp.where(valid[:, None], flat_boxes[keep], 0.0),
              scores=jnp.where(valid, flat_scores[keep], 0.0),
              labels=jnp.where(valid, flat_labels[keep], 0), valid=valid)


# ----------------------------------------------------------------------------------------------
# The detector.
# ----------------------------------------------------------------------------------------------


def class_deltas(deltas: Array, labels: Array, num_classes: int) -> Array:
  """The deltas ``[..., 4]`` of each RoI's class ``labels`` (background: the last class) from
  class-specific ``deltas [..., 4K]``; class-agnostic ``[..., 4]`` pass through."""
  if deltas.shape[-1] == 4:
    return deltas
  per_class = deltas.reshape(deltas.shape[:-1] + (num_classes, 4))
  index = jnp.minimum(labels, num_classes - 1)[..., None, None]
  return jnp.take_along_axis(per_class, index, axis=-2)[..., 0, :]


def rcnn_box_losses(logits: Array, deltas: Array, samples: Mapping[str, Array], num_classes: int, *,
                    box_loss: str = 'l1', stds: Sequence[float] = RCNN_STDS, box_loss_weight: float = 1.0):
  """mmdet ``BBoxHead.loss`` over a batch of sampled RoIs: ``(loss_cls, loss_bbox, accuracy)``.

  Softmax CE over the sampled RoIs; the box loss over the positives, its sum divided by the number of
  sampled RoIs (mmdet's ``avg_factor``): ``'l1'`` on the encoded targets (Mask R-CNN), ``'smooth_l1'``
  (beta 1) likewise, ``'giou'`` on the decoded boxes against the gt boxes (``reg_decoded_bbox``, the
  Swin cascade configs' GIoULoss, no clipping)."""
  sampled = samples['valid']
  num_sampled = jnp.maximum(jnp.sum(sampled), 1).astype(jnp.float32)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, samples['labels'])
  loss_cls = jnp.sum(jnp.where(sampled, ce, 0.0)) / num_sampled
  picked = class_deltas(deltas, samples['labels'], num_classes)
  if box_loss == 'giou':
    decoded = box_ops.decode_boxes(samples['rois'], picked, ZERO_MEANS, stds)
    per_roi = box_ops.giou_loss(decoded, jnp.where(samples['positive'][..., None], samples['matched'], decoded))
  elif box_loss in ('l1', 'smooth_l1'):
    per_roi = jnp.sum(box_ops.smooth_l1(picked - samples['box_targets'], 1.0 if box_loss == 'smooth_l1' else 0.0),
                      axis=-1)
  else:
    raise ValueError(f"box_loss must be 'l1', 'smooth_l1' or 'giou', got {box_loss!r}")
  loss_bbox = box_loss_weight * jnp.sum(jnp.where(samples['positive'], per_roi, 0.0)) / num_sampled
  accuracy = jnp.sum(jnp.where(sampled, jnp.argmax(logits, -1) == samples['labels'], False)) / num_sampled
  return loss_cls, loss_bbox, accuracy


class MaskRCNN(nn.Module):
  """Backbone -> [LayerNorm per stage] -> FPN -> RPN -> box and mask RoI heads (module docstring).
  ``with_mask=False`` is Faster R-CNN (the box branch only; no ``masks`` in the detections)."""
  backbone: nn.Module  # a registered model with features_only=True; its variables live under 'backbone'
  num_classes: int = 80
  with_mask: bool = True
  feature_norm: bool = False  # LayerNorm on every stage output (Swin's detection backbone)
  backbone_norm_eval: bool = False  # run the backbone with train=False (mmdet's norm_eval for frozen BN)
  fpn_channels: int = 256
  fpn_norm: bool = False  # BatchNorm after every FPN conv (detectron2 FPN.NORM, CoTNet's reference configs)
  box_head: str = '2fc'  # '2fc' (Shared2FCBBoxHead) | '4conv1fc' (ConvFCBBoxHead, BatchNorm): BOX_HEADS
  fc_channels: int = 1024  # the box head's fcs
  class_agnostic: bool = False  # one set of deltas for every class (mmdet reg_class_agnostic)
  box_loss: str = 'l1'  # 'l1' | 'smooth_l1' | 'giou' (rcnn_box_losses)
  box_loss_weight: float = 1.0
  mask_channels: int = 256  # the mask head's convs and deconv
  mask_norm: bool = False  # BatchNorm after the mask head's convs (detectron2 ROI_MASK_HEAD.NORM)
  size_divisor: int = 32
  # RPN (train_cfg.rpn, rpn_proposal and test_cfg.rpn of mmdet's config).
  rpn_samples: int = 256
  rpn_pos_fraction: float = 0.5
  rpn_train_pre_nms: int = 2000
  rpn_test_pre_nms: int = 1000
  rpn_max_proposals: int = 1000  # max_per_img at test (and in training unless rpn_train_max_proposals)
  rpn_train_max_proposals: int = 0  # 0: rpn_max_proposals
  rpn_nms_iou: float = 0.7
  rpn_smooth_l1_beta: float = 0.0  # 0: L1 (mmdet's Mask R-CNN); the cascade configs: SmoothL1(1/9)
  rpn_allowed_border: int = -1  # >= 0: only anchors inside the image (+ border) train the RPN
  # RoI heads (train_cfg.rcnn and test_cfg.rcnn).
  rcnn_samples: int = 512
  rcnn_pos_fraction: float = 0.25
  rcnn_iou: float = 0.5
  rcnn_match_low_quality: bool = True
  score_threshold: float = 0.05
  nms_iou: float = 0.5
  max_detections: int = 100
  max_nms_candidates: int = 10000
  mask_size: int = 28
  dtype: Any = jnp.float32

  def setup(self):
    self.setup_pyramid_and_rpn()
    self.bbox_head = self.make_box_head()
    if self.with_mask:
      self.mask_head = self.make_mask_head()

  def make_box_head(self) -> nn.Module:
    if self.box_head not in BOX_HEADS:
      raise ValueError(f'box_head must be one of {sorted(BOX_HEADS)}, got {self.box_head!r}')
    widths = dict(conv_channels=self.fpn_channels) if self.box_head == '4conv1fc' else {}  # 256 in every config
    return BOX_HEADS[self.box_head](self.num_classes, fc_channels=self.fc_channels,
                                    class_agnostic=self.class_agnostic, dtype=self.dtype, **widths)

  def make_mask_head(self) -> nn.Module:
    return FCNMaskHead(self.num_classes, channels=self.mask_channels, dtype=self.dtype, norm=self.mask_norm)

  def setup_pyramid_and_rpn(self):
    if self.feature_norm:
      self.feature_norms = [layers.layer_norm(dtype=self.dtype) for _ in range(4)]
    self.neck = FPN(self.fpn_channels, len(PYRAMID_STRIDES), self.dtype, norm=self.fpn_norm)
    self.rpn_head = RPNHead(len(ANCHOR_RATIOS) * len(ANCHOR_SCALES), self.fpn_channels, self.dtype)

  # -- the pieces ------------------------------------------------------------------------------

  def pyramid(self, images: Array, *, train: bool = False) -> list[Array]:
    """Backbone (+ LayerNorms) + FPN: P2-P6 at strides 4, 8, 16, 32, 64."""
    h, w = images.shape[1:3]
    d = self.size_divisor
    if h % d or w % d:
      raise InvalidInputSizeError(
          f'{self.name or "MaskRCNN"}: input {h}x{w} is not a multiple of {d}; pad it to '
          f'{-(-h // d) * d}x{-(-w // d) * d} (mmdet pads every batch to its size_divisor too).')
    features = list(self.backbone(images, train=train and not self.backbone_norm_eval))
    strides = tuple(h // f.shape[1] for f in features)
    if len(features) != 4 or strides != PYRAMID_STRIDES[:4]:
      raise ValueError(f'{self.name or "MaskRCNN"}: the backbone gives maps at strides {strides}; the FPN needs '
                       f'{PYRAMID_STRIDES[:4]} (LESA: build it with stage_strides=(1, 2, 2, 2), as its detection code).')
    if self.feature_norm:
      features = [norm(f) for norm, f in zip(self.feature_norms, features)]
    return self.neck(features, train=train)

  def _anchors(self, pyramid: Sequence[Array]) -> list[Array]:
    return [box_ops.anchor_grid(level.shape[1:3], stride, ANCHOR_SCALES, ANCHOR_RATIOS)
            for level, stride in zip(pyramid, PYRAMID_STRIDES)]

  def _proposals(self, pyramid, scores, deltas, image_hw, nms_pre, max_proposals):
    anchors = self._anchors(pyramid)
    scores = [jax.lax.stop_gradient(s) for s in scores]  # mmdet detaches the proposals
    deltas = [jax.lax.stop_gradient(d) for d in deltas]

    def one(image_scores, image_deltas, hw):
      return rpn_proposals(image_scores, image_deltas, anchors, hw, nms_pre=nms_pre,
                           max_proposals=max_proposals, iou_threshold=self.rpn_nms_iou)

    return jax.vmap(one)(scores, deltas, image_hw)

  def _roi_features(self, pyramid, rois, size):
    return box_ops.multilevel_roi_align(pyramid[:4], rois, size, strides=PYRAMID_STRIDES[:4], sampling_ratio=0,
                                        aligned=True)

  def _sample(self, key, proposals, proposal_valid, gt, *, iou, match_low_quality, stds=RCNN_STDS):
    batch = proposals.shape[0]
    return jax.vmap(lambda k, p, pv, b, l, g: sample_rois(
        k, p, pv, b, l, g, num_classes=self.num_classes, num_samples=self.rcnn_samples,
        pos_fraction=self.rcnn_pos_fraction, iou_threshold=iou, match_low_quality=match_low_quality,
        stds=stds))(jax.random.split(key, batch), proposals, proposal_valid, gt['boxes'], gt['labels'], gt['valid'])

  def _mask_loss(self, mask_head, pyramid, samples, gt_masks, mask_stride):
    """FCNMaskHead's loss on the positives (the first slots of the samples)."""
    num_pos_slots = int(self.rcnn_samples * self.rcnn_pos_fraction)
    pos_rois = jax.lax.stop_gradient(samples['rois'][:, :num_pos_slots])
    pos_valid = samples['positive'][:, :num_pos_slots]
    pos_labels = jnp.minimum(samples['labels'][:, :num_pos_slots], self.num_classes - 1)
    mask_logits = mask_head(self._roi_features(pyramid, pos_rois, self.mask_size // 2), train=True, mask=pos_valid)
    mask_logits = jnp.take_along_axis(mask_logits, pos_labels[:, :, None, None, None], axis=-1)[..., 0]
    targets_28 = jax.vmap(lambda m, r, g: mask_targets(m, r, g, mask_stride=mask_stride, size=self.mask_size))(
        gt_masks, pos_rois, samples['gt_index'][:, :num_pos_slots])
    bce = optax.sigmoid_binary_cross_entropy(mask_logits, targets_28).mean(axis=(-2, -1))
    return jnp.sum(jnp.where(pos_valid, bce, 0.0)) / jnp.maximum(jnp.sum(pos_valid), 1)  # mean over every pixel

  def _mask_probabilities(self, mask_heads, pyramid, found):
    """The mean over ``mask_heads`` of the predicted class's mask probabilities on the found boxes (one
    RoIAlign serves every head: the cascade's test path averages its stages' heads)."""
    features = self._roi_features(pyramid, found['boxes'], self.mask_size // 2)
    probabilities = 0.0
    for mask_head in mask_heads:
      logits = jnp.take_along_axis(mask_head(features), found['labels'][:, :, None, None, None], axis=-1)[..., 0]
      probabilities = probabilities + jax.nn.sigmoid(logits)
    return probabilities / len(mask_heads)

  def _detections(self, logits, deltas, rois, roi_valid, image_hw, stds=RCNN_STDS):
    return jax.vmap(lambda lg, dl, p, pv, hw: detections(
        lg, dl, p, pv, hw, score_threshold=self.score_threshold, iou_threshold=self.nms_iou,
        max_detections=self.max_detections, max_candidates=self.max_nms_candidates, stds=stds))(
            logits, deltas, rois, roi_valid, image_hw)

  def rpn_train(self, pyramid: Sequence[Array], image_hw: Array, gt: Mapping[str, Array], key: Array):
    """The RPN's losses and training proposals: ``(losses, metrics, proposals, proposal_valid)``."""
    batch = image_hw.shape[0]
    rpn_scores, rpn_deltas = self.rpn_head(pyramid)
    anchors = jnp.concatenate(self._anchors(pyramid))
    feature_hws = [level.shape[1:3] for level in pyramid]

    def usable(hw):
      flags = anchor_valid_flags(feature_hws, PYRAMID_STRIDES, hw, self.size_divisor, len(ANCHOR_RATIOS))
      return anchor_inside_flags(anchors, flags, hw, self.rpn_allowed_border)

    positive, negative, box_targets = jax.vmap(
        lambda k, v, b, g: rpn_targets(k, anchors, v, b, g, num_samples=self.rpn_samples,
                                       pos_fraction=self.rpn_pos_fraction))(
            jax.random.split(key, batch), jax.vmap(usable)(image_hw), gt['boxes'], gt['valid'])
    loss_rpn_cls, loss_rpn_bbox = rpn_loss(jnp.concatenate(rpn_scores, axis=1), jnp.concatenate(rpn_deltas, axis=1),
                                           positive, negative, box_targets, smooth_l1_beta=self.rpn_smooth_l1_beta)
    proposals, proposal_valid = self._proposals(pyramid, rpn_scores, rpn_deltas, image_hw, self.rpn_train_pre_nms,
                                                self.rpn_train_max_proposals or self.rpn_max_proposals)
    metrics = dict(rpn_positives=jnp.sum(positive) / batch, rpn_negatives=jnp.sum(negative) / batch,
                   proposals=jnp.sum(proposal_valid) / batch)
    return dict(loss_rpn_cls=loss_rpn_cls, loss_rpn_bbox=loss_rpn_bbox), metrics, proposals, proposal_valid

  def roi_train(self, pyramid: Sequence[Array], proposals: Array, proposal_valid: Array, image_hw: Array,
                gt: Mapping[str, Array], mask_stride: int, key: Array):
    """The RoI heads' losses on the training proposals: ``(losses, metrics)``."""
    del image_hw  # the one-stage head does not refine boxes
    batch = proposals.shape[0]
    samples = self._sample(key, proposals, proposal_valid, gt, iou=self.rcnn_iou,
                           match_low_quality=self.rcnn_match_low_quality)
    rois = jax.lax.stop_gradient(samples['rois'])
    logits, deltas = self.bbox_head(self._roi_features(pyramid, rois, 7), train=True, mask=samples['valid'])
    loss_cls, loss_bbox, accuracy = rcnn_box_losses(logits, deltas, samples, self.num_classes, box_loss=self.box_loss,
                                                    box_loss_weight=self.box_loss_weight)
    losses = dict(loss_cls=loss_cls, loss_bbox=loss_bbox)
    metrics = dict(rcnn_samples=jnp.sum(samples['valid']) / batch, rcnn_accuracy=accuracy,
                   rcnn_positives=jnp.sum(samples['positive']) / batch)
    if self.with_mask:
      losses['loss_mask'] = self._mask_loss(self.mask_head, pyramid, samples, gt['masks'], mask_stride)
    return losses, metrics

  def train_losses(self, pyramid: Sequence[Array], image_hw: Array, targets: Mapping[str, Array],
                   mask_stride: int = 1):
    """Every loss on FPN levels ``pyramid``: ``(total, metrics)``. Uses the 'sampling' RNG."""
    gt = dict(boxes=targets['gt_boxes'].astype(jnp.float32), labels=targets['gt_labels'],
              valid=targets['gt_valid'].astype(bool), masks=targets.get('gt_masks'))
    rpn_key, rcnn_key = jax.random.split(self.make_rng('sampling'))
    losses, metrics, proposals, proposal_valid = self.rpn_train(pyramid, image_hw, gt, rpn_key)
    roi_losses, roi_metrics = self.roi_train(pyramid, proposals, proposal_valid, image_hw, gt, mask_stride, rcnn_key)
    losses.update(roi_losses)
    total = sum(losses.values())
    return total, {**losses, **metrics, **roi_metrics}

  def detect_rois(self, pyramid: Sequence[Array], proposals: Array, proposal_valid: Array,
                  image_hw: Array) -> dict[str, Array]:
    """The RoI heads' test path on the RPN's proposals: the detections dict (module docstring)."""
    logits, deltas = self.bbox_head(self._roi_features(pyramid, proposals, 7))
    found = self._detections(logits, deltas, proposals, proposal_valid, image_hw)
    if self.with_mask:
      probabilities = self._mask_probabilities([self.mask_head], pyramid, found)
      found['masks'] = jnp.where(found['valid'][:, :, None, None], probabilities, 0.0)
    return found

  def detect(self, pyramid: Sequence[Array], image_hw: Array) -> dict[str, Array]:
    """The test path on FPN levels ``pyramid``: the detections dict (module docstring)."""
    rpn_scores, rpn_deltas = self.rpn_head(pyramid)
    proposals, proposal_valid = self._proposals(pyramid, rpn_scores, rpn_deltas, image_hw, self.rpn_test_pre_nms,
                                                self.rpn_max_proposals)
    return self.detect_rois(pyramid, proposals, proposal_valid, image_hw)

  def __call__(self, images: Array, *, train: bool, image_hw: Optional[Array] = None,
               targets: Optional[Mapping[str, Array]] = None, mask_stride: Optional[int] = None):
    """``image_hw [B, 2]`` defaults to the whole canvas; ``mask_stride`` to canvas height / mask height."""
    batch, h, w = images.shape[:3]
    if image_hw is None:
      image_hw = jnp.broadcast_to(jnp.array([h, w], jnp.int32), (batch, 2))
    pyramid = self.pyramid(images, train=train)
    if not train:
      return self.detect(pyramid, image_hw)
    if targets is None:
      raise ValueError(f'{self.name or "MaskRCNN"}: train=True needs targets (gt_boxes, gt_labels, gt_masks, gt_valid)')
    if mask_stride is None:
      mask_h = targets['gt_masks'].shape[2] if 'gt_masks' in targets else h
      mask_stride = h // mask_h
      if mask_stride * mask_h != h:
        raise ValueError(f'gt_masks of height {mask_h} are no integer reduction of the {h}-pixel canvas; '
                         'pass mask_stride=')
    return self.train_losses(pyramid, image_hw, targets, mask_stride)


def build_detector(cls: type, name: str, *, backbone: str, backbone_kwargs: Optional[Mapping[str, Any]] = None,
                   drop_path_rate: Optional[float] = None, dtype: Any = jnp.float32, **head) -> nn.Module:
  """Detector class ``cls`` over registered backbone ``backbone``; ``backbone_kwargs`` are its constructor
  overrides (a test's shrunk widths, LESA's detection strides), ``drop_path_rate`` its stochastic depth."""
  kwargs = dict(backbone_kwargs or {})
  if drop_path_rate is not None:
    kwargs['drop_path_rate'] = drop_path_rate
  net = registry.create_model(backbone, features_only=True, dtype=dtype, **kwargs)
  return cls(backbone=net, dtype=dtype, name=name, **head)


def _create_mask_rcnn(name: str, **kwargs) -> MaskRCNN:
  return build_detector(MaskRCNN, name, **kwargs)


_PAD = dict(pad_windows=True)  # Swin/NomMer: 800 / 4 = 200 is no multiple of the 7x7 windows
_LESA_DETECTION = dict(stage_strides=(1, 2, 2, 2), lesa_position='axial')  # LESA_detection's backbone
_FROZEN_BN = dict(backbone_norm_eval=True)  # mmdet's R50 base and LESA_detection: norm_eval=True
#: ResNeSt's detectron2 configs, which CoTNet (Sec. 4.4) takes its detection settings from: SyncBN in the
#: FPN and the heads, the 4conv1fc box head, no low-quality matches in the RoI assignment.
DETECTRON2_HEADS = dict(fpn_norm=True, box_head='4conv1fc', mask_norm=True, rcnn_match_low_quality=False)
#: backbone -> what every detector over it shares (its detection construction and ModelInfo.input_size:
#: mmdet's 1333x800 test scale padded to 32 is at most 1344; LESA's detection code resizes to 1024x1024).
#: lgvit.models.cascade_rcnn registers its frameworks over the same table.
DETECTION_BACKBONES = {
    'resnet50': _FROZEN_BN, 'resnet101': _FROZEN_BN,
    # Swin: mmdet's configs/swin (drop path 0.2 for T and S, a LayerNorm per output stage).
    'swin_t': dict(backbone_kwargs=_PAD, drop_path_rate=0.2, feature_norm=True),
    'swin_s': dict(backbone_kwargs=_PAD, drop_path_rate=0.2, feature_norm=True),
    # SALG: the paper (Sec. IV-B) gives no drop path rate; lgvit takes 0.1 for ST and Swin's 0.2 for T and S.
    'salg_st': dict(drop_path_rate=0.1, feature_norm=True), 'salg_t': dict(drop_path_rate=0.2, feature_norm=True),
    'salg_s': dict(drop_path_rate=0.2, feature_norm=True),
    **{b: dict(backbone_kwargs=_LESA_DETECTION, **_FROZEN_BN, input_size=1024)
       for b in ('lesa_resnet50', 'lesa_wrn50', 'sa_resnet50')},
    # CoTNet (trained synchronised BN: the backbone's BN trains, global under jit).
    **{b: DETECTRON2_HEADS for b in ('cotnet50', 'cotnet101', 'cotnext50_2x48d')},
    # NomMer (Sec. 4.2): drop path 0.1, 0.3, 0.5.
    **{f'nommer_{v}': dict(backbone_kwargs=_PAD, drop_path_rate=rate, feature_norm=True)
       for v, rate in (('t', 0.1), ('s', 0.3), ('b', 0.5))},
}


def register_detectors(framework: str, create, table: Mapping[str, tuple], **framework_defaults) -> None:
  """Registers ``<framework>_<backbone>`` for each ``backbone -> (params, paper[, overrides])`` of
  ``table``: ``framework_defaults``, then the backbone's DETECTION_BACKBONES settings, then the entry's
  own ``overrides`` (a paper's heads for that backbone)."""
  variant = registry.family(framework, create, task='detection', input_size=1344, num_classes=80)
  for backbone, (params, paper, *overrides) in table.items():
    variant(f'{framework}_{backbone}', backbone=backbone,
            **{**framework_defaults, **DETECTION_BACKBONES[backbone], **(overrides[0] if overrides else {})},
            params=params, paper=paper)


# params: exact at 80 classes. paper: params (M) of SALG Table II; box/mask AP of the 1x-schedule Mask
# R-CNN rows of SALG Table II, LESA Table 3 (1024x1024 inputs, without deformable convs) and CoTNet Table 8.
# NomMer's COCO results are Cascade Mask R-CNN (Table 2): no Mask R-CNN figures. docs/detection.md has the
# tables and explains the gaps.
register_detectors('mask_rcnn', _create_mask_rcnn, {
    'resnet50': (44_396_336, dict(params=44e6, box_ap=38.0, mask_ap=34.4)),
    'resnet101': (63_388_464, dict(params=63e6, box_ap=40.4, mask_ap=36.4)),
    'swin_t': (47_794_602, dict(params=48e6, box_ap=42.2, mask_ap=39.1)),
    'swin_s': (69_112_506, dict(params=69e6, box_ap=44.8, mask_ap=40.9)),
    'salg_st': (25_239_332, dict(params=26e6, box_ap=37.6, mask_ap=35.3)),
    'salg_t': (47_921_268, dict(params=52e6, box_ap=43.7, mask_ap=40.0)),
    'salg_s': (69_256_596, dict(params=73e6, box_ap=44.8, mask_ap=40.4)),
    'lesa_resnet50': (42_372_304, dict(box_ap=40.3, mask_ap=36.5)),
    'lesa_wrn50': (79_496_304, dict(box_ap=44.8, mask_ap=39.9)),
    'sa_resnet50': (36_645_584, dict(box_ap=38.5, mask_ap=34.7)),
    'cotnet50': (42_376_536, dict(box_ap=44.06, mask_ap=39.28)),
    'cotnet101': (58_426_168, dict(box_ap=46.17, mask_ap=40.86)),
    'cotnext50_2x48d': (50_200_396, dict(box_ap=44.47, mask_ap=39.62)),
    'nommer_t': (44_596_292, {}), 'nommer_s': (63_672_876, {}), 'nommer_b': (96_290_796, {}),
})
# Faster R-CNN: mmdet's faster_rcnn_r50_fpn (no mask branch; the RoI assignment without low-quality matches).
# paper: CoTNet Table 7's rows (1x, detectron2 heads).
FASTER_RCNN_PARAMS = {
    'resnet50': 41_753_056, 'resnet101': 60_745_184, 'swin_t': 45_151_322, 'swin_s': 66_469_226,
    'salg_st': 22_596_052, 'salg_t': 45_277_988, 'salg_s': 66_613_316, 'lesa_resnet50': 39_729_024,
    'lesa_wrn50': 76_853_024, 'sa_resnet50': 34_002_304, 'cotnet50': 39_732_232, 'cotnet101': 55_781_864,
    'cotnext50_2x48d': 47_556_092, 'nommer_t': 41_953_012, 'nommer_s': 61_029_596, 'nommer_b': 93_647_516,
}
FASTER_RCNN_PAPER = {'cotnet50': dict(box_ap=43.50), 'cotnet101': dict(box_ap=45.35),
                     'cotnext50_2x48d': dict(box_ap=44.06)}
register_detectors('faster_rcnn', _create_mask_rcnn,
                   {b: (FASTER_RCNN_PARAMS[b], FASTER_RCNN_PAPER.get(b, {})) for b in DETECTION_BACKBONES},
                   with_mask=False, rcnn_match_low_quality=False)
