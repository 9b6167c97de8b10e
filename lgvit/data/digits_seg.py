"""The embedded segmentation demo: the bundled digits pasted on textured canvases (TFDS ``lgvit_digits_seg``).

No download: each example is made from scikit-learn's 8x8 digits (the same stratified train /
validation split as :mod:`lgvit.data.digits`, so validation digits are never seen in training).
A 64x64 canvas gets a smooth random colour texture, then two or three 32x32 digits (upscaled as
``lgvit_digits``) in random bright colours in distinct cells of a 2x2 grid (jittered by up to 4 px; a
later digit's box may cover the blank margin of an earlier one). The per-pixel
label is 0 for the background and 1 + digit where a digit's grey level exceeds 3/8 (11 classes);
it is stored like ``scene_parse150``'s ``annotation``, a PNG of class indices.
Example ``i`` of a split is a pure function of ``(split, i)``.
"""
from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from lgvit.data.classes import DEMO_CLASS_NAMES
from lgvit.data.digits import IMAGE_SIZE as DIGIT_SIZE
from lgvit.data.digits import LgvitDigits, load_splits, to_rgb32

CANVAS = 64
NUM_CLASSES = len(DEMO_CLASS_NAMES)  # background + digits 0..9
SPLIT_SIZES = {'train': 1200, 'validation': 200}
_FOREGROUND = 96  # grey level (of 255) above which a pixel belongs to its digit


def texture(rng: np.random.Generator, size: int = CANVAS) -> np.ndarray:
  """A smooth colour background: a few random plane waves per channel around a random mid colour."""
  yy, xx = np.mgrid[0:size, 0:size] / size
  out = np.empty((size, size, 3), np.float32)
  for c in range(3):
    wave = sum(np.sin(2 * np.pi * (rng.uniform(-3, 3) * yy + rng.uniform(-3, 3) * xx) + rng.uniform(0, 6.3))
               for _ in range(3))
    out[..., c] = rng.uniform(50, 130) + 12 * wave
  return np.clip(out, 0, 255)


def make_example(rng: np.random.Generator, images8: np.ndarray, targets: np.ndarray):
  """(image (64, 64, 3) uint8, annotation (64, 64, 1) uint8) with 2-3 digits drawn from ``images8``."""
  image = texture(rng)
  label = np.zeros((CANVAS, CANVAS), np.uint8)
  cells = rng.permutation(4)[:rng.integers(2, 4)]  # distinct cells of a 2x2 grid, jittered by up to 4 px
  for cell in cells:
    k = rng.integers(len(targets))
    grey = to_rgb32(images8[k])[..., 0].astype(np.float32) / 255.0
    y, x = np.clip(np.array(divmod(cell, 2)) * DIGIT_SIZE + rng.integers(-4, 5, 2), 0, CANVAS - DIGIT_SIZE)
    colour = rng.uniform(170, 255, 3)
    patch = image[y:y + DIGIT_SIZE, x:x + DIGIT_SIZE]
    image[y:y + DIGIT_SIZE, x:x + DIGIT_SIZE] = patch * (1 - grey[..., None]) + colour * grey[..., None]
    window = label[y:y + DIGIT_SIZE, x:x + DIGIT_SIZE]
    window[grey * 255 > _FOREGROUND] = 1 + int(targets[k])
  return np.round(image).astype(np.uint8), label[..., None]


class LgvitDigitsSeg(LgvitDigits):
  """Digits on textured 64x64 canvases with per-pixel labels, 11 classes (TFDS name ``lgvit_digits_seg``);
  the version and the digit split are ``lgvit_digits``'s."""

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(CANVAS, CANVAS, 3), encoding_format='png'),
            'annotation': tfds.features.Image(shape=(CANVAS, CANVAS, 1), encoding_format='png'),
        }),
        supervised_keys=('image', 'annotation'),
        description='scikit-learn digits pasted on textured canvases, per-pixel labels (lgvit segmentation demo).',
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    digits, splits = load_splits()
    return {split: self._generate_examples(split, digits.images[ids], digits.target[ids])
            for split, ids in splits.items()}

  def _generate_examples(self, split, images8, targets):
    salt = list(SPLIT_SIZES).index(split)
    for i in range(SPLIT_SIZES[split]):
      image, annotation = make_example(np.random.default_rng([salt, i]), images8, targets)
      yield i, {'image': image, 'annotation': annotation}
