"""mmdet's detection transforms in TF (lgvit/data/det_transforms.py) against numpy references, and the
stream of lgvit/data/det_pipeline.py (determinism per (seed, epoch, shard), resume, eval padding)."""
import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from lgvit.data import det_pipeline, det_transforms as dt, digits_det, pipeline


def mmdet_rescale(h, w, scale):
  """mmcv.rescale_size written out: one factor for both sides, int(side * factor + 0.5)."""
  factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
  return int(h * factor + 0.5), int(w * factor + 0.5)


def _objects(boxes_xyxy, h, w, masks, labels=None, is_crowd=None, area=None):
  """``objects`` as the datasets store them: normalised (ymin, xmin, ymax, xmax) boxes, PNG masks."""
  b = np.asarray(boxes_xyxy, np.float32).reshape(-1, 4)
  n = len(b)
  bbox = np.stack([b[:, 1] / h, b[:, 0] / w, b[:, 3] / h, b[:, 2] / w], 1).astype(np.float32)
  pngs = [tf.io.encode_png(tf.constant(m[..., None].astype(np.uint8))) for m in masks]
  return {'bbox': tf.constant(bbox), 'label': tf.constant(labels if labels is not None else np.arange(n), tf.int64),
          'is_crowd': tf.constant(is_crowd if is_crowd is not None else np.zeros(n, bool)),
          'mask': tf.stack(pngs) if pngs else tf.zeros([0], tf.string),
          **({'area': tf.constant(area, tf.float32)} if area is not None else {})}


def _rect_mask(h, w, box):
  m = np.zeros((h, w), bool)
  x1, y1, x2, y2 = box
  m[y1:y2, x1:x2] = True
  return m


@pytest.mark.parametrize('hw', [(480, 640), (640, 480), (427, 640), (612, 612), (300, 1000), (1000, 300)])
def test_resize_follows_mmcvs_rescale_rule_in_both_orientations(hw):
  h, w = hw
  got = [int(v) for v in dt.target_size(tf.constant(h), tf.constant(w), (1333, 800), True)]
  assert got == list(mmdet_rescale(h, w, (1333, 800)))
  assert max(got) <= 1333 and min(got) <= 800
  # the boxes follow the per-axis factors new / old, as mmdet's scale_factor
  image = tf.zeros((h // 10, w // 10, 3), tf.uint8)  # tiny image, scale shrunk by 10 as well
  sh, sw = h // 10, w // 10
  box = [2, 3, sw - 4, sh - 1]
  out = dt.transform(image, _objects([box], sh, sw, [_rect_mask(sh, sw, box)]), scales=[(134, 80)],
                     pad_size=(160, 160), max_instances=2, mask_stride=1)
  nh, nw = mmdet_rescale(sh, sw, (134, 80))
  assert list(out['image_hw'].numpy()) == [nh, nw] and list(out['orig_hw'].numpy()) == [sh, sw]
  np.testing.assert_allclose(out['scale'].numpy(), [nh / sh, nw / sw], rtol=1e-6)
  np.testing.assert_allclose(out['gt_boxes'].numpy()[0], np.array(box) * np.array([nw / sw, nh / sh] * 2), rtol=1e-5)


def test_flip_moves_boxes_and_masks_together():
  rng = np.random.default_rng(0)
  h, w = 32, 48
  masks, boxes = [], []
  for _ in range(3):  # irregular shapes: a random blob inside a random box
    x1, y1 = rng.integers(0, 30), rng.integers(0, 20)
    m = np.zeros((h, w), bool)
    m[y1:y1 + 10, x1:x1 + 15] = rng.random((10, 15)) < 0.6
    masks.append(m)
    boxes.append(digits_det.tight_box(m))
  image = tf.constant(rng.integers(0, 255, (h, w, 3)), tf.uint8)
  objs = _objects(boxes, h, w, masks)
  kw = dict(scales=[(96, 64)], pad_size=(96, 128), max_instances=4, mask_stride=1, hflip=True)  # factor 2 exactly
  flips = 0
  for s in range(6):
    out = dt.transform(image, objs, [s, 1], **kw)
    plain = dt.transform(image, objs, [s, 1], **{**kw, 'hflip': False})
    flipped = not np.array_equal(out['image'].numpy(), plain['image'].numpy())
    flips += flipped
    nw = int(out['image_hw'][1])
    for g in range(3):
      m = out['gt_masks'].numpy()[g]
      assert set(np.unique(m)) <= {0, 255}
      ys, xs = np.nonzero(m)
      np.testing.assert_array_equal(out['gt_boxes'].numpy()[g], [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
      if flipped:
        pb = plain['gt_boxes'].numpy()[g]
        np.testing.assert_array_equal(out['gt_boxes'].numpy()[g], [nw - pb[2], pb[1], nw - pb[0], pb[3]])
        np.testing.assert_array_equal(m[:, :nw], plain['gt_masks'].numpy()[g][:, :nw][:, ::-1])
    if flipped:
      hh = int(out['image_hw'][0])
      np.testing.assert_array_equal(out['image'].numpy()[:hh, :nw], plain['image'].numpy()[:hh, :nw][:, ::-1])
  assert 0 < flips < 6


def test_padding_gt_valid_crowd_and_tiny_boxes_left_out():
  h, w = 20, 30
  boxes = [[0, 0, 10, 10], [5, 5, 25, 15], [2, 2, 2.5, 9], [1, 1, 29, 19], [3, 3, 9, 9]]
  masks = [_rect_mask(h, w, [int(v) for v in b]) for b in boxes]
  objs = _objects(boxes, h, w, masks, labels=[3, 4, 5, 6, 7], is_crowd=[False, False, False, True, False],
                  area=[100, 200, 3, 500, 0])
  image = tf.fill((h, w, 3), tf.constant(200, tf.uint8))
  out = dt.transform(image, objs, scales=[(30, 20)], pad_size=(32, 64), max_instances=4, mask_stride=2)
  # kept: 0 and 1; left out: 2 (0.5 px wide), 3 (crowd), 4 (zero area)
  np.testing.assert_array_equal(out['gt_valid'].numpy(), [True, True, False, False])
  np.testing.assert_array_equal(out['gt_labels'].numpy(), [3, 4, 0, 0])
  np.testing.assert_allclose(out['gt_boxes'].numpy()[:2], [boxes[0], boxes[1]])
  assert not out['gt_boxes'].numpy()[2:].any() and not out['gt_masks'].numpy()[2:].any()
  img = out['image'].numpy()
  assert img.shape == (32, 64, 3) and list(out['image_hw'].numpy()) == [20, 30]
  assert img.dtype == np.uint8 and not img[20:].any() and not img[:, 30:].any()  # the device makes it the mean colour
  assert (img[:20, :30] == 200).all()
  # stride 2 coverage: object 1 covers x 5..25, y 5..15 -> half-covered border blocks
  m = out['gt_masks'].numpy()[1]
  assert m.shape == (16, 32)
  want = _rect_mask(32, 64, [5, 5, 25, 15]).reshape(16, 2, 32, 2).mean((1, 3))
  np.testing.assert_array_equal(m, np.floor(want * 255 + 0.5).astype(np.uint8))
  # more objects than max_instances: the first ones (annotation order) are kept
  many = _objects([[0, 0, 10, 10]] * 6, h, w, [masks[0]] * 6, labels=np.arange(6))
  out = dt.transform(image, many, scales=[(30, 20)], pad_size=(32, 64), max_instances=4, mask_stride=2)
  np.testing.assert_array_equal(out['gt_labels'].numpy(), [0, 1, 2, 3])
  # no object at all
  out = dt.transform(image, _objects(np.zeros((0, 4)), h, w, []), scales=[(30, 20)], pad_size=(32, 64),
                     max_instances=4, mask_stride=2)
  assert not out['gt_valid'].numpy().any() and out['gt_masks'].shape == (4, 16, 32)


def test_nearest_mask_resize_is_opencvs_rule():
  for src, dst in [(7, 16), (16, 7), (480, 800), (33, 33)]:
    got = dt.nearest_indices(tf.constant(src), tf.constant(dst)).numpy()
    np.testing.assert_array_equal(got, np.minimum(np.floor(np.arange(dst) * src / dst).astype(int), src - 1))


def test_multiscale_value_mode_draws_every_short_side_and_lesa_stretches():
  scales = dt.MULTISCALE_3X
  assert [s[1] for s in scales] == list(range(480, 801, 32)) and {s[0] for s in scales} == {1333}
  picks = {int(dt.choose_scale(tf.constant([i, 3], tf.int64), scales)) for i in range(300)}
  assert picks == set(range(len(scales)))
  shorts = {int(dt.resize_to_scale(tf.constant(480), tf.constant(640), tf.constant(k), scales, True)[0])
            for k in range(len(scales))}
  assert shorts == set(range(480, 801, 32))  # a 4:3 landscape image: the short side binds
  # LESA: keep_ratio=False stretches to the scale, read as (w, h)
  image = tf.zeros((30, 50, 3), tf.uint8)
  out = dt.transform(image, _objects([[0, 0, 50, 30]], 30, 50, [np.ones((30, 50), bool)]), scales=[(40, 20)],
                     keep_ratio=False, pad_size=(32, 64), max_instances=1, mask_stride=1)
  assert list(out['image_hw'].numpy()) == [20, 40]
  np.testing.assert_allclose(out['scale'].numpy(), [20 / 30, 40 / 50])
  np.testing.assert_allclose(out['gt_boxes'].numpy()[0], [0, 0, 40, 20])
  assert out['gt_masks'].numpy()[0][:20, :40].all() and not out['gt_masks'].numpy()[0][20:].any()
  with pytest.raises(ValueError, match='may not fit'):
    dt.check_geometry([(1333, 800)], True, (1344, 800), 2)


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
  """The demo builder cut to 40 train / 12 validation canvases: a stream to test in a second."""
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(digits_det, 'SPLIT_SIZES', {'train': 40, 'validation': 12})
    builder = digits_det.LgvitDigitsDet(data_dir=str(tmp_path_factory.mktemp('tiny')))
    builder.download_and_prepare()
  c = ml_collections.ConfigDict({'data': {'train_split': 'train', 'eval_split': 'validation', 'shuffle_buffer': 64,
                                          'cache_train': False, 'shards': 2}, 'aug': {}})
  det_pipeline.default_fields(c)
  c.data.update(scale=(64, 64), pad_size=(64, 64), max_instances=6, mask_stride=4)
  c.aug.scales = ((64, 48), (64, 64))
  return builder, c


def _stream(builder, c, **kw):
  args = dict(split='train', training=True, batch_size=4, seed=1, epoch=0, start_step=0, steps_per_epoch=4)
  args.update(kw)
  return list(tfds.as_numpy(det_pipeline.build_detection_input(c.data, c.aug, builder, **args)))


def test_stream_is_a_pure_function_of_seed_epoch_and_shard_and_resumes_exactly(tiny):
  builder, c = tiny
  a, b = _stream(builder, c), _stream(builder, c)
  assert len(a) == 4
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  first = a[0]
  assert first['image'].shape == (4, 64, 64, 3) and first['gt_masks'].shape == (4, 6, 16, 16)
  assert first['gt_valid'].any() and (first['valid'] == 1).all()
  resumed = _stream(builder, c, start_step=2)
  for x, y in zip(a[2:], resumed):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  other_epoch = _stream(builder, c, epoch=1)
  assert not np.array_equal(a[0]['image'], other_epoch[0]['image'])
  # two processes, one shard each: together the single process's global batches
  halves = [_stream(builder, c, process_index=p, process_count=2) for p in range(2)]
  for step in range(4):
    np.testing.assert_array_equal(np.concatenate([halves[0][step]['gt_boxes'], halves[1][step]['gt_boxes']]),
                                  a[step]['gt_boxes'])
  sizes = {tuple(hw) for batch in a for hw in batch['image_hw']}
  assert sizes == {(48, 48), (64, 64)}  # both scales of aug.scales drawn


def test_crop_policy_stream_is_deterministic_and_resumes(tiny):
  builder, c = tiny
  c = ml_collections.ConfigDict(c.to_dict())
  c.aug.autoaugment_crop = True
  a, resumed = _stream(builder, c), _stream(builder, c, start_step=2)
  for x, y in zip(a[2:], resumed):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  c.aug.autoaugment_crop = False
  plain = _stream(builder, c)
  assert any(not np.array_equal(x['image'], y['image']) for x, y in zip(a, plain))


def test_eval_stream_counts_every_image_once_with_its_id_and_scale(tiny):
  builder, c = tiny
  ids = []
  for p in range(2):
    ds, steps = det_pipeline.eval_dataset(c.data, None, builder, local_batch=4, process_index=p, process_count=2)
    batches = list(tfds.as_numpy(ds))
    assert len(batches) == steps == 2  # 6 images per process, batches of 4: one partly padded
    for batch in batches:
      ids += list(batch['image_id'][batch['mask'] == 1])
      assert batch['scale'].shape == (4, 2) and batch['orig_hw'].dtype == np.int32
      np.testing.assert_allclose(batch['scale'][batch['mask'] == 1], 0.5)
      np.testing.assert_array_equal(batch['orig_hw'][batch['mask'] == 1], 128)
  assert sorted(ids) == list(range(12))
  gt = det_pipeline.coco_ground_truth(builder, 'validation')
  assert len(gt['images']) == 12 and {a['category_id'] for a in gt['annotations']} <= set(range(1, 11))


def _nearest(src, dst):
  return np.minimum(np.floor(np.arange(dst) * src / dst).astype(int), src - 1)


def test_crop_policy_is_mmdets_resize_crop_resize():
  """Swin's AutoAugment crop policy against mmdet's three steps written in numpy: Resize (shorter side
  400/500/600), RandomCrop absolute_range 384..600 (objects with an empty clipped box dropped), Resize."""
  rng = np.random.default_rng(3)
  h, w = 480, 640
  image = tf.constant(rng.integers(0, 255, (h, w, 3)), tf.uint8)
  boxes = [[10, 20, 200, 150], [300, 200, 630, 470], [0, 0, 40, 30], [600, 440, 640, 480]]
  masks = [_rect_mask(h, w, b) for b in boxes]
  objs = _objects(boxes, h, w, masks, labels=[1, 2, 3, 4])
  kw = dict(scales=dt.MULTISCALE_3X, pad_size=(1344, 1344), max_instances=4, mask_stride=1, crop_policy=True)
  draws, checked, dropped = [], 0, 0
  for s in range(40):
    seed = [s, 7]
    cropped, (h1, w1), (y0, x0, ch, cw) = [v if isinstance(v, tf.Tensor) else [int(t) for t in v]
                                           for v in dt.crop_window(tf.constant(seed, tf.int64), h, w)]
    cropped = bool(cropped)
    draws.append(cropped)
    index = s % len(dt.MULTISCALE_3X)
    out = dt.transform(image, objs, seed, scale_index=index, **kw)
    if not cropped:  # the other policy: the plain multi-scale resize, as without crop
      plain = dt.transform(image, objs, seed, scale_index=index, **{**kw, 'crop_policy': False})
      for k in ('image', 'image_hw', 'gt_labels', 'gt_masks', 'gt_valid'):
        np.testing.assert_array_equal(out[k].numpy(), plain[k].numpy())
      np.testing.assert_allclose(out['gt_boxes'].numpy(), plain['gt_boxes'].numpy(), rtol=1e-6)
      continue
    # mmdet, step by step
    assert (h1, w1) in [mmdet_rescale(h, w, s_) for s_ in dt.CROP_PRE_SCALES]
    assert min(h1, 384) <= ch <= min(h1, 600) and min(w1, 384) <= cw <= min(w1, 600)
    assert 0 <= y0 <= h1 - ch and 0 <= x0 <= w1 - cw
    nh, nw = mmdet_rescale(ch, cw, dt.MULTISCALE_3X[index])
    assert list(out['image_hw'].numpy()) == [nh, nw]
    first = dt.resize_image(image, h1, w1).numpy()[y0:y0 + ch, x0:x0 + cw]
    np.testing.assert_array_equal(out['image'].numpy()[:nh, :nw], dt.resize_image(first, nh, nw).numpy())
    b = np.array(boxes, np.float32) * np.array([w1 / w, h1 / h] * 2, np.float32) - np.array([x0, y0] * 2)
    b[:, 0::2] = np.clip(b[:, 0::2], 0, cw)
    b[:, 1::2] = np.clip(b[:, 1::2], 0, ch)
    valid = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
    b = b[valid] * np.array([nw / cw, nh / ch] * 2, np.float32)
    k = int(valid.sum())
    dropped += 4 - k
    np.testing.assert_array_equal(out['gt_valid'].numpy(), np.arange(4) < k)
    np.testing.assert_array_equal(out['gt_labels'].numpy()[:k], np.array([1, 2, 3, 4])[valid])
    np.testing.assert_allclose(out['gt_boxes'].numpy()[:k], b, rtol=1e-5, atol=1e-3)
    for g, m in zip(range(k), np.array(masks)[valid]):  # nearest resize, crop, nearest resize
      m1 = m[_nearest(h, h1)][:, _nearest(w, w1)][y0:y0 + ch, x0:x0 + cw]
      want = m1[_nearest(ch, nh)][:, _nearest(cw, nw)].astype(np.uint8) * 255
      np.testing.assert_array_equal(out['gt_masks'].numpy()[g][:nh, :nw], want)
      assert not out['gt_masks'].numpy()[g][nh:].any() and not out['gt_masks'].numpy()[g][:, nw:].any()
    np.testing.assert_allclose(out['scale'].numpy(), [nh / ch * h1 / h, nw / cw * w1 / w], rtol=1e-5)
    checked += 1
  assert 10 <= checked <= 30 and dropped > 0  # about half the draws crop, and some crops drop objects
