"""The embedded detection / instance-segmentation demo: digits of varied sizes on textured canvases
(TFDS ``lgvit_digits_det``; docs/detection.md, "Data").

No download: every example is made from scikit-learn's 8x8 digits, with the train / validation split
of :mod:`lgvit.data.digits`, so no validation digit is ever pasted into a training canvas. A 128x128
canvas gets the smooth colour texture of the segmentation demo (:func:`lgvit.data.digits_seg.texture`'s plane waves),
then 1 to 5 digits, each upscaled (bilinear) to its own square size of 20..48 px (so objects land on
several FPN levels), painted in a random bright colour where its grey level is above 3/8. A digit may
cover part of an earlier one: a new digit's square may overlap an earlier square by at most
``MAX_OVERLAP`` of the smaller square's area (else it is placed again, up to ``PLACE_TRIES`` times,
then dropped). The later digit is on top, so the earlier one's mask loses the covered pixels.

Per instance: the binary ``mask`` (the visible digit pixels, full canvas), its ``bbox`` tight around
the mask (pixel edges: x1 = first column, x2 = last column + 1), the ``label`` (the digit, 0..9),
``area`` (mask pixels), ``is_crowd`` (always False) and a per-image ``id``. The features are
:mod:`lgvit.data.coco`'s (``lgvit_coco``), so one input pipeline reads both:

* ``image``: (128, 128, 3) uint8 PNG; ``image/id``: int64 (the example's index in its split);
  ``image/filename``: ``'<split>/<index>.png'`` (nothing is on disk: a name for logs);
* ``objects``: a sequence of ``{'id': int64, 'area': float32, 'bbox': BBoxFeature (normalised ymin,
  xmin, ymax, xmax, as TFDS coco), 'label': ClassLabel(10), 'is_crowd': bool, 'mask': (128, 128, 1)
  uint8 PNG of 0/1}``.

Example ``i`` of a split is a pure function of ``(split, i)``.
"""
from __future__ import annotations

import io

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from lgvit.data.classes import DET_DEMO_CLASS_NAMES
from lgvit.data.coco import instance_features
from lgvit.data.digits import LgvitDigits, load_splits

CANVAS = 128
NUM_CLASSES = len(DET_DEMO_CLASS_NAMES)
SPLIT_SIZES = {'train': 1000, 'validation': 200}
SIZE_RANGE = (20, 48)  # inclusive digit square sides, pixels
MAX_DIGITS = 5
MAX_OVERLAP = 0.2  # of the smaller square's area
PLACE_TRIES = 20
MIN_VISIBLE = 8  # an instance with fewer visible pixels is dropped (occluded away)
_FOREGROUND = 3 / 8  # grey level (0..1) above which a pixel belongs to its digit, as in lgvit_digits_seg


def texture(rng: np.random.Generator, size: int = CANVAS) -> np.ndarray:
  """A smooth colour background: per channel a random mid colour plus three random plane waves, as
  ``lgvit_digits_seg``'s, evaluated separably (sin(a + b) = sin a cos b + cos a sin b: outer products of
  two vectors instead of a sine per pixel, which made most of the build time)."""
  t = np.arange(size) / size
  out = np.empty((size, size, 3), np.float32)
  for c in range(3):
    wave = np.zeros((size, size))
    for _ in range(3):
      fy, fx, phase = rng.uniform(-3, 3), rng.uniform(-3, 3), rng.uniform(0, 6.3)
      ay, bx = 2 * np.pi * fy * t, 2 * np.pi * fx * t + phase
      wave += np.outer(np.sin(ay), np.cos(bx)) + np.outer(np.cos(ay), np.sin(bx))
    out[..., c] = rng.uniform(50, 130) + 12 * wave
  return np.clip(out, 0, 255)


def png(array: np.ndarray) -> io.BytesIO:
  """A 2-D or (H, W, 3) uint8 array as PNG bytes (Pillow; TFDS's own encoder is ~50x slower per call): TFDS
  stores an image given as a file object as it is, and PNG is lossless."""
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format='PNG', compress_level=1)  # fast; still lossless
  buf.seek(0)
  return buf


def upscale(img8: np.ndarray, size: int) -> np.ndarray:
  """8x8 grey levels 0..16 -> (size, size) float32 in 0..1 (separable bilinear, half-pixel centres)."""
  img = np.asarray(img8, np.float32) / 16.0
  coords = (np.arange(size) + 0.5) * (8 / size) - 0.5
  lo = np.clip(np.floor(coords).astype(int), 0, 7)
  hi = np.clip(lo + 1, 0, 7)
  frac = np.clip(coords - lo, 0, 1).astype(np.float32)
  rows = img[lo] * (1 - frac)[:, None] + img[hi] * frac[:, None]
  return np.clip(rows[:, lo] * (1 - frac)[None] + rows[:, hi] * frac[None], 0, 1)


def _overlap_ok(box, placed) -> bool:
  y, x, s = box
  for py, px, ps in placed:
    inter = max(0, min(y + s, py + ps) - max(y, py)) * max(0, min(x + s, px + ps) - max(x, px))
    if inter > MAX_OVERLAP * min(s, ps) ** 2:
      return False
  return True


def tight_box(mask: np.ndarray) -> np.ndarray:
  """(x1, y1, x2, y2) float32 pixel edges of the nonzero pixels of a 2-D mask."""
  ys, xs = np.nonzero(mask)
  return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def make_example(rng: np.random.Generator, images8: np.ndarray, targets: np.ndarray):
  """(image (128, 128, 3) uint8, masks (N, 128, 128) bool, labels (N,) int64, boxes (N, 4) float32 x1 y1 x2 y2)
  for 1..5 digits drawn from ``images8`` / ``targets``; N >= 1."""
  image = texture(rng, CANVAS)
  placed, masks, labels = [], [], []
  for _ in range(int(rng.integers(1, MAX_DIGITS + 1))):
    size = int(rng.integers(SIZE_RANGE[0], SIZE_RANGE[1] + 1))
    for _ in range(PLACE_TRIES):
      y, x = (int(v) for v in rng.integers(0, CANVAS - size + 1, 2))
      if _overlap_ok((y, x, size), placed):
        break
    else:
      continue  # no room: this digit is left out
    k = int(rng.integers(len(targets)))
    grey = upscale(images8[k], size)
    colour = rng.uniform(170, 255, 3)
    window = image[y:y + size, x:x + size]
    image[y:y + size, x:x + size] = window * (1 - grey[..., None]) + colour * grey[..., None]
    mask = np.zeros((CANVAS, CANVAS), bool)
    mask[y:y + size, x:x + size] = grey > _FOREGROUND
    for earlier in masks:  # the new digit is painted on top
      earlier &= ~mask
    placed.append((y, x, size))
    masks.append(mask)
    labels.append(int(targets[k]))
  keep = [j for j, m in enumerate(masks) if m.sum() >= MIN_VISIBLE]
  masks = np.stack([masks[j] for j in keep])
  labels = np.array([labels[j] for j in keep], np.int64)
  boxes = np.stack([tight_box(m) for m in masks])
  return np.round(image).astype(np.uint8), masks, labels, boxes


def example_features(index: int, split: str, image, masks, labels, boxes) -> dict:
  """The TFDS feature dict of one example (the layout of the module docstring)."""
  objects = [{'id': j, 'area': float(m.sum()),
              'bbox': tfds.features.BBox(ymin=b[1] / CANVAS, xmin=b[0] / CANVAS, ymax=b[3] / CANVAS, xmax=b[2] / CANVAS),
              'label': int(label), 'is_crowd': False, 'mask': png(m.astype(np.uint8))}
             for j, (m, label, b) in enumerate(zip(masks, labels, boxes))]
  return {'image': png(image), 'image/id': index, 'image/filename': f'{split}/{index}.png', 'objects': objects}


class LgvitDigitsDet(LgvitDigits):
  """Digits of 20..48 px on textured 128x128 canvases with boxes, labels and instance masks
  (TFDS name ``lgvit_digits_det``); the version and the digit split are ``lgvit_digits``'s."""

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=instance_features(tfds.features.Image(shape=(CANVAS, CANVAS, 3), encoding_format='png'),
                                   DET_DEMO_CLASS_NAMES, canvas=CANVAS),
        description='scikit-learn digits of varied sizes on textured canvases, with boxes and instance masks '
                    '(lgvit detection demo).',
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    digits, splits = load_splits()
    return {split: self._generate_examples(split, digits.images[ids], digits.target[ids])
            for split, ids in splits.items()}

  def _generate_examples(self, split, images8, targets):
    salt = list(SPLIT_SIZES).index(split)
    for i in range(SPLIT_SIZES[split]):
      example = make_example(np.random.default_rng([salt, i, 7]), images8, targets)
      yield i, example_features(i, split, *example)
