"""mmseg's ADE20K train transforms in TF (lgvit/data/seg_transforms.py) against numpy references."""
import numpy as np
import pytest
import tensorflow as tf

from lgvit.data import seg_transforms as st


def mmseg_choose_crop(label, offsets, crop, cat_max_ratio):
  """mmseg RandomCrop's loop, written out: try the first 10 bboxes, else take the 11th."""
  for i in range(st.CROP_TRIES):
    y, x = offsets[i]
    window = label[y:y + crop[0], x:x + crop[1]]
    labels, cnt = np.unique(window, return_counts=True)
    cnt = cnt[labels != 255]
    if len(cnt) > 1 and np.max(cnt) / np.sum(cnt) < cat_max_ratio:
      return i
  return st.CROP_TRIES


@pytest.mark.parametrize('seed', range(6))
def test_crop_choice_is_mmsegs_cat_max_ratio_loop(seed):
  rng = np.random.default_rng(seed)
  label = np.zeros((40, 50), np.uint8)  # mostly class 0: few crops pass
  label[rng.integers(0, 40, 3)[:, None], :] = 7
  label[:, rng.integers(0, 50, 4)] = 3
  label[rng.random(label.shape) < 0.1] = 255
  offsets = np.stack([rng.integers(0, 25, 11), rng.integers(0, 35, 11)], 1).astype(np.int32)
  got = int(st.choose_crop(tf.constant(label), tf.constant(offsets), (16, 16), 0.75))
  assert got == mmseg_choose_crop(label, offsets, (16, 16), 0.75)


def test_zero_label_is_ignored_and_classes_shift_down():
  out = st.reduce_zero_label(tf.constant([[0, 1, 150, 255]], tf.uint8)).numpy()
  np.testing.assert_array_equal(out, [[255, 0, 149, 255]])  # mmseg: 255 - 1 = 254 -> 255 again


def _example(h=60, w=90):
  """A label map of blocks and an image that encodes it (red = 10 * label), so alignment is checkable."""
  label = np.kron(np.arange(1, 7).reshape(2, 3), np.ones((h // 2, w // 3))).astype(np.uint8)
  image = np.stack([label * 10, np.full_like(label, 50), np.full_like(label, 90)], -1).astype(np.uint8)
  return tf.constant(image), tf.constant(label)


def test_transform_is_a_pure_function_of_the_seed_and_keeps_image_and_label_aligned():
  image, label = _example()
  kw = dict(scale=(120, 40), crop=(32, 32), photometric=False)
  a = st.train_transform(image, label, [1, 2], **kw)
  b = st.train_transform(image, label, [1, 2], **kw)
  np.testing.assert_array_equal(a[0].numpy(), b[0].numpy())
  np.testing.assert_array_equal(a[1].numpy(), b[1].numpy())
  outs = [st.train_transform(image, label, [s, 0], **kw) for s in range(8)]
  assert len({o[1].numpy().tobytes() for o in outs}) > 1  # different seeds, different crops/flips
  for img, lab, _ in outs:
    img, lab = img.numpy(), lab.numpy()
    assert img.shape == (32, 32, 3) and lab.shape == (32, 32) and img.dtype == lab.dtype == np.uint8
    counted = lab != 255
    # labels 1..6 became 0..5; block interiors agree between the bilinear image and the nearest label
    agree = np.abs(img[..., 0][counted].astype(int) - 10 * (lab[counted].astype(int) + 1)) <= 1
    assert agree.mean() > 0.9


def test_small_images_are_padded_with_the_ignore_label():
  image, label = _example(20, 30)
  img, lab, content = st.train_transform(image, label, [0, 0], scale=(30, 20), ratio_range=(1.0, 1.0),
                                         crop=(32, 48), hflip=False, photometric=False)
  img, lab = img.numpy(), lab.numpy()
  assert (lab[20:] == 255).all() and (lab[:, 30:] == 255).all()
  assert list(content.numpy()) == [20, 30]  # the train step sets the pixels outside it to the mean colour
  np.testing.assert_array_equal(lab[:20, :30], label.numpy()[:, :] - 1)


def test_photometric_distortion_changes_colours_only():
  image, label = _example()
  kw = dict(scale=(120, 40), crop=(32, 32))
  changed = 0
  for s in range(6):
    plain = st.train_transform(image, label, [s, 3], photometric=False, **kw)
    distorted = st.train_transform(image, label, [s, 3], **kw)
    np.testing.assert_array_equal(plain[1].numpy(), distorted[1].numpy())  # same geometry
    changed += not np.array_equal(plain[0].numpy(), distorted[0].numpy())
  assert changed >= 3


def test_mmsegs_integer_random_scale_hue_range_and_uint8_saturation():
  # Resize(ratio_range): mmseg draws r, then rescales to (int(2048 r), int(512 r)); r = 0.751758 gives the
  # bounds (1539, 384), where the unrounded 384.9 would give a 385-pixel short side.
  ratio = tf.constant(384.9 / 512, tf.float64)
  assert [int(v) for v in st.rescale_size(tf.constant(1000), tf.constant(1000), (2048, 512), ratio)] == [384, 384]
  assert [int(v) for v in st.rescale_size(tf.constant(375), tf.constant(500), (2048, 512))] == [512, 683]
  # PhotoMetricDistortion's hue: numpy randint(-18, 18) never draws 18
  shifts = {int(st.hue_shift(tf.constant([i, 7], tf.int64))) for i in range(600)}
  assert min(shifts) == -18 and max(shifts) == 17 and len(shifts) == 36
  # saturation on OpenCV's uint8 scale: 0.5 * 1.3 = 0.65 -> floor(165.75) / 255
  got = st.scale_saturation(tf.constant([0.5, 0.9, 0.0]), 1.3).numpy()
  np.testing.assert_allclose(got, [165 / 255, 1.0, 0.0], rtol=1e-6)
