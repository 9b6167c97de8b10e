"""The embedded segmentation demo dataset (lgvit/data/digits_seg.py): built through TFDS, labels that
match the pixels, deterministic examples."""
import numpy as np
import tensorflow_datasets as tfds

from lgvit.data import digits_seg


def test_examples_are_deterministic_and_labels_mark_the_digits():
  from sklearn.datasets import load_digits
  d = load_digits()
  a = digits_seg.make_example(np.random.default_rng([0, 5]), d.images, d.target)
  b = digits_seg.make_example(np.random.default_rng([0, 5]), d.images, d.target)
  np.testing.assert_array_equal(a[0], b[0]) and np.testing.assert_array_equal(a[1], b[1])
  image, label = a
  assert image.shape == (64, 64, 3) and label.shape == (64, 64, 1) and label.max() <= 10
  fg = label[..., 0] > 0
  assert 0.03 < fg.mean() < 0.6 and len(np.unique(label)) >= 2
  # digits are painted bright (170..255 blended by grey > 3/8), the texture stays below ~200
  assert image[fg].mean() > image[~fg].mean() + 20


def test_builder_prepares_both_splits_offline(tmp_path):
  from lgvit.data import pipeline
  builder = pipeline.get_builder('lgvit_digits_seg', str(tmp_path))  # built on first use, like lgvit_digits
  assert {s: builder.info.splits[s].num_examples for s in ('train', 'validation')} == digits_seg.SPLIT_SIZES
  got = {(ex['image'].tobytes(), ex['annotation'].tobytes())
         for ex in tfds.as_numpy(builder.as_dataset(split='validation'))}  # TFDS stores them in hashed key order
  val = _val_digits()
  want = {tuple(a.tobytes() for a in digits_seg.make_example(np.random.default_rng([1, i]), *val))
          for i in range(digits_seg.SPLIT_SIZES['validation'])}
  assert got == want  # PNG round trip is lossless, and every example is the pure function of (split, i)


def _val_digits():
  digits, splits = digits_seg.load_splits()
  return digits.images[splits['validation']], digits.target[splits['validation']]
