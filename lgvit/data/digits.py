"""The embedded default dataset: scikit-learn's bundled 8x8 digits as a TFDS builder.

No download: the 1,797 images ship inside scikit-learn. They are upscaled to 32x32 RGB PNGs and
split once, stratified with a fixed seed, into 1,437 train / 360 validation examples, so the very
same TFDS + tf.data path that reads ImageNet reads them.
"""
from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

IMAGE_SIZE = 32


class LgvitDigits(tfds.core.GeneratorBasedBuilder):
  """sklearn digits, 32x32 RGB, 10 classes (TFDS name ``lgvit_digits``)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 3), encoding_format='png'),
            'label': tfds.features.ClassLabel(num_classes=10),
        }),
        supervised_keys=('image', 'label'),
        description='scikit-learn 8x8 digits upscaled to 32x32 RGB (lgvit embedded default dataset).',
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    digits, splits = load_splits()
    return {split: self._generate_examples(digits, indices) for split, indices in splits.items()}

  def _generate_examples(self, digits, indices):
    for i in indices:
      yield int(i), {'image': to_rgb32(digits.images[i]), 'label': int(digits.target[i])}


def load_splits():
  """sklearn's digits and the sorted indices of the fixed stratified 'train' / 'validation' split."""
  digits = load_digits()
  idx = np.arange(len(digits.target))
  train_idx, val_idx = train_test_split(idx, test_size=360, random_state=0, stratify=digits.target)
  return digits, {'train': np.sort(train_idx), 'validation': np.sort(val_idx)}


def to_rgb32(img8: np.ndarray) -> np.ndarray:
  """8x8 grey levels 0..16 -> 32x32x3 uint8 (bilinear upsampling, white digit on black)."""
  img = np.asarray(img8, np.float32) / 16.0
  # Separable bilinear interpolation with align_corners=False, the same rule as tf/PIL.
  coords = (np.arange(IMAGE_SIZE) + 0.5) * (8 / IMAGE_SIZE) - 0.5
  lo = np.clip(np.floor(coords).astype(int), 0, 7)
  hi = np.clip(lo + 1, 0, 7)
  frac = np.clip(coords - lo, 0, 1)
  rows = img[lo] * (1 - frac)[:, None] + img[hi] * frac[:, None]
  up = rows[:, lo] * (1 - frac)[None] + rows[:, hi] * frac[None]
  grey = np.round(np.clip(up, 0, 1) * 255).astype(np.uint8)
  return np.repeat(grey[:, :, None], 3, axis=2)
