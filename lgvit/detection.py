"""COCO-style scoring of detections and instance masks (bbox and segm AP with pycocotools).

The detection task (:mod:`lgvit.tasks.detection`) and ``python -m lgvit.evaluate`` turn the model's
static, padded detections into COCO result records on the host and score them with pycocotools'
``COCOeval``, the reference implementation that mmdetection's ``CocoMetric`` also calls. The steps
(docs/detection.md, "Evaluation"):

* :func:`to_original` maps boxes from the resized input back to the original image (divide by the
  resize factors, clip to the image), as mmdetection's ``rescale=True`` does;
* :func:`paste_masks` pastes each 28x28 mask probability map into its box at the original image size
  (bilinear, half-pixel centres, zero outside the mask: mmdetection's ``_do_paste_mask``), then
  thresholds it at ``mask_thr_binary`` (0.5); only the box's own pixels are computed, so an image with
  100 detections costs 100 box-sized grids on the host, never 100 full images;
* :class:`CocoScorer` collects ground truth (boxes, masks as RLE, ``iscrowd``, areas) and results image
  by image, and :meth:`CocoScorer.metrics` runs ``COCOeval`` for 'bbox' and 'segm' and returns AP,
  AP50, AP75, APs, APm, APl of each as fractions (``bbox_AP``, ..., ``segm_APl``).
"""
from __future__ import annotations

import contextlib
import io
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from lgvit.modeling import normalize
from lgvit.segmentation import zero_outside

#: The summary numbers of ``COCOeval.stats`` that lgvit logs, in their order there.
#: mmdet's COCO test geometry (its 1x train scale too): resize keeping the ratio to fit 1333x800, on a
#: 1344 x 1344 canvas. lgvit.data.det_pipeline's defaults and a detector's inference input where its
#: source does not say (lgvit.inference).
TEST_INPUT = {'scale': (1333, 800), 'keep_ratio': True, 'pad_size': (1344, 1344)}
STAT_NAMES = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl')
IOU_TYPES = ('bbox', 'segm')


def device_images(images: jax.Array, image_hw: jax.Array, dtype=jnp.float32) -> jax.Array:
  """uint8 canvases -> the detector's input: normalised, 0 (the mean colour) outside ``image_hw`` (what
  mmdet's padding after ``Normalize`` gives). The train step, the eval step and inference call it."""
  return zero_outside(normalize(images, dtype), image_hw)


def to_original(boxes: np.ndarray, scale: Sequence[float], orig_hw: Sequence[int]) -> np.ndarray:
  """``(N, 4)`` boxes of the resized input -> the original image: divided by ``scale`` = (y, x) resize
  factors and clipped to ``orig_hw``."""
  sy, sx = float(scale[0]), float(scale[1])
  out = np.asarray(boxes, np.float32) / np.array([sx, sy, sx, sy], np.float32)
  h, w = int(orig_hw[0]), int(orig_hw[1])
  return np.clip(out, 0, np.array([w, h, w, h], np.float32))


def _axis_weights(low: float, high: float, mask_size: int, start: int, stop: int) -> np.ndarray:
  """``(stop - start, mask_size)`` bilinear weights of image pixels ``start..stop-1`` (centres at +0.5) on
  the mask's cells when the mask spans ``[low, high)`` (grid_sample, align_corners=False, zero padding)."""
  centres = np.arange(start, stop, dtype=np.float64) + 0.5
  extent = max(high - low, 1e-6)
  source = (centres - low) / extent * mask_size - 0.5  # in mask cells, cell centres at integers
  lower = np.floor(source)
  frac = source - lower
  weights = np.zeros((stop - start, mask_size), np.float64)
  for corner, weight in ((lower, 1.0 - frac), (lower + 1, frac)):
    inside = (corner >= 0) & (corner < mask_size)
    rows = np.nonzero(inside)[0]
    weights[rows, corner[inside].astype(np.int64)] += weight[inside]
  return weights


def paste_masks(masks: np.ndarray, boxes: np.ndarray, image_hw: Sequence[int], threshold: float = 0.5) -> np.ndarray:
  """``(N, M, M)`` mask probabilities in ``(N, 4)`` boxes -> ``(N, H, W)`` bool masks of an ``image_hw`` image."""
  h, w = int(image_hw[0]), int(image_hw[1])
  out = np.zeros((len(masks), h, w), bool)
  for i, (mask, (x1, y1, x2, y2)) in enumerate(zip(np.asarray(masks, np.float64), np.asarray(boxes, np.float64))):
    # Pixels beyond one pixel outside the box get weight 0 from every mask cell: skip them.
    x0, x3 = max(int(np.floor(x1)) - 1, 0), min(int(np.ceil(x2)) + 1, w)
    y0, y3 = max(int(np.floor(y1)) - 1, 0), min(int(np.ceil(y2)) + 1, h)
    if x3 <= x0 or y3 <= y0:
      continue
    wy = _axis_weights(y1, y2, mask.shape[0], y0, y3)
    wx = _axis_weights(x1, x2, mask.shape[1], x0, x3)
    out[i, y0:y3, x0:x3] = (wy @ mask @ wx.T) >= threshold
  return out


def encode_masks(masks: np.ndarray) -> list[dict]:
  """``(N, H, W)`` bool masks -> COCO compressed RLEs (``counts`` as text, so that they serialise to JSON)."""
  if not len(masks):
    return []
  rles = mask_utils.encode(np.asfortranarray(np.asarray(masks, np.uint8).transpose(1, 2, 0)))
  for rle in rles:
    rle['counts'] = rle['counts'].decode('ascii')
  return rles


def xywh(boxes: np.ndarray) -> np.ndarray:
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


class CocoScorer:
  """Ground truth and results of a split, image by image, scored by pycocotools at the end.

  ``category_ids``: the dataset's category id of each contiguous label (COCO's 80 labels map to ids in
  1..90; a dataset without its own ids gets ``label + 1``)."""

  def __init__(self, category_ids: Sequence[int], class_names: Optional[Sequence[str]] = None,
               iou_types: Sequence[str] = IOU_TYPES):
    self.category_ids = [int(c) for c in category_ids]
    names = list(class_names) if class_names is not None else [str(c) for c in self.category_ids]
    self.categories = [{'id': c, 'name': n} for c, n in zip(self.category_ids, names)]
    self.iou_types = tuple(iou_types)
    self.images, self.annotations, self.results = [], [], []

  def add_ground_truth(self, image_id: int, image_hw: Sequence[int], boxes: np.ndarray, labels: np.ndarray,
                       masks: Optional[np.ndarray] = None, is_crowd: Optional[np.ndarray] = None,
                       areas: Optional[np.ndarray] = None) -> None:
    """One image's instances in original pixels: ``boxes`` (G, 4) x1y1x2y2, ``labels`` (G,) contiguous,
    ``masks`` (G, H, W) bool, ``is_crowd`` (G,), ``areas`` (G,) (the annotation's own areas, which COCO's
    size ranges use; else the mask's pixel count, or the box area without masks)."""
    h, w = int(image_hw[0]), int(image_hw[1])
    self.images.append({'id': int(image_id), 'height': h, 'width': w})
    labels = np.asarray(labels).reshape(-1)
    crowd = np.zeros(len(labels), bool) if is_crowd is None else np.asarray(is_crowd, bool).reshape(-1)
    rles = encode_masks(masks) if masks is not None else [None] * len(labels)
    boxes_xywh = xywh(boxes)
    for k, label in enumerate(labels):
      if areas is not None:
        area = float(areas[k])
      elif rles[k] is not None:
        area = float(mask_utils.area(rles[k]))
      else:
        area = float(boxes_xywh[k, 2] * boxes_xywh[k, 3])
      ann = {'id': len(self.annotations) + 1, 'image_id': int(image_id), 'category_id': self.category_ids[int(label)],
             'bbox': boxes_xywh[k].tolist(), 'area': area, 'iscrowd': int(crowd[k])}
      if rles[k] is not None:
        ann['segmentation'] = rles[k]
      self.annotations.append(ann)

  @classmethod
  def from_dataset(cls, dataset: dict, iou_types: Sequence[str] = IOU_TYPES) -> 'CocoScorer':
    """A scorer holding a COCO annotation dict (``images``, ``annotations``, ``categories``, e.g.
    :func:`lgvit.data.det_pipeline.coco_ground_truth`) as its ground truth; its ``categories`` are in
    label order (label k is ``categories[k]``)."""
    categories = dataset['categories']
    scorer = cls([c['id'] for c in categories], [c['name'] for c in categories], iou_types)
    scorer.images, scorer.annotations = list(dataset['images']), list(dataset['annotations'])
    return scorer

  def add_detections(self, image_id: int, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                     masks=None) -> None:
    """One image's detections in original pixels (only the valid ones): ``masks`` (N, H, W) bool, or a
    list of their COCO RLEs (:func:`encode_masks`)."""
    if masks is None:
      rles = [None] * len(scores)
    else:
      rles = list(masks) if isinstance(masks, list) else encode_masks(masks)
    for box, score, label, rle in zip(xywh(boxes), np.asarray(scores).reshape(-1), np.asarray(labels).reshape(-1),
                                      rles):
      record = {'image_id': int(image_id), 'category_id': self.category_ids[int(label)], 'bbox': box.tolist(),
                'score': float(score)}
      if rle is not None:
        record['segmentation'] = rle
      self.results.append(record)

  def ground_truth(self) -> COCO:
    coco = COCO()
    coco.dataset = {'images': list(self.images), 'annotations': list(self.annotations),
                    'categories': list(self.categories)}
    with contextlib.redirect_stdout(io.StringIO()):
      coco.createIndex()
    return coco

  def metrics(self) -> dict[str, float]:
    """``<iou type>_<stat>`` for each IoU type and :data:`STAT_NAMES` (fractions; -1 where COCOeval has no
    ground truth in a size range), plus ``count`` (images)."""
    out = {'count': len(self.images)}
    gt = self.ground_truth()
    for iou_type in self.iou_types:
      results = [r for r in self.results if iou_type == 'bbox' or 'segmentation' in r]
      if not results or not self.annotations:  # loadRes refuses an empty list: nothing detected scores 0
        stats = [0.0] * len(STAT_NAMES)
      else:
        with contextlib.redirect_stdout(io.StringIO()):  # COCOeval prints its progress and table
          detections = gt.loadRes([dict(r) for r in results])
          evaluation = COCOeval(gt, detections, iou_type)
          evaluation.params.imgIds = [image['id'] for image in self.images]
          evaluation.evaluate()
          evaluation.accumulate()
          evaluation.summarize()
        stats = evaluation.stats[:len(STAT_NAMES)]
      out.update({f'{iou_type}_{name}': float(v) for name, v in zip(STAT_NAMES, stats)})
    return out


def draw(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, names: Sequence[str], scores: Optional[np.ndarray],
         masks: Optional[np.ndarray], palette: np.ndarray, mask_opacity: float = 0.45) -> np.ndarray:
  """An (H, W, 3) uint8 picture of detections: each mask tinted in its class colour, each box outlined in
  it with ``name score`` above (``python -m lgvit.predict --detect``); ``scores=None`` (ground truth)
  writes the names only."""
  from PIL import Image, ImageDraw  # a picture, not scoring: PIL only here
  out = np.asarray(image, np.float32)[..., :3].copy()
  colours = np.asarray(palette, np.float32)[np.asarray(labels, np.int64) % len(palette)]
  if masks is not None:
    for mask, colour in zip(masks, colours):
      out[mask] = (1 - mask_opacity) * out[mask] + mask_opacity * colour
  picture = Image.fromarray(np.clip(np.round(out), 0, 255).astype(np.uint8))
  pen = ImageDraw.Draw(picture)
  for box, name, score, colour in zip(boxes, names, [None] * len(names) if scores is None else scores, colours):
    rgb = tuple(int(c) for c in colour)
    x0, y0, x1, y1 = (float(v) for v in box)
    pen.rectangle((x0, y0, x1, y1), outline=rgb, width=max(1, round(min(picture.size) / 200)))
    caption = name if score is None else f'{name} {score:.2f}'
    left, top, right, bottom = pen.textbbox((x0, y0), caption)
    lift = bottom - top + 2
    ty = y0 - lift if y0 >= lift else y0
    pen.rectangle((x0, ty, x0 + right - left + 2, ty + lift), fill=rgb)
    pen.text((x0 + 1, ty), caption, fill=(0, 0, 0) if sum(rgb) > 384 else (255, 255, 255))
  return np.asarray(picture)
