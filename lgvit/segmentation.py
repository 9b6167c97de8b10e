"""Semantic segmentation metrics and inference, as mmsegmentation computes them (docs/segmentation.md).

Metrics: a (classes x classes) confusion matrix, rows = ground truth, columns = prediction, summed
over batches (``confusion_matrix`` is jit-able: an int32 scatter-add of ``label * K + pred`` over
the pixels that are not ``ignore_label``); ``metrics_from_confusion`` turns it into per-class IoU,
mIoU (the mean over the classes whose union is non-empty, i.e. mmseg's nan-mean: a class absent
from both the ground truth and the predictions does not count), pixel accuracy (aAcc), per-class
and mean accuracy (mAcc, over the classes present in the ground truth).

Inference takes ``apply_fn(images) -> logits``: NHWC *normalised* float images
(``lgvit.modeling.normalize``) whose sides are multiples of ``size_divisor`` to (B, h, w, K) logits at
any stride (UperNet: 4), e.g. ``lambda x: model.apply(variables, x, train=False)``. The images given to
the helpers are normalised too, so that the zero padding they add is the mean colour, as mmseg's
``Pad`` after ``Normalize``:

* :func:`infer_whole` -- mmseg ``mode='whole'``: the image resized to the test scale keeping its
  aspect ratio (mmcv's rule), padded to ``size_divisor``, the logits resized to the padded input,
  the padding cropped, then resized back to the original size (bilinear, align_corners=False);
* :func:`infer_slide` -- mmseg ``mode='slide'``: crop windows (512, stride 341) over the rescaled
  image, logits of overlapping windows averaged;
* :func:`infer_multiscale` -- mmseg ``MultiScaleFlipAug``: the softmax probabilities averaged over
  scale ratios (0.5..1.75) and horizontal flips.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lgvit.models.layers import resize_bilinear

Array = jax.Array
ApplyFn = Callable[[Array], Array]

IGNORE_LABEL = 255
#: mmseg's ADE20K scale (w, h) = (2048, 512) and its multi-scale ratios.
ADE20K_SCALE = (2048, 512)
MS_RATIOS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)

# --------------------------------------------------------------------------------------------
# Metrics.
# --------------------------------------------------------------------------------------------


def confusion_matrix(labels: Array, preds: Array, num_classes: int, ignore_label: int = IGNORE_LABEL,
                     mask: Optional[Array] = None) -> Array:
  """(K, K) int32 counts, [true, predicted], over the pixels with a label in [0, K) (not ignore_label)
  and, if given, ``mask`` (broadcastable to labels: e.g. the per-image mask of a padded eval batch)."""
  labels = labels.astype(jnp.int32)
  valid = (labels != ignore_label) & (labels >= 0) & (labels < num_classes)
  if mask is not None:
    valid = valid & jnp.broadcast_to(mask.reshape(mask.shape + (1,) * (labels.ndim - mask.ndim)).astype(bool),
                                     labels.shape)
  index = jnp.where(valid, labels * num_classes + preds.astype(jnp.int32), 0)
  counts = jnp.zeros(num_classes * num_classes, jnp.int32).at[index.ravel()].add(valid.ravel().astype(jnp.int32))
  return counts.reshape(num_classes, num_classes)


def metrics_from_confusion(confusion, class_names: Optional[Sequence[str]] = None) -> dict:
  """mIoU, aAcc, mAcc and per-class IoU/Acc (NaN where undefined) from a summed confusion matrix."""
  cm = np.asarray(confusion, np.float64)
  inter = np.diag(cm)
  gt, pred = cm.sum(1), cm.sum(0)
  union = gt + pred - inter
  with np.errstate(invalid='ignore', divide='ignore'):
    iou = np.where(union > 0, inter / union, np.nan)
    acc = np.where(gt > 0, inter / gt, np.nan)
  total = cm.sum()
  out = {'mIoU': float(np.nanmean(iou)) if np.any(union > 0) else float('nan'),
         'aAcc': float(inter.sum() / total) if total else float('nan'),
         'mAcc': float(np.nanmean(acc)) if np.any(gt > 0) else float('nan'),
         'IoU': iou, 'Acc': acc}
  if class_names is not None:
    out['IoU_per_class'] = dict(zip(class_names, iou.tolist()))
  return out


# --------------------------------------------------------------------------------------------
# Inference.
# --------------------------------------------------------------------------------------------


def rescale_size(h: int, w: int, scale: Sequence[int]) -> tuple[int, int]:
  """mmcv ``rescale_size`` (keep ratio): the largest size with long side <= max(scale) and short
  side <= min(scale), rounded half up; returns (h, w)."""
  factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
  return int(h * factor + 0.5), int(w * factor + 0.5)


def pad_to_multiple(images: Array, divisor: int) -> Array:
  """Zero-pads NHWC images at the bottom/right to sides that are multiples of ``divisor`` (on normalised
  images zero is the mean colour, mmseg's padding)."""
  h, w = images.shape[1:3]
  return jnp.pad(images, ((0, 0), (0, -h % divisor), (0, -w % divisor), (0, 0)))


def zero_outside(images: Array, content: Array) -> Array:
  """Normalised (B, H, W, C) images with every pixel outside the top-left ``content`` (B, 2) = (h, w)
  region set to 0, the mean colour: mmseg pads after normalising, lgvit's uint8 batches cannot."""
  rows = jnp.arange(images.shape[1])[None, :, None] < content[:, 0, None, None]
  cols = jnp.arange(images.shape[2])[None, None, :] < content[:, 1, None, None]
  return jnp.where((rows & cols)[..., None], images, jnp.zeros((), images.dtype))


def full_resolution_logits(apply_fn: ApplyFn, images: Array, size_divisor: int = 32) -> Array:
  """Logits at the images' own size: pad, run, resize to the padded size, crop the padding."""
  h, w = images.shape[1:3]
  padded = pad_to_multiple(images, size_divisor)
  logits = resize_bilinear(apply_fn(padded).astype(jnp.float32), padded.shape[1:3])
  return logits[:, :h, :w]


def _flipped(fn: Callable[[Array], Array], images: Array) -> Array:
  return fn(images[:, :, ::-1])[:, :, ::-1]


def infer_whole(apply_fn: ApplyFn, images: Array, *, scale: Optional[Sequence[int]] = None,
                size_divisor: int = 32, flip: bool = False) -> Array:
  """mmseg ``mode='whole'``: (B, H, W, K) logits at the original size; ``scale=None`` keeps the size."""
  h, w = images.shape[1:3]

  def run(x):
    if scale is not None:
      x = resize_bilinear(x, rescale_size(h, w, scale))
    return resize_bilinear(full_resolution_logits(apply_fn, x, size_divisor), (h, w))

  return _flipped(run, images) if flip else run(images)


def slide_windows(h: int, w: int, crop: Sequence[int], stride: Sequence[int]) -> list[tuple[int, int, int, int]]:
  """mmseg ``slide_inference``'s windows (y1, y2, x1, x2): a grid with the last row/column moved in
  so that it ends at the border; windows never exceed the image."""
  (ch, cw), (sh, sw) = crop, stride
  rows = max(h - ch + sh - 1, 0) // sh + 1
  cols = max(w - cw + sw - 1, 0) // sw + 1
  out = []
  for r in range(rows):
    for c in range(cols):
      y2, x2 = min(r * sh + ch, h), min(c * sw + cw, w)
      out.append((max(y2 - ch, 0), y2, max(x2 - cw, 0), x2))
  return out


def infer_slide(apply_fn: ApplyFn, images: Array, *, crop: Sequence[int] = (512, 512),
                stride: Sequence[int] = (341, 341), scale: Optional[Sequence[int]] = None,
                size_divisor: int = 32, flip: bool = False) -> Array:
  """mmseg ``mode='slide'``: window logits averaged where windows overlap, at the original size."""
  h, w = images.shape[1:3]

  def run(x):
    if scale is not None:
      x = resize_bilinear(x, rescale_size(h, w, scale))
    total, count = None, np.zeros(x.shape[1:3], np.float32)
    for y1, y2, x1, x2 in slide_windows(x.shape[1], x.shape[2], crop, stride):
      logits = full_resolution_logits(apply_fn, x[:, y1:y2, x1:x2], size_divisor)
      placed = jnp.pad(logits, ((0, 0), (y1, x.shape[1] - y2), (x1, x.shape[2] - x2), (0, 0)))
      total = placed if total is None else total + placed
      count[y1:y2, x1:x2] += 1
    return resize_bilinear(total / jnp.asarray(count)[None, :, :, None], (h, w))

  return _flipped(run, images) if flip else run(images)


def infer_multiscale(apply_fn: ApplyFn, images: Array, *, scale: Sequence[int] = ADE20K_SCALE,
                     ratios: Sequence[float] = MS_RATIOS, flip: bool = True, mode: str = 'whole',
                     size_divisor: int = 32, crop: Sequence[int] = (512, 512),
                     stride: Sequence[int] = (341, 341)) -> Array:
  """mmseg ``aug_test``: softmax probabilities (B, H, W, K) averaged over ``ratios`` x {image, flip}."""
  if mode not in ('whole', 'slide'):
    raise ValueError(f"mode must be 'whole' or 'slide', got {mode!r}")
  probs, n = 0.0, 0
  for ratio in ratios:
    ratio_scale = (int(scale[0] * ratio), int(scale[1] * ratio))
    for flipped in ((False, True) if flip else (False,)):
      if mode == 'whole':
        logits = infer_whole(apply_fn, images, scale=ratio_scale, size_divisor=size_divisor, flip=flipped)
      else:
        logits = infer_slide(apply_fn, images, crop=crop, stride=stride, scale=ratio_scale,
                             size_divisor=size_divisor, flip=flipped)
      probs = probs + jax.nn.softmax(logits, axis=-1)
      n += 1
  return probs / n


# --------------------------------------------------------------------------------------------
# Loss.
# --------------------------------------------------------------------------------------------


def pixel_cross_entropy(logits: Array, labels: Array, *, ignore_label: int = IGNORE_LABEL,
                        mask: Optional[Array] = None, avg_non_ignore: bool = False) -> Array:
  """mmseg ``CrossEntropyLoss`` on (B, h, w, K) logits at any stride against (B, H, W) labels: the
  logits are resized to the labels (bilinear, align_corners=False), ignored pixels contribute 0, and
  the sum is divided by every pixel (mmseg's default, ``avg_non_ignore=False``) or by the counted
  ones. ``mask`` (B,) leaves out whole images (unreadable ones) from both sums."""
  logits = resize_bilinear(logits.astype(jnp.float32), labels.shape[1:3])
  labels = labels.astype(jnp.int32)
  valid = labels != ignore_label
  pixels = jnp.ones(labels.shape, jnp.float32)
  if mask is not None:
    pixels = pixels * mask.astype(jnp.float32)[:, None, None]
  logp = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(logp, jnp.where(valid, labels, 0)[..., None], axis=-1)[..., 0]
  counted = pixels * valid
  denominator = counted.sum() if avg_non_ignore else pixels.sum()
  return jnp.sum(nll * counted) / jnp.maximum(denominator, 1.0)


def upernet_loss(outputs, labels: Array, *, aux_weight: float = 0.4, **kwargs) -> tuple[Array, dict]:
  """``decode + aux_weight * auxiliary`` pixel cross-entropy of a train-mode UperNet output
  ``(logits, aux_logits)`` (mmseg's UperNet configs: auxiliary loss weight 0.4)."""
  logits, aux = outputs if isinstance(outputs, tuple) else (outputs, None)
  decode = pixel_cross_entropy(logits, labels, **kwargs)
  terms = {'loss_decode': decode}
  total = decode
  if aux is not None and aux_weight:
    terms['loss_aux'] = pixel_cross_entropy(aux, labels, **kwargs)
    total = total + aux_weight * terms['loss_aux']
  return total, terms


# --------------------------------------------------------------------------------------------
# Pictures (class names and colour maps: lgvit.data.classes).
# --------------------------------------------------------------------------------------------


def colorize(mask, palette, ignore_label: int = IGNORE_LABEL, ignore_colour=(0, 0, 0)) -> np.ndarray:
  """(H, W) class indices -> (H, W, 3) uint8 colours; ``ignore_label`` (and any index beyond the palette)
  gets ``ignore_colour``."""
  mask = np.asarray(mask).astype(np.int64)
  palette = np.concatenate([np.asarray(palette, np.uint8), np.asarray([ignore_colour], np.uint8)])
  index = np.where((mask >= 0) & (mask < len(palette) - 1) & (mask != ignore_label), mask, len(palette) - 1)
  return palette[index]


def comparison_picture(image, truth, prediction, palette, ignore_label: int = IGNORE_LABEL) -> np.ndarray:
  """image | ground truth | prediction side by side, (H, 3W, 3) uint8 (the demo picture in docs/)."""
  image = np.asarray(image, np.uint8)
  return np.concatenate([image, colorize(truth, palette, ignore_label), colorize(prediction, palette, ignore_label)],
                        axis=1)
