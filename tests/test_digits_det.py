"""The embedded detection demo (lgvit/data/digits_det.py): boxes tight around the masks, deterministic
examples, the digit split kept, built offline through lgvit.data.pipeline."""
import numpy as np
import tensorflow_datasets as tfds

from lgvit.data import digits_det as dd


def _split_digits(split):
  digits, splits = dd.load_splits()
  return digits.images[splits[split]], digits.target[splits[split]]


def test_examples_are_deterministic_with_tight_boxes_and_visible_masks():
  images8, targets = _split_digits('train')
  counts, sides = [], []
  for i in range(40):
    a = dd.make_example(np.random.default_rng([0, i, 7]), images8, targets)
    b = dd.make_example(np.random.default_rng([0, i, 7]), images8, targets)
    for x, y in zip(a, b):
      np.testing.assert_array_equal(x, y)
    image, masks, labels, boxes = a
    assert image.shape == (128, 128, 3) and image.dtype == np.uint8
    assert masks.shape == (len(labels), 128, 128) and 1 <= len(labels) <= 5
    assert labels.min() >= 0 and labels.max() <= 9
    for m, box in zip(masks, boxes):
      ys, xs = np.nonzero(m)
      np.testing.assert_array_equal(box, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
      assert m.sum() >= dd.MIN_VISIBLE
      sides.append(max(box[2] - box[0], box[3] - box[1]))
    # instances do not share pixels (a later digit takes the pixels it covers)
    assert masks.sum(0).max() <= 1
    counts.append(len(labels))
  assert len(set(counts)) >= 4  # 1..5 digits per canvas
  assert min(sides) < 24 and max(sides) > 40  # several FPN levels


def test_validation_digits_never_reach_the_training_split():
  builder = dd.LgvitDigitsDet(data_dir='/nonexistent-unused')
  gens = builder._split_generators(None)
  train_imgs = gens['train'].gi_frame.f_locals['images8']
  val_imgs = gens['validation'].gi_frame.f_locals['images8']
  for split, imgs in (('train', train_imgs), ('validation', val_imgs)):
    np.testing.assert_array_equal(imgs, _split_digits(split)[0])
  train_set = {x.tobytes() for x in train_imgs}
  assert not any(x.tobytes() in train_set for x in val_imgs)
  assert len(train_imgs) + len(val_imgs) == 1797


def test_builder_prepares_both_splits_offline_and_stores_the_pure_examples(tmp_path):
  from lgvit.data import pipeline
  builder = pipeline.get_builder('lgvit_digits_det', str(tmp_path))
  assert {s: builder.info.splits[s].num_examples for s in ('train', 'validation')} == dd.SPLIT_SIZES
  val = _split_digits('validation')
  seen = set()
  for ex in tfds.as_numpy(builder.as_dataset(split='validation')):
    i = int(ex['image/id'])
    seen.add(i)
    image, masks, labels, boxes = dd.make_example(np.random.default_rng([1, i, 7]), *val)
    np.testing.assert_array_equal(ex['image'], image)  # lossless PNG
    obj = ex['objects']
    np.testing.assert_array_equal(obj['mask'][..., 0], masks.astype(np.uint8))
    np.testing.assert_array_equal(obj['label'], labels)
    assert not obj['is_crowd'].any()
    np.testing.assert_array_equal(obj['area'], masks.sum((1, 2)))
    # BBoxFeature: ymin, xmin, ymax, xmax normalised by the canvas (k / 128 is exact in float32)
    np.testing.assert_array_equal(obj['bbox'] * 128, boxes[:, [1, 0, 3, 2]])
  assert seen == set(range(dd.SPLIT_SIZES['validation']))
