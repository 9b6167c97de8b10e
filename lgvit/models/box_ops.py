"""Static-shape box operations for lgvit's Mask R-CNN (the mmdetection 2.x/3.x detector).

Conventions (see ``docs/detection.md``, "Box operations"):

* Boxes are ``(x1, y1, x2, y2)`` in input-image pixels, and widths are ``x2 - x1`` with no ``+1``
  (mmdetection >= 2.0, torchvision). Box arithmetic always runs in float32, whatever the dtype of
  the inputs, because bfloat16's 8-bit mantissa cannot hold a pixel coordinate of a 1333-pixel
  image to better than about 4 pixels.
* Feature maps are NHWC (``[H, W, C]`` for one image).
* Every shape is static: an op that selects a data-dependent number of items (NMS, sampling,
  assignment) returns fixed-size arrays plus a validity mask, so that everything jits, vmaps over
  a batch and runs on TPU without a host round trip.

The reference semantics are mmdetection's (``bbox_overlaps``, ``DeltaXYWHBBoxCoder``,
``AnchorGenerator``, ``SingleRoIExtractor``, ``MaxIoUAssigner``, ``RandomSampler``,
``_do_paste_mask``) and torchvision's (``nms``, ``batched_nms``, ``roi_align``, whose RoIAlign is the
one mmcv's matches). The single deliberate deviation is :func:`roi_align`'s adaptive sampling
(``sampling_ratio=0``), which samples at most ``max_samples`` points per bin and axis; its
docstring says when that differs from torchvision.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array
HW = Tuple[int, int]

_F32 = jnp.float32


def _f32(x) -> Array:
  return jnp.asarray(x).astype(_F32)


def _pair(size: Union[int, Sequence[int]]) -> HW:
  if isinstance(size, int):
    return size, size
  height, width = size
  return int(height), int(width)


# --------------------------------------------------------------------------------------------
# IoU and the delta coder.
# --------------------------------------------------------------------------------------------


def box_area(boxes: Array) -> Array:
  """``(x2 - x1) * (y2 - y1)`` in float32; negative for inverted boxes, like mmdetection's."""
  boxes = _f32(boxes)
  return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def nonempty(boxes: Array) -> Array:
  """Boxes ``[..., 4]`` of positive width and height (mmdet's ``min_bbox_size=0`` filter)."""
  return (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])


def box_iou(boxes1: Array, boxes2: Array, eps: float = 1e-6) -> Array:
  """Pairwise IoU ``[..., N, M]`` of ``boxes1 [..., N, 4]`` and ``boxes2 [..., M, 4]``.

  mmdetection's ``bbox_overlaps(mode='iou')``: the intersection's sides are clamped at zero and the
  union at ``eps``, so degenerate boxes give IoU 0 rather than NaN. Leading dims broadcast.
  """
  boxes1, boxes2 = _f32(boxes1), _f32(boxes2)
  area1 = box_area(boxes1)[..., :, None]
  area2 = box_area(boxes2)[..., None, :]
  top_left = jnp.maximum(boxes1[..., :, None, :2], boxes2[..., None, :, :2])
  bottom_right = jnp.minimum(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])
  sides = jnp.maximum(bottom_right - top_left, 0.0)
  intersection = sides[..., 0] * sides[..., 1]
  union = jnp.maximum(area1 + area2 - intersection, eps)
  return intersection / union


def giou_loss(pred: Array, target: Array, eps: float = 1e-6) -> Array:
  """``1 - GIoU`` of aligned box pairs ``[..., 4]`` (mmdet ``GIoULoss``, unreduced): mmdet's
  ``bbox_overlaps(mode='giou', is_aligned=True)``, the union and the enclosing box's area clamped at
  ``eps``."""
  pred, target = _f32(pred), _f32(target)
  top_left = jnp.maximum(pred[..., :2], target[..., :2])
  bottom_right = jnp.minimum(pred[..., 2:], target[..., 2:])
  sides = jnp.maximum(bottom_right - top_left, 0.0)
  overlap = sides[..., 0] * sides[..., 1]
  union = jnp.maximum(box_area(pred) + box_area(target) - overlap, eps)
  enclose = jnp.maximum(jnp.maximum(pred[..., 2:], target[..., 2:]) - jnp.minimum(pred[..., :2], target[..., :2]), 0.0)
  enclose_area = jnp.maximum(enclose[..., 0] * enclose[..., 1], eps)
  return 1.0 - (overlap / union - (enclose_area - union) / enclose_area)


def smooth_l1(diff: Array, beta: float) -> Array:
  """mmdet ``smooth_l1_loss`` of ``diff`` (elementwise): ``0.5 d^2 / beta`` below ``beta``, else
  ``|d| - 0.5 beta``; ``beta=0`` is the L1 loss."""
  d = jnp.abs(_f32(diff))
  if beta <= 0:
    return d
  return jnp.where(d < beta, 0.5 * d * d / beta, d - 0.5 * beta)


def encode_boxes(proposals: Array, gt: Array, means: Sequence[float] = (0., 0., 0., 0.),
                 stds: Sequence[float] = (1., 1., 1., 1.)) -> Array:
  """Regression targets ``(dx, dy, dw, dh)`` taking ``proposals`` onto ``gt`` (mmdet bbox2delta).

  Both are ``[..., 4]`` of one shape. The targets are normalised as ``(delta - means) / stds``.
  A proposal of zero width or height gives inf/NaN, as in mmdetection: callers only encode the
  positive (hence non-degenerate) proposals' targets, or mask the rest.
  """
  proposals, gt = _f32(proposals), _f32(gt)
  proposal_centre = (proposals[..., :2] + proposals[..., 2:]) * 0.5
  proposal_size = proposals[..., 2:] - proposals[..., :2]
  gt_centre = (gt[..., :2] + gt[..., 2:]) * 0.5
  gt_size = gt[..., 2:] - gt[..., :2]
  centre_shift = (gt_centre - proposal_centre) / proposal_size
  log_scale = jnp.log(gt_size / proposal_size)
  deltas = jnp.concatenate([centre_shift, log_scale], axis=-1)
  return (deltas - _f32(means)) / _f32(stds)


def decode_boxes(rois: Array, deltas: Array, means: Sequence[float] = (0., 0., 0., 0.),
                 stds: Sequence[float] = (1., 1., 1., 1.),
                 max_shape: Optional[Union[HW, Array]] = None,
                 wh_ratio_clip: float = 16 / 1000) -> Array:
  """Boxes from ``rois [..., 4]`` and ``deltas [..., 4]`` (mmdet delta2bbox, clip_border=True).

  ``deltas`` are de-normalised with ``means``/``stds``; ``dw``/``dh`` are clamped to
  ``+-|log(wh_ratio_clip)|`` so that exp() cannot overflow on an untrained head. With ``max_shape``
  ``(h, w)`` (a pair, or an array ``[2]`` for a traced image size; vmap for per-image sizes) the
  corners are clipped to ``[0, w]`` and ``[0, h]``. Class-specific deltas ``[N, K * 4]`` decode as
  ``deltas.reshape(N, K, 4)`` against ``rois[:, None]``.
  """
  rois, deltas = _f32(rois), _f32(deltas)
  deltas = deltas * _f32(stds) + _f32(means)
  roi_centre = (rois[..., :2] + rois[..., 2:]) * 0.5
  roi_size = rois[..., 2:] - rois[..., :2]
  max_log_ratio = float(np.abs(np.log(wh_ratio_clip)))
  log_scale = jnp.clip(deltas[..., 2:], -max_log_ratio, max_log_ratio)
  centre = roi_centre + roi_size * deltas[..., :2]
  size = roi_size * jnp.exp(log_scale)
  boxes = jnp.concatenate([centre - size * 0.5, centre + size * 0.5], axis=-1)
  if max_shape is not None:
    height_width = _f32(max_shape)
    upper = jnp.stack([height_width[..., 1], height_width[..., 0]] * 2, axis=-1)
    boxes = jnp.clip(boxes, 0.0, upper)
  return boxes


# --------------------------------------------------------------------------------------------
# Anchors.
# --------------------------------------------------------------------------------------------


def base_anchors(stride: int, scales: Sequence[float] = (8,),
                 ratios: Sequence[float] = (0.5, 1.0, 2.0), center_offset: float = 0.0) -> np.ndarray:
  """The ``[A, 4]`` anchors of one location, in mmdet AnchorGenerator's order (scale_major=True).

  ``base_size = stride``; ``ratio`` is height / width, so ``h = base * sqrt(ratio) * scale`` and
  ``w = base / sqrt(ratio) * scale``; ratios vary slowest, scales fastest. Computed in float32
  numpy with mmdetection's operation order, so the values are bit-identical to its tensors.
  """
  base_size = np.float32(stride)
  ratios = np.asarray(ratios, np.float32)
  scales = np.asarray(scales, np.float32)
  h_ratios = np.sqrt(ratios)
  w_ratios = np.float32(1) / h_ratios
  widths = (base_size * w_ratios[:, None] * scales[None, :]).reshape(-1)
  heights = (base_size * h_ratios[:, None] * scales[None, :]).reshape(-1)
  centre = np.float32(center_offset) * base_size
  half = np.float32(0.5)
  return np.stack([centre - half * widths, centre - half * heights,
                   centre + half * widths, centre + half * heights], axis=-1).astype(np.float32)


def anchor_grid(feature_hw: HW, stride: int, scales: Sequence[float] = (8,),
                ratios: Sequence[float] = (0.5, 1.0, 2.0), center_offset: float = 0.0) -> Array:
  """All anchors ``[H * W * A, 4]`` of one level, in mmdet ``single_level_grid_priors`` order.

  Row-major over the feature grid (y slow, x fast), the ``A`` :func:`base_anchors` of each location
  consecutive; location ``(y, x)`` shifts them by ``(x * stride, y * stride)``. The grid depends on
  static shapes only, so it is computed with numpy at trace time and enters the graph as a constant.
  """
  feat_h, feat_w = feature_hw
  shift_x = np.arange(feat_w, dtype=np.float32) * np.float32(stride)
  shift_y = np.arange(feat_h, dtype=np.float32) * np.float32(stride)
  grid_x, grid_y = np.meshgrid(shift_x, shift_y)  # [H, W] each, y slow
  shifts = np.stack([grid_x, grid_y, grid_x, grid_y], axis=-1).reshape(-1, 1, 4)
  anchors = shifts + base_anchors(stride, scales, ratios, center_offset)[None]
  return jnp.asarray(anchors.reshape(-1, 4))


def multilevel_anchor_grid(feature_hws: Sequence[HW], strides: Sequence[int] = (4, 8, 16, 32, 64),
                           scales: Sequence[float] = (8,),
                           ratios: Sequence[float] = (0.5, 1.0, 2.0),
                           center_offset: float = 0.0) -> list:
  """:func:`anchor_grid` of each level (mmdet ``grid_priors``); concatenate them for the RPN."""
  return [anchor_grid(hw, s, scales, ratios, center_offset) for hw, s in zip(feature_hws, strides)]


# --------------------------------------------------------------------------------------------
# Non-maximum suppression.
# --------------------------------------------------------------------------------------------


def _suppression_iou(boxes1: Array, boxes2: Array) -> Array:
  """torchvision's NMS overlap: ``inter / (area1 + area2 - inter)`` with no eps (0/0 -> NaN, which
  compares False and so suppresses nothing, like torchvision's kernel)."""
  area1 = box_area(boxes1)[:, None]
  area2 = box_area(boxes2)[None, :]
  top_left = jnp.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
  bottom_right = jnp.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
  sides = jnp.maximum(bottom_right - top_left, 0.0)
  intersection = sides[..., 0] * sides[..., 1]
  return intersection / (area1 + area2 - intersection)


def nms(boxes: Array, scores: Array, iou_threshold: float, max_output: int,
        score_threshold: float = -math.inf, block_size: int = 256) -> Tuple[Array, Array]:
  """Greedy NMS with a static output: ``(indices [max_output] int32, valid [max_output] bool)``.

  Boxes are visited in descending score order (stable for ties); a box is kept unless a kept,
  higher-scoring box overlaps it with IoU > ``iou_threshold``; boxes with score <=
  ``score_threshold`` are dropped first (mmdetection's ``scores > score_thr`` filter). The kept
  indices (into ``boxes``) come in descending score order, as torchvision.ops.nms returns them,
  truncated to ``max_output`` and padded with index 0 and ``valid=False``.

  Blocked formulation (as TF Model Garden's padded NMS): the sorted boxes are processed
  ``block_size`` at a time. A block is first suppressed by the boxes already kept (one
  ``[N_pad, block]`` IoU matrix), then resolves itself by iterating ``kept = alive & ~any(kept_earlier
  & overlap)`` to its fixed point, which is exactly the greedy result (element k depends only on
  elements before it, so each sweep settles at least one more). Memory is ``O(N * block)`` and the
  loop stops once ``max_output`` boxes are kept.
  """
  boxes, scores = _f32(boxes), _f32(scores)
  num_boxes = boxes.shape[0]
  if num_boxes == 0:
    return jnp.zeros(max_output, jnp.int32), jnp.zeros(max_output, bool)
  block_size = max(1, min(block_size, num_boxes))
  num_blocks = -(-num_boxes // block_size)
  padded = num_blocks * block_size

  order = jnp.argsort(-scores, stable=True)
  sorted_boxes = jnp.pad(boxes[order], ((0, padded - num_boxes), (0, 0)))
  alive = jnp.pad(scores[order] > score_threshold, (0, padded - num_boxes))
  earlier = jnp.arange(block_size)[:, None] < jnp.arange(block_size)[None, :]  # [i, k]: i before k

  def resolve_block(state):
    block_index, keep, num_kept = state
    start = block_index * block_size
    block_boxes = lax.dynamic_slice_in_dim(sorted_boxes, start, block_size)
    candidates = lax.dynamic_slice_in_dim(alive, start, block_size)
    # Suppression by every box kept in the earlier blocks (later blocks are not kept yet).
    overlaps_kept = _suppression_iou(sorted_boxes, block_boxes) > iou_threshold
    candidates &= ~jnp.any(keep[:, None] & overlaps_kept, axis=0)
    suppresses = (_suppression_iou(block_boxes, block_boxes) > iou_threshold) & earlier

    def sweep(inner):
      kept, _ = inner
      new_kept = candidates & ~jnp.any(kept[:, None] & suppresses, axis=0)
      return new_kept, jnp.any(new_kept != kept)

    kept, _ = lax.while_loop(lambda inner: inner[1], sweep, (candidates, jnp.array(True)))
    keep = lax.dynamic_update_slice_in_dim(keep, kept, start, axis=0)
    return block_index + 1, keep, num_kept + jnp.sum(kept, dtype=jnp.int32)

  def more_blocks(state):
    block_index, _, num_kept = state
    return (block_index < num_blocks) & (num_kept < max_output)

  init = (jnp.array(0, jnp.int32), jnp.zeros(padded, bool), jnp.array(0, jnp.int32))
  _, keep, num_kept = lax.while_loop(more_blocks, resolve_block, init)
  positions = jnp.nonzero(keep, size=max_output, fill_value=0)[0]
  valid = jnp.arange(max_output) < num_kept
  indices = jnp.where(valid, order[jnp.minimum(positions, num_boxes - 1)], 0)
  return indices.astype(jnp.int32), valid


def batched_nms(boxes: Array, scores: Array, class_ids: Array, iou_threshold: float,
                max_output: int, score_threshold: float = -math.inf,
                block_size: int = 256) -> Tuple[Array, Array]:
  """Per-class :func:`nms` by the coordinate trick of torchvision/mmcv ``batched_nms``.

  Each box is shifted by ``class_id * (max_coordinate + 1)`` so that boxes of different classes
  cannot overlap, then one NMS runs. ``max_coordinate`` is taken over the boxes that pass
  ``score_threshold``, which is what mmdetection gets by filtering before its batched_nms, and
  equals torchvision's (max over all boxes) when nothing is filtered.
  """
  boxes, scores = _f32(boxes), _f32(scores)
  alive = scores > score_threshold
  max_coordinate = jnp.max(jnp.where(alive[:, None], boxes, -jnp.inf))
  max_coordinate = jnp.where(jnp.any(alive), max_coordinate, 0.0)
  offsets = _f32(class_ids) * (max_coordinate + 1.0)
  return nms(boxes + offsets[:, None], scores, iou_threshold, max_output, score_threshold,
             block_size)


# --------------------------------------------------------------------------------------------
# RoIAlign.
# --------------------------------------------------------------------------------------------


def _axis_samples(start: Array, length: Array, bins: int, grid: Array, slots: int,
                  extent: Array):
  """Bilinear taps along one axis for every (roi, bin, sample slot).

  ``start``/``length``/``grid``/``extent`` are ``[R]``; returns ``low``, ``high`` (int32) and
  their weights, each ``[R, bins, slots]``. Slots at or beyond ``grid`` (unused by adaptive
  sampling) and samples outside torchvision's ``[-1, extent]`` window get weight 0.
  """
  bin_size = length / bins
  safe_grid = jnp.maximum(grid, 1).astype(_F32)
  bin_index = jnp.arange(bins, dtype=_F32)[None, :, None]
  slot = jnp.arange(slots, dtype=_F32)[None, None, :]
  # The order of torchvision's float expression, to stay within an ulp of its sample positions.
  position = ((start[:, None, None] + bin_index * bin_size[:, None, None])
              + (slot + 0.5) * bin_size[:, None, None] / safe_grid[:, None, None])
  extent_f = extent.astype(_F32)[:, None, None]
  used = (slot < grid[:, None, None]) & (position >= -1.0) & (position <= extent_f)
  position = jnp.maximum(position, 0.0)
  low = jnp.floor(position).astype(jnp.int32)
  last = (extent - 1)[:, None, None]
  at_edge = low >= last
  low = jnp.where(at_edge, last, low)
  high = jnp.where(at_edge, last, low + 1)
  position = jnp.where(at_edge, low.astype(_F32), position)
  frac = position - low.astype(_F32)
  used = used.astype(_F32)
  return low, high, (1.0 - frac) * used, frac * used


def _roi_align_from_table(table: Array, level_start: Array, level_hw: Array, rois: Array,
                          spatial_scale: Array, output_hw: HW, sampling_ratio: int,
                          aligned: bool, max_samples: int) -> Array:
  """RoIAlign of ``rois [R, 4]``, each on its own map inside the flat ``table [T, C]``.

  RoI r reads the ``level_hw[r] = (H, W)`` map stored row-major from row ``level_start[r]``, at
  ``spatial_scale[r]``. Sharing one table lets the multi-level op read each RoI's level only.
  """
  rois = _f32(rois)
  out_h, out_w = output_hw
  offset = 0.5 if aligned else 0.0
  scaled = rois * spatial_scale[:, None] - offset
  roi_w = scaled[:, 2] - scaled[:, 0]
  roi_h = scaled[:, 3] - scaled[:, 1]
  if not aligned:  # the legacy op forces every RoI to be at least 1x1
    roi_w, roi_h = jnp.maximum(roi_w, 1.0), jnp.maximum(roi_h, 1.0)
  if sampling_ratio > 0:
    slots = sampling_ratio
    grid_h = jnp.full(rois.shape[:1], sampling_ratio, jnp.int32)
    grid_w = grid_h
  else:
    slots = max_samples
    # ceil(roi / bins) samples per bin (0 for empty or inverted aligned RoIs: output 0), capped.
    grid_h = jnp.clip(jnp.ceil(roi_h / out_h), 0, max_samples).astype(jnp.int32)
    grid_w = jnp.clip(jnp.ceil(roi_w / out_w), 0, max_samples).astype(jnp.int32)
  height, width = level_hw[:, 0], level_hw[:, 1]
  y_low, y_high, wy_low, wy_high = _axis_samples(scaled[:, 1], roi_h, out_h, grid_h, slots, height)
  x_low, x_high, wx_low, wx_high = _axis_samples(scaled[:, 0], roi_w, out_w, grid_w, slots, width)
  count = jnp.maximum(grid_h * grid_w, 1).astype(_F32)

  row_start = level_start[:, None, None]
  row_width = width[:, None, None]
  num_channels = table.shape[-1]

  # Adaptive grids rarely use every slot (a RoI spans at most ~28 feature pixels on its FPN level, so
  # ceil(28 / 7) = 4 of the 8 slots per axis), and unused slots weigh 0: slot pairs beyond every RoI's
  # grid are skipped at run time (lax.cond; reverse mode keeps the cond, so the backward's scatters
  # skip them too). The bound is this call's maximum, unbatched unless the caller vmaps this op.
  rows_needed, cols_needed = jnp.max(grid_h, initial=0), jnp.max(grid_w, initial=0)

  def add_needed_sample(step, total):
    needed = (step // slots < rows_needed) & (step % slots < cols_needed)
    return lax.cond(needed, add_sample, lambda _, t: t, step, total)

  def add_sample(step, total):
    iy, ix = step // slots, step % slots
    ys = (y_low[:, :, iy], y_high[:, :, iy])  # [R, out_h] each
    wys = (wy_low[:, :, iy], wy_high[:, :, iy])
    xs = (x_low[:, :, ix], x_high[:, :, ix])  # [R, out_w] each
    wxs = (wx_low[:, :, ix], wx_high[:, :, ix])
    for y, wy in zip(ys, wys):
      for x, wx in zip(xs, wxs):
        index = row_start + y[:, :, None] * row_width + x[:, None, :]  # [R, out_h, out_w]
        weight = wy[:, :, None] * wx[:, None, :]
        values = jnp.take(table, index.reshape(-1), axis=0).reshape(index.shape + (num_channels,))
        total = total + weight[..., None] * values.astype(_F32)
    return total

  # One sample slot pair per step keeps the live gather at [R, out, out, C] per corner, whatever
  # max_samples is; the loop's trip count is static, so it differentiates (features only).
  total = jnp.zeros((rois.shape[0], out_h, out_w, num_channels), _F32)
  total = lax.fori_loop(0, slots * slots, add_needed_sample, total)
  return (total / count[:, None, None, None]).astype(table.dtype)


def roi_align(features: Array, rois: Array, output_size: Union[int, HW], spatial_scale: float,
              sampling_ratio: int = 0, aligned: bool = True, max_samples: int = 8) -> Array:
  """torchvision.ops.roi_align on an NHWC map: ``features [H, W, C]``, ``rois [R, 4]`` (image
  pixels) -> ``[R, out, out, C]`` in the features' dtype (accumulated in float32).

  Each output bin averages bilinear samples on a regular grid: ``sampling_ratio`` per bin and axis
  when > 0, else adaptive, ``ceil(roi_size / out)`` along each axis (mmdetection's configs use 0).
  ``aligned=True`` shifts the RoI by -0.5 pixel (the "aligned" RoIAlign); ``aligned=False`` is the
  legacy op that also forces a 1x1 minimum RoI size. Border rules are torchvision's: a sample with
  y < -1, y > H, x < -1 or x > W contributes 0, any other is clamped into the map; the average
  still divides by the full sample count.

  Deviation: static shapes need a bound on the adaptive grid, so it is capped at ``max_samples``
  per axis. A RoI whose height (width) on this map exceeds ``max_samples * out`` feature pixels
  (56 for a 7x7 output with the default 8) is sampled on a ``max_samples``-point grid per bin along
  that axis, evenly spaced over the bin and averaged, where torchvision would use more points;
  every other RoI matches torchvision exactly. In an FPN with mmdetection's level mapping such
  RoIs are rare (very elongated boxes, or the coarsest level's huge ones). Cost is
  ``max_samples ** 2`` gathers per bin for adaptive sampling, fixed at trace time.
  """
  height, width, _ = features.shape
  num_rois = rois.shape[0]
  table = features.reshape(height * width, -1)
  level_hw = jnp.broadcast_to(jnp.array([height, width], jnp.int32), (num_rois, 2))
  return _roi_align_from_table(table, jnp.zeros(num_rois, jnp.int32), level_hw, rois,
                               jnp.full(num_rois, spatial_scale, _F32), _pair(output_size),
                               sampling_ratio, aligned, max_samples)


def map_roi_levels(rois: Array, num_levels: int, finest_scale: float = 56) -> Array:
  """mmdet SingleRoIExtractor's level of each RoI: ``floor(log2(sqrt(w * h) / finest_scale +
  1e-6))`` clamped to ``[0, num_levels - 1]`` (so 56-px boxes and below go to the finest level)."""
  rois = _f32(rois)
  scale = jnp.sqrt((rois[..., 2] - rois[..., 0]) * (rois[..., 3] - rois[..., 1]))
  levels = jnp.floor(jnp.log2(scale / finest_scale + 1e-6))
  # NaN (inverted boxes: sqrt of a negative area) lands on the finest level, like torch's clamp.
  levels = jnp.where(jnp.isnan(levels), 0.0, levels)
  return jnp.clip(levels, 0, num_levels - 1).astype(jnp.int32)


def multilevel_roi_align(features: Sequence[Array], rois: Array, output_size: Union[int, HW],
                         strides: Sequence[int] = (4, 8, 16, 32), finest_scale: float = 56,
                         sampling_ratio: int = 0, aligned: bool = True,
                         max_samples: int = 8) -> Array:
  """mmdet SingleRoIExtractor with RoIAlign: ``features`` ``[B, H_l, W_l, C]`` per level (finest
  first), ``rois [B, R, 4]`` in image pixels -> ``[B, R, out, out, C]``.

  Each RoI is pooled from the level :func:`map_roi_levels` gives it, at ``1 / strides[level]``.
  The levels are flattened into one ``[sum(H_l * W_l), C]`` table per image (the images one after
  another in a single table), and every RoI gathers
  from its own level's rows of it: one RoIAlign pass whose gathers touch only the chosen level.
  That is why this form is used rather than "pool every RoI on every level and select": the latter
  does ``L`` times the gathers and holds ``L`` pooled tensors of ``[R, out, out, C]``; this holds
  one, plus a concatenated copy of the feature maps.
  """
  num_levels = len(features)
  if len(strides) < num_levels:
    raise ValueError(f'{num_levels} feature levels but only {len(strides)} strides')
  strides = tuple(strides)[:num_levels]
  sizes = [(f.shape[1], f.shape[2]) for f in features]
  starts = np.cumsum([0] + [h * w for h, w in sizes[:-1]]).astype(np.int32)
  batch, channels = features[0].shape[0], features[0].shape[-1]
  dtype = jnp.result_type(*features)
  table = jnp.concatenate([f.reshape(batch, -1, channels).astype(dtype) for f in features], axis=1)
  level_start_of = jnp.asarray(starts)
  level_hw_of = jnp.asarray(np.array(sizes, np.int32))
  scale_of = jnp.asarray(np.array([1.0 / s for s in strides], np.float32))

  # The whole batch as one table (image b's rows after those of images < b) and one RoI list, not a vmap
  # over images: under vmap the slot-skipping predicate of _roi_align_from_table would be batched, and
  # a batched cond runs both branches.
  num_rois, rows_per_image = rois.shape[1], table.shape[1]
  rois = _f32(rois).reshape(batch * num_rois, 4)
  levels = map_roi_levels(rois, num_levels, finest_scale)
  image_start = jnp.repeat(jnp.arange(batch, dtype=jnp.int32) * rows_per_image, num_rois)
  pooled = _roi_align_from_table(table.reshape(batch * rows_per_image, channels), image_start + level_start_of[levels],
                                 level_hw_of[levels], rois, scale_of[levels], _pair(output_size),
                                 sampling_ratio, aligned, max_samples)
  return pooled.reshape((batch, num_rois) + pooled.shape[1:])


# --------------------------------------------------------------------------------------------
# Mask pasting.
# --------------------------------------------------------------------------------------------


def _paste_weights(low: Array, high: Array, image_size: int, mask_size: int) -> Array:
  """``[N, image_size, mask_size]`` 1-D bilinear weights of grid_sample(align_corners=False,
  padding_mode='zeros') for the pixel centres of one image axis over the boxes ``[low, high]``."""
  centres = jnp.arange(image_size, dtype=_F32) + 0.5
  normalised = (centres[None, :] - low[:, None]) / (high - low)[:, None] * 2.0 - 1.0
  # mmdetection zeroes the infinities of zero-size boxes; 0/0 (a centre exactly on such a box)
  # gives NaN, which we send off the mask so it contributes nothing.
  normalised = jnp.where(jnp.isinf(normalised), 0.0, normalised)
  normalised = jnp.where(jnp.isnan(normalised), -3.0, normalised)
  position = ((normalised + 1.0) * mask_size - 1.0) / 2.0  # grid_sample's unnormalisation
  # Far-off positions only need to stay off the mask; clipping keeps the int cast in range.
  position = jnp.clip(position, -2.0, mask_size + 1.0)
  left = jnp.floor(position)
  frac = position - left
  left = left.astype(jnp.int32)[..., None]
  taps = jnp.arange(mask_size, dtype=jnp.int32)
  # Taps outside [0, mask_size) match no column: that is the zero padding.
  return (jnp.where(taps == left, 1.0 - frac[..., None], 0.0)
          + jnp.where(taps == left + 1, frac[..., None], 0.0))


def paste_mask_probabilities(masks: Array, boxes: Array, image_hw: HW) -> Array:
  """mmdet ``_do_paste_mask(skip_empty=False)``: ``masks [N, Mh, Mw]`` resampled into their
  ``boxes [N, 4]`` on an ``image_hw`` canvas, float32 ``[N, H, W]``.

  grid_sample's bilinear weights factor into a row and a column term, and the grid of a box is a
  tensor product (x depends on the column only, y on the row only), so the resampling is exactly
  ``Wy @ mask @ Wx^T`` with ``[N, H, Mh]`` and ``[N, W, Mw]`` weight matrices: two batched matmuls
  instead of an ``[N, H, W, 4]`` gather.
  """
  masks, boxes = _f32(masks), _f32(boxes)
  image_h, image_w = image_hw
  weights_y = _paste_weights(boxes[:, 1], boxes[:, 3], image_h, masks.shape[1])
  weights_x = _paste_weights(boxes[:, 0], boxes[:, 2], image_w, masks.shape[2])
  highest = lax.Precision.HIGHEST  # TPU's default bf16 passes would move values across 0.5
  rows = jnp.einsum('nym,nmk->nyk', weights_y, masks, precision=highest)
  return jnp.einsum('nyk,nxk->nyx', rows, weights_x, precision=highest)


def paste_masks(masks: Array, boxes: Array, image_hw: HW, threshold: float = 0.5) -> Array:
  """Binary ``[N, H, W]`` masks: :func:`paste_mask_probabilities` ``>= threshold`` (mmdetection's
  ``mask_thr_binary`` comparison). Outside a box the pasted value is below 0.5 for any mask, so
  nothing leaks out of the box at the usual threshold."""
  return paste_mask_probabilities(masks, boxes, image_hw) >= threshold


# --------------------------------------------------------------------------------------------
# Assignment and sampling.
# --------------------------------------------------------------------------------------------


def _last_true_index(mask: Array) -> Array:
  """Index of the last True along the last axis (undefined where none is True)."""
  size = mask.shape[-1]
  return size - 1 - jnp.argmax(mask[..., ::-1], axis=-1)


def max_iou_assign(boxes: Array, gt_boxes: Array, gt_valid: Array, pos_iou_thr: float,
                   neg_iou_thr: float, min_pos_iou: float, match_low_quality: bool,
                   gt_max_assign_all: bool = True,
                   box_valid: Optional[Array] = None) -> Tuple[Array, Array]:
  """mmdet MaxIoUAssigner on padded inputs: ``(assigned [N] int32, max_iou [N] float32)``.

  ``assigned`` is -1 (ignore), 0 (negative) or ``k + 1`` (positive for gt k). Steps as mmdetection:
  a box whose best IoU is in ``[0, neg_iou_thr)`` is negative, one with best IoU >= ``pos_iou_thr``
  is positive for its best gt (the first on ties). With ``match_low_quality``, every valid gt whose
  best IoU is >= ``min_pos_iou`` then claims the boxes reaching that best IoU (all of them with
  ``gt_max_assign_all``, else the first), later gts overriding earlier ones as mmdetection's loop
  does. Padded gts (``gt_valid`` False) match nothing; with no valid gt every box is negative with
  ``max_iou`` 0. Boxes with ``box_valid`` False are -1 and take no part (mmdetection never sees
  them), so they cannot be a gt's best box either.
  """
  num_boxes = boxes.shape[0]
  if box_valid is None:
    box_valid = jnp.ones(num_boxes, bool)
  pair_valid = box_valid[:, None] & gt_valid[None, :]
  overlaps = jnp.where(pair_valid, box_iou(boxes, gt_boxes), -1.0)  # [N, G]; IoU is >= 0
  any_gt = jnp.any(gt_valid)
  max_iou = jnp.max(overlaps, axis=1)
  best_gt = jnp.argmax(overlaps, axis=1)
  assigned = jnp.full(num_boxes, -1, jnp.int32)
  assigned = jnp.where((max_iou >= 0) & (max_iou < neg_iou_thr), 0, assigned)
  assigned = jnp.where(max_iou >= pos_iou_thr, best_gt.astype(jnp.int32) + 1, assigned)
  if match_low_quality:
    gt_max = jnp.max(overlaps, axis=0)  # [G]; -1 for padded gts
    gt_qualifies = gt_valid & (gt_max >= min_pos_iou)
    if gt_max_assign_all:
      claims = (overlaps == gt_max[None, :]) & pair_valid
    else:
      claims = jnp.arange(num_boxes)[:, None] == jnp.argmax(overlaps, axis=0)[None, :]
    claims &= gt_qualifies[None, :]
    claimed = jnp.any(claims, axis=1)
    assigned = jnp.where(claimed, _last_true_index(claims).astype(jnp.int32) + 1, assigned)
  assigned = jnp.where(box_valid, assigned, -1)
  assigned = jnp.where(any_gt, assigned, jnp.where(box_valid, 0, -1))
  max_iou = jnp.where(any_gt & box_valid, max_iou, 0.0)
  return assigned, max_iou


def _random_subset(key: Array, candidates: Array, capacity: int, count: Array) -> Array:
  """A uniformly random subset of ``min(count, #candidates)`` of the True ``candidates``.

  Candidates get uniform priorities and the others -1; ``top_k`` over ``capacity`` (a static
  bound on ``count``) gives a random order of the best, of which the first ``count`` are taken.
  """
  size = candidates.shape[0]
  capacity = min(capacity, size)
  if capacity <= 0:
    return jnp.zeros(size, bool)
  priority = jnp.where(candidates, jax.random.uniform(key, (size,)), -1.0)
  _, chosen = lax.top_k(priority, capacity)
  take = candidates[chosen] & (jnp.arange(capacity) < count)
  return jnp.zeros(size, bool).at[chosen].set(take)


def sample_random(key: Array, assigned: Array, num: int, pos_fraction: float,
                  valid: Optional[Array] = None) -> Tuple[Array, Array]:
  """mmdet RandomSampler (neg_pos_ub=-1, no gt proposals added): ``(pos_mask [N], neg_mask [N])``.

  Up to ``int(num * pos_fraction)`` positives (``assigned > 0``) are drawn uniformly without
  replacement, then ``num - (positives drawn)`` negatives (``assigned == 0``) likewise; ignored
  boxes (-1) and those with ``valid`` False are never drawn. Feed the ground truths as extra
  proposals before assignment to get mmdetection's ``add_gt_as_proposals=True``.
  """
  candidates_ok = jnp.ones(assigned.shape, bool) if valid is None else valid
  pos_key, neg_key = jax.random.split(key)
  num_pos_max = int(num * pos_fraction)
  pos_mask = _random_subset(pos_key, (assigned > 0) & candidates_ok, num_pos_max,
                            jnp.array(num_pos_max))
  num_neg = num - jnp.sum(pos_mask, dtype=jnp.int32)
  neg_mask = _random_subset(neg_key, (assigned == 0) & candidates_ok, num, num_neg)
  return pos_mask, neg_mask
