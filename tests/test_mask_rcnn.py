"""lgvit.models.mask_rcnn: the FPN against a PyTorch transcription, the RPN and RoI targets against
plain loops over mmdetection's rules, the mask targets against torchvision's RoIAlign, the test-time
NMS on a hand-made case, a tiny detector that learns one batch (all five losses fall), the eval
outputs' shapes and validity, and the registered models traced at full size (no compute)."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import torchvision
from conftest import RESNET_TINY

from lgvit.models import box_ops, create_model, model_info
from lgvit.models import mask_rcnn as mr
from lgvit.models.layers import count_params

NUM_CLASSES = 3
#: A detector small enough to compile in seconds: the tiny ResNet, narrow heads, few proposals.
TINY = dict(num_classes=NUM_CLASSES, backbone_kwargs=RESNET_TINY, fpn_channels=16, fc_channels=32, mask_channels=16,
            rpn_train_pre_nms=100, rpn_test_pre_nms=100, rpn_max_proposals=16, rcnn_samples=32, max_detections=10)


# ----------------------------------------------------------------------------------------------
# Plain references.
# ----------------------------------------------------------------------------------------------


def np_iou(a, b):
  out = np.zeros((len(a), len(b)), np.float64)
  for i, p in enumerate(a):
    for j, q in enumerate(b):
      w = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
      h = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
      inter = w * h
      union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter
      out[i, j] = inter / max(union, 1e-6)
  return out


def np_max_iou_assign(boxes, gts, pos_thr, neg_thr, min_pos, low_quality):
  """mmdet MaxIoUAssigner.assign_wrt_overlaps, loop for loop (gt_max_assign_all=True)."""
  overlaps = np_iou(gts, boxes)  # [G, N], mmdet's orientation
  assigned = np.full(len(boxes), -1)
  for n in range(len(boxes)):
    best = overlaps[:, n].max()
    if 0 <= best < neg_thr:
      assigned[n] = 0
    if best >= pos_thr:
      assigned[n] = int(np.argmax(overlaps[:, n])) + 1
  if low_quality:
    for g in range(len(gts)):
      if overlaps[g].max() >= min_pos:
        for n in range(len(boxes)):
          if overlaps[g, n] == overlaps[g].max():
            assigned[n] = g + 1
  return assigned


def np_encode(p, g, stds):
  pw, ph = p[2] - p[0], p[3] - p[1]
  gw, gh = g[2] - g[0], g[3] - g[1]
  d = [((g[0] + g[2]) - (p[0] + p[2])) / 2 / pw, ((g[1] + g[3]) - (p[1] + p[3])) / 2 / ph,
       np.log(gw / pw), np.log(gh / ph)]
  return np.array(d) / np.array(stds)


# ----------------------------------------------------------------------------------------------
# FPN.
# ----------------------------------------------------------------------------------------------


def test_nearest_resize_is_pytorchs():
  x = np.random.default_rng(0).standard_normal((1, 5, 3, 2)).astype(np.float32)
  ours = mr._resize_nearest(jnp.asarray(x), (11, 7))
  ref = torch.nn.functional.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=(11, 7), mode='nearest')
  np.testing.assert_array_equal(np.asarray(ours), ref.permute(0, 2, 3, 1).numpy())


def test_fpn_matches_a_pytorch_transcription_of_mmdets():
  rng = np.random.default_rng(0)
  sides, channels = [(16, 24), (8, 12), (4, 6), (2, 3)], [4, 6, 8, 10]
  feats = [rng.standard_normal((2, h, w, c)).astype(np.float32) for (h, w), c in zip(sides, channels)]
  fpn = mr.FPN(channels=5)
  variables = fpn.init(jax.random.PRNGKey(0), feats)
  # Non-zero biases, so that a dropped bias would show.
  variables = jax.tree_util.tree_map(lambda p: p + 0.1 * rng.standard_normal(p.shape).astype(np.float32), variables)
  outs = fpn.apply(variables, feats)
  assert [o.shape for o in outs] == [(2, 16, 24, 5), (2, 8, 12, 5), (2, 4, 6, 5), (2, 2, 3, 5), (2, 1, 2, 5)]

  F = torch.nn.functional
  p = jax.tree_util.tree_map(lambda a: torch.from_numpy(np.asarray(a)), variables['params'])
  conv = lambda x, layer, pad: F.conv2d(x, p[layer]['kernel'].permute(3, 2, 0, 1), p[layer]['bias'], padding=pad)
  inputs = [torch.from_numpy(f).permute(0, 3, 1, 2) for f in feats]
  laterals = [conv(x, f'lateral{i}', 0) for i, x in enumerate(inputs)]
  for i in range(3, 0, -1):
    laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[2:], mode='nearest')
  ref = [conv(lat, f'fpn{i}', 1) for i, lat in enumerate(laterals)]
  ref.append(F.max_pool2d(ref[-1], 1, stride=2))
  for ours, theirs in zip(outs, ref):
    np.testing.assert_allclose(np.asarray(ours), theirs.permute(0, 2, 3, 1).numpy(), rtol=1e-4, atol=1e-4)


def test_pyramid_strides_and_the_lesa_detection_strides():
  model = create_model('mask_rcnn_resnet50', **TINY)
  x = jnp.zeros((1, 64, 96, 3))
  shapes = jax.eval_shape(lambda: model.init_with_output(jax.random.PRNGKey(0), x, train=False,
                                                         method=mr.MaskRCNN.pyramid)[0])
  assert [s.shape for s in shapes] == [(1, 16, 24, 16), (1, 8, 12, 16), (1, 4, 6, 16), (1, 2, 3, 16), (1, 1, 2, 16)]
  # LESA's classification layout ends at stride 16; the detector refuses it and names the detection strides.
  lesa = dict(TINY, backbone='lesa_resnet50', backbone_kwargs=dict(RESNET_TINY, lesa_position='axial'))
  with pytest.raises(ValueError, match=r'strides \(4, 8, 16, 16\).*stage_strides=\(1, 2, 2, 2\)'):
    jax.eval_shape(lambda: create_model('mask_rcnn_lesa_resnet50', **lesa).init(jax.random.PRNGKey(0), x, train=False))
  assert model_info('mask_rcnn_lesa_resnet50').defaults['backbone_kwargs']['stage_strides'] == (1, 2, 2, 2)


# ----------------------------------------------------------------------------------------------
# Targets.
# ----------------------------------------------------------------------------------------------

# Hand-made anchors around two objects (the third gt is padding).
GT = np.array([[10, 10, 50, 40], [60, 60, 70, 90], [0, 0, 30, 30]], np.float32)
GT_VALID = np.array([True, True, False])
ANCHORS = np.array([
    [12, 10, 50, 42],  # IoU ~0.9 with gt 0: positive
    [10, 10, 40, 40],  # 0.75: positive
    [20, 15, 60, 45],  # ~0.5: ignored
    [56, 55, 74, 85],  # gt 1's best (~0.42, under 0.7): a low-quality positive
    [100, 100, 120, 120],  # no overlap: negative
    [0, 0, 30, 30],  # the padded gt's box, ~0.26 with gt 0: negative (padding matches nothing)
    [11, 10, 50, 40],  # ~0.97 with gt 0, but outside the image's padded area: never sampled
    [58, 88, 66, 100],  # ~0.03 with gt 1: negative
], np.float32)
ANCHOR_VALID = np.array([True] * 6 + [False, True])


def test_rpn_targets_follow_mmdets_assigner_and_sampler():
  positive, negative, targets = mr.rpn_targets(jax.random.PRNGKey(0), jnp.asarray(ANCHORS), jnp.asarray(ANCHOR_VALID),
                                               jnp.asarray(GT), jnp.asarray(GT_VALID))
  want = np_max_iou_assign(ANCHORS[ANCHOR_VALID], GT[GT_VALID], 0.7, 0.3, 0.3, True)
  full = np.full(len(ANCHORS), -1)
  full[ANCHOR_VALID] = want
  np.testing.assert_array_equal(full, [1, 1, -1, 2, 0, 0, -1, 0])  # the case is what the comments say
  # 256 samples exceed the 8 anchors: the sampler takes every positive and every negative.
  np.testing.assert_array_equal(np.asarray(positive), full > 0)
  np.testing.assert_array_equal(np.asarray(negative), full == 0)
  for n in range(len(ANCHORS)):
    expected = np_encode(ANCHORS[n], GT[full[n] - 1], (1, 1, 1, 1)) if full[n] > 0 else np.zeros(4)
    np.testing.assert_allclose(np.asarray(targets[n]), expected, rtol=1e-5, atol=1e-6)


def test_rpn_sampling_caps_and_loss_normalisation():
  rng = np.random.default_rng(1)
  anchors = np.concatenate([ANCHORS[:2]] * 10 + [ANCHORS[4:5]] * 30)  # 20 positives, 30 negatives
  positive, negative, targets = mr.rpn_targets(jax.random.PRNGKey(3), jnp.asarray(anchors), jnp.ones(50, bool),
                                               jnp.asarray(GT), jnp.asarray(GT_VALID), num_samples=16)
  assert int(positive.sum()) == 8 and int(negative.sum()) == 8  # half of 16 positives at most, the rest negatives
  logits = rng.standard_normal(50).astype(np.float32)
  deltas = rng.standard_normal((50, 4)).astype(np.float32)
  loss_cls, loss_bbox = mr.rpn_loss(jnp.asarray(logits), jnp.asarray(deltas), positive, negative, targets)
  pos, neg, t = np.asarray(positive), np.asarray(negative), np.asarray(targets)
  prob = 1 / (1 + np.exp(-logits))
  bce = -(pos * np.log(prob) + (1 - pos) * np.log(1 - prob))
  np.testing.assert_allclose(float(loss_cls), bce[pos | neg].sum() / 16, rtol=1e-5)
  np.testing.assert_allclose(float(loss_bbox), np.abs(deltas - t)[pos].sum() / 16, rtol=1e-5)


def test_anchor_valid_flags_use_the_images_padded_size():
  flags = mr.anchor_valid_flags([(4, 6), (2, 3)], (16, 32), jnp.array([40, 50]), size_divisor=32, num_anchors=2)
  # pad shape 64x64: stride 16 -> 4x4 of the 4x6 locations, stride 32 -> 2x2 of 2x3.
  level0 = np.repeat((np.arange(4)[:, None] < 4) & (np.arange(6)[None] < 4), 2, axis=None).reshape(-1)
  level1 = np.repeat((np.arange(2)[:, None] < 2) & (np.arange(3)[None] < 2), 2, axis=None).reshape(-1)
  np.testing.assert_array_equal(np.asarray(flags), np.concatenate([level0, level1]))


def test_anchor_inside_flags_keep_anchors_inside_the_image_plus_border():
  rng = np.random.default_rng(4)
  xy = rng.uniform(-20, 90, (200, 2))
  anchors = np.concatenate([xy, xy + rng.uniform(1, 40, (200, 2))], 1).astype(np.float32)
  valid = rng.random(200) < 0.8
  h, w = 64, 48
  np.testing.assert_array_equal(mr.anchor_inside_flags(jnp.asarray(anchors), jnp.asarray(valid), jnp.array([h, w])),
                                valid)  # allowed_border -1: valid_flags only
  for border in (0, 5):
    want = [v and a[0] >= -border and a[1] >= -border and a[2] < w + border and a[3] < h + border
            for a, v in zip(anchors, valid)]
    got = mr.anchor_inside_flags(jnp.asarray(anchors), jnp.asarray(valid), jnp.array([h, w]), border)
    np.testing.assert_array_equal(np.asarray(got), want)
    assert 0 < sum(want) < valid.sum()


def test_rcnn_box_losses_follow_mmdets_l1_smooth_l1_and_giou():
  """BBoxHead.loss written out in numpy: CE over the sampled RoIs, the box loss of the positives' own
  class summed and divided by the number of sampled RoIs (GIoU on the decoded boxes, x weight)."""
  rng = np.random.default_rng(6)
  k, n = 3, 12
  rois = np.concatenate([rng.uniform(0, 40, (n, 2)), rng.uniform(0, 40, (n, 2)) + 50], 1).astype(np.float32)
  matched = (rois + rng.normal(0, 4, (n, 4))).astype(np.float32)
  positive = np.arange(n) < 5
  valid = np.arange(n) < 10
  labels = np.where(positive, rng.integers(0, k, n), k).astype(np.int32)
  stds = (0.05, 0.05, 0.1, 0.1)
  targets = np.asarray(box_ops.encode_boxes(jnp.asarray(rois), jnp.asarray(matched), mr.ZERO_MEANS, stds))
  samples = {key: jnp.asarray(v) for key, v in dict(
      rois=rois, valid=valid, positive=positive, labels=labels, matched=np.where(positive[:, None], matched, 0),
      box_targets=np.where(positive[:, None], targets, 0)).items()}
  logits = rng.normal(0, 1, (n, k + 1)).astype(np.float32)
  deltas = rng.normal(0, 0.3, (n, 4 * k)).astype(np.float32)
  own = deltas.reshape(n, k, 4)[np.arange(n), np.minimum(labels, k - 1)]
  log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  want_cls = -log_p[np.arange(n), labels][valid].sum() / valid.sum()
  diff = np.abs(own - targets)
  smooth = np.where(diff < 1, 0.5 * diff ** 2, diff - 0.5)
  decoded = np.asarray(box_ops.decode_boxes(jnp.asarray(rois), jnp.asarray(own), mr.ZERO_MEANS, stds))
  giou = np.asarray(box_ops.giou_loss(jnp.asarray(decoded), jnp.asarray(matched)))
  for box_loss, per_roi, weight in (('l1', diff.sum(1), 1.0), ('smooth_l1', smooth.sum(1), 1.0), ('giou', giou, 10.0)):
    loss_cls, loss_bbox, _ = mr.rcnn_box_losses(jnp.asarray(logits), jnp.asarray(deltas), samples, k,
                                                box_loss=box_loss, stds=stds, box_loss_weight=weight)
    np.testing.assert_allclose(float(loss_cls), want_cls, rtol=1e-5)
    np.testing.assert_allclose(float(loss_bbox), weight * per_roi[positive].sum() / valid.sum(), rtol=1e-5,
                               err_msg=box_loss)
  with pytest.raises(ValueError, match="box_loss must be"):
    mr.rcnn_box_losses(jnp.asarray(logits), jnp.asarray(deltas), samples, k, box_loss='iou')


def test_sample_rois_adds_the_gts_and_puts_positives_first():
  proposals = np.concatenate([ANCHORS, [[0, 0, 0, 0]]]).astype(np.float32)
  proposal_valid = np.array([True] * 8 + [False])
  labels = np.array([2, 0, 1], np.int32)
  s = mr.sample_rois(jax.random.PRNGKey(0), jnp.asarray(proposals), jnp.asarray(proposal_valid), jnp.asarray(GT),
                     jnp.asarray(labels), jnp.asarray(GT_VALID), num_classes=NUM_CLASSES, num_samples=16,
                     pos_fraction=0.5)
  s = {k: np.asarray(v) for k, v in s.items()}
  want = np_max_iou_assign(proposals[:8], GT[GT_VALID], 0.5, 0.5, 0.5, True)
  num_pos = 2 + int((want > 0).sum())  # the two valid gts, assigned to themselves, and the positive proposals
  num_neg = int((want == 0).sum())
  assert s['positive'][:num_pos].all() and not s['positive'][num_pos:].any()
  assert s['valid'][:num_pos + num_neg].all() and not s['valid'][num_pos + num_neg:].any()
  np.testing.assert_array_equal(s['labels'][num_pos:num_pos + num_neg], NUM_CLASSES)  # background is the last class
  # Every positive is a gt box or a proposal assigned to the gt it names; gts match themselves (zero deltas).
  positives = {tuple(r) for r in s['rois'][:num_pos]}
  assert {tuple(GT[0]), tuple(GT[1])} <= positives and tuple(GT[2]) not in positives
  for r, g, lab, t in zip(s['rois'][:num_pos], s['gt_index'][:num_pos], s['labels'][:num_pos],
                          s['box_targets'][:num_pos]):
    assert lab == labels[g]
    np.testing.assert_allclose(t, np_encode(r, GT[g], mr.RCNN_STDS), rtol=1e-5, atol=1e-5)
  assert not any((r == [0, 0, 0, 0]).all() for r in s['rois'][s['valid']])  # the invalid proposal is never drawn


def test_mask_targets_are_torchvisions_roi_align_of_each_gt_mask():
  rng = np.random.default_rng(0)
  mask_stride, num_gts = 2, 3
  # A 64x80 canvas at stride 2, as the data pipeline gives it: coverage 0..255 of each 2x2 block.
  masks = rng.choice(np.array([0, 64, 128, 191, 255], np.uint8), (num_gts, 32, 40))
  rois = np.array([[3, 5, 40, 33], [0, 0, 80, 64], [50.5, 20.25, 80, 64], [10, 60, 30, 64], [7, 7, 9, 12]],
                  np.float32)  # the last three touch the canvas' edges, where RoIAlign clamps
  gt_index = np.array([0, 1, 2, 0, 2], np.int32)
  ours = mr.mask_targets(jnp.asarray(masks), jnp.asarray(rois), jnp.asarray(gt_index), mask_stride=mask_stride)
  ref = torchvision.ops.roi_align(torch.from_numpy(masks[gt_index, None].astype(np.float32) / 255),
                                  [torch.from_numpy(r[None]) for r in rois], 28, 1 / mask_stride, 0, aligned=True)
  want = (ref[:, 0].numpy() >= 0.5).astype(np.float32)
  # bfloat16 rounds averages within ~0.002 of the threshold onto it; allow those pixels only.
  near = np.abs(ref[:, 0].numpy() - 0.5) < 4e-3
  assert ((np.asarray(ours) == want) | near).all()
  assert (np.asarray(ours) == want).mean() > 0.99


def test_detections_class_wise_nms_threshold_and_clipping():
  proposals = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [40, 0, 50, 10]], np.float32)
  probs = np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.02, 0.9, 0.08], [0.9, 0.05, 0.05]])
  found = mr.detections(jnp.asarray(np.log(probs)), jnp.zeros((4, 8)), jnp.asarray(proposals),
                        jnp.array([True, True, True, False]), jnp.array([25, 60]), max_detections=5)
  found = {k: np.asarray(v) for k, v in found.items()}
  # p0/p1 overlap (IoU 0.81): class 0 keeps p0, class 1 keeps p1; p2's class 0 is under 0.05; p3 is invalid.
  np.testing.assert_array_equal(found['valid'], [True, True, True, False, False])
  np.testing.assert_allclose(found['scores'][:3], [0.9, 0.7, 0.3], rtol=1e-5)
  np.testing.assert_array_equal(found['labels'][:3], [1, 0, 1])
  np.testing.assert_allclose(found['boxes'][:3], [[20, 20, 30, 25], [0, 0, 10, 10], [1, 1, 10, 10]])  # clipped to h 25
  assert (found['boxes'][3:] == 0).all() and (found['scores'][3:] == 0).all()


# ----------------------------------------------------------------------------------------------
# The tiny detector: it learns one batch, and its eval outputs are well formed.
# ----------------------------------------------------------------------------------------------


def _batch():
  rng = np.random.default_rng(0)
  images = 0.1 * rng.standard_normal((2, 64, 64, 3)).astype(np.float32)
  boxes = np.array([[[8, 8, 40, 36], [36, 30, 60, 62], [0, 0, 0, 0]],
                    [[4, 20, 28, 60], [0, 0, 0, 0], [0, 0, 0, 0]]], np.float32)
  labels = np.array([[0, 2, 0], [1, 0, 0]], np.int32)
  valid = np.array([[True, True, False], [True, False, False]])
  masks = np.zeros((2, 3, 32, 32), np.uint8)  # mask_stride 2 (0/255, the pipeline's uint8): ellipses in the boxes
  yy, xx = np.mgrid[0:32, 0:32] * 2 + 1.0
  for b in range(2):
    for g in range(3):
      if valid[b, g]:
        x1, y1, x2, y2 = boxes[b, g]
        inside = ((xx - (x1 + x2) / 2) / ((x2 - x1) / 2)) ** 2 + ((yy - (y1 + y2) / 2) / ((y2 - y1) / 2)) ** 2 < 1
        masks[b, g] = np.where(inside, 255, 0)
        images[b, int(y1):int(y2), int(x1):int(x2), labels[b, g]] += 1.0  # the class is the lit channel
  targets = dict(gt_boxes=boxes, gt_labels=labels, gt_valid=valid, gt_masks=masks)
  return jnp.asarray(images), jnp.array([[64, 64], [64, 56]], jnp.int32), jax.tree_util.tree_map(jnp.asarray, targets)


@pytest.fixture(scope='module')
def tiny():
  """The tiny detector, its initial variables and (one compilation) its eval outputs on the batch."""
  model = create_model('mask_rcnn_resnet50', **TINY)
  images, image_hw, targets = _batch()
  detections, variables = jax.jit(lambda: model.init_with_output(jax.random.PRNGKey(0), images, train=False,
                                                                 image_hw=image_hw))()
  return model, variables, detections, images, image_hw, targets


#: Layers that feed exactly one loss (the proposals carry no gradient): a gradient there is that loss's.
OWN_LAYER = {'loss_rpn_cls': ('rpn_head', 'rpn_cls'), 'loss_rpn_bbox': ('rpn_head', 'rpn_reg'),
             'loss_cls': ('bbox_head', 'fc_cls'), 'loss_bbox': ('bbox_head', 'fc_reg'),
             'loss_mask': ('mask_head', 'conv_logits')}


def test_one_batch_is_learnt_through_all_five_losses(tiny):
  model, variables, _, images, image_hw, targets = tiny
  optimizer = optax.adam(2e-3)
  key = jax.random.PRNGKey(1)  # the same samples each step, so that the losses compare

  def loss_fn(params):
    return model.apply({**variables, 'params': params}, images, train=True, image_hw=image_hw, targets=targets,
                       rngs={'sampling': key})

  @jax.jit
  def step(params, state):
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, state = optimizer.update(grads, state, params)
    return optax.apply_updates(params, updates), state, dict(metrics, total=loss), grads

  params = variables['params']
  state = optimizer.init(params)
  history = []
  for i in range(15):
    params, state, metrics, grads = step(params, state)
    history.append(jax.device_get(metrics))
    if i == 0:
      for term, (head, layer) in OWN_LAYER.items():  # each loss sends a gradient into its own layer ...
        assert float(optax.global_norm(grads[head][layer])) > 0, term
      for part in ('backbone', 'neck', 'rpn_head'):  # ... and they reach the shared layers below
        assert float(optax.global_norm(grads[part])) > 0, part
  first = history[0]
  assert first['rcnn_positives'] > 0 and first['rpn_positives'] > 0
  assert history[-1]['total'] < 0.6 * first['total'], (first['total'], history[-1]['total'])
  # The box losses move with the proposals (their positives change as the RPN learns): each term must fall
  # below 80% of its start during the run; the classification and mask terms must end there.
  for term in OWN_LAYER:
    values = np.array([h[term] for h in history])
    assert np.isfinite(values).all() and values.min() < 0.8 * values[0], (term, values)
  for term in ('loss_rpn_cls', 'loss_cls', 'loss_mask'):
    assert history[-1][term] < 0.8 * first[term], (term, first[term], history[-1][term])


def test_eval_outputs_shapes_and_validity(tiny):
  _, _, out, _, image_hw, _ = tiny
  chex.assert_shape((out['boxes'], out['scores'], out['labels'], out['valid'], out['masks']),
                    [(2, 10, 4), (2, 10), (2, 10), (2, 10), (2, 10, 28, 28)])
  assert out['labels'].dtype == jnp.int32 and out['valid'].dtype == jnp.bool_ and out['masks'].dtype == jnp.float32
  out = jax.device_get(out)
  valid = out['valid']
  assert valid.any()  # an untrained head scores about 1 / (classes + 1) = 0.25 > 0.05
  assert (out['scores'][valid] > 0.05).all() and (out['scores'][~valid] == 0).all()
  assert (out['boxes'][~valid] == 0).all() and (out['masks'][~valid] == 0).all()
  for b in range(2):  # valid detections come first, best first, inside the image
    n = valid[b].sum()
    assert valid[b, :n].all() and (np.diff(out['scores'][b, :n]) <= 0).all()
    h, w = np.asarray(image_hw[b])
    assert (out['boxes'][b, :n][:, [0, 2]] <= w).all() and (out['boxes'][b, :n][:, [1, 3]] <= h).all()
    assert (out['boxes'][b, :n][:, 2:] >= out['boxes'][b, :n][:, :2]).all()
  assert ((out['labels'] >= 0) & (out['labels'] < NUM_CLASSES)).all()
  assert ((out['masks'] >= 0) & (out['masks'] <= 1)).all() and out['masks'][valid].std() > 0


def test_bfloat16_detector_trains_and_detects():
  """dtype=bfloat16: the heads compute in bfloat16, boxes, losses and gradients stay float32 and finite."""
  model = create_model('mask_rcnn_resnet50', **TINY, dtype=jnp.bfloat16)
  images, image_hw, targets = _batch()
  variables = jax.jit(lambda: model.init(jax.random.PRNGKey(0), images, train=False, image_hw=image_hw))()

  def loss_fn(params):
    (loss, metrics), _ = model.apply({**variables, 'params': params}, images, train=True, image_hw=image_hw,
                                     targets=targets, rngs={'sampling': jax.random.PRNGKey(1)},
                                     mutable=['batch_stats'])
    return loss, metrics

  (loss, metrics), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(variables['params'])
  assert loss.dtype == jnp.float32 and np.isfinite(float(loss)) and float(metrics['loss_mask']) > 0
  assert all(np.isfinite(np.asarray(g, np.float32)).all() for g in jax.tree_util.tree_leaves(grads))
  assert float(optax.global_norm(grads['bbox_head'])) > 0
  found = jax.jit(lambda: model.apply(variables, images, train=False, image_hw=image_hw))()
  assert found['boxes'].dtype == jnp.float32 and found['masks'].dtype == jnp.float32
  assert np.asarray(found['valid']).any() and np.isfinite(np.asarray(found['boxes'])).all()


def test_box_only_detector_is_the_mask_rcnn_without_its_mask_branch(tiny):
  """with_mask=False (Faster R-CNN) on the Mask R-CNN's variables minus the mask head: the same boxes,
  scores and labels, no masks, and the same losses but loss_mask from the same samples."""
  model, variables, detections, images, image_hw, targets = tiny
  boxes_only = create_model('mask_rcnn_resnet50', **TINY, with_mask=False)
  params = {k: v for k, v in variables['params'].items() if k != 'mask_head'}
  shared = {**variables, 'params': params}
  found = jax.jit(lambda: boxes_only.apply(shared, images, train=False, image_hw=image_hw))()
  assert 'masks' not in found
  for k in ('labels', 'valid'):
    np.testing.assert_array_equal(np.asarray(found[k]), np.asarray(detections[k]), err_msg=k)
  for k in ('boxes', 'scores'):  # two compilations: float round-off only
    np.testing.assert_allclose(np.asarray(found[k]), np.asarray(detections[k]), rtol=1e-5, atol=1e-4, err_msg=k)
  key = {'sampling': jax.random.PRNGKey(3)}
  run = lambda m, v: jax.jit(lambda: m.apply(v, images, train=True, image_hw=image_hw, targets=targets, rngs=key,
                                            mutable=['batch_stats'])[0])()
  (total, metrics), (total_b, metrics_b) = run(model, variables), run(boxes_only, shared)
  assert 'loss_mask' not in metrics_b and float(metrics['loss_mask']) > 0
  for k in metrics_b:
    np.testing.assert_allclose(float(metrics_b[k]), float(metrics[k]), rtol=1e-6, err_msg=k)
  np.testing.assert_allclose(float(total_b), float(total - metrics['loss_mask']), rtol=1e-5)
  init = jax.eval_shape(lambda: boxes_only.init(jax.random.PRNGKey(0), images, train=False))
  assert set(init['params']) == set(params)


# ----------------------------------------------------------------------------------------------
# The registered models at full size (traced only).
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize('name', ['mask_rcnn_resnet50', 'mask_rcnn_swin_t'])
def test_full_size_train_and_eval_traces_and_parameter_count(name):
  model, size, gts = create_model(name), 1344, 20
  x = jnp.zeros((1, size, size, 3))
  out, variables = jax.eval_shape(lambda: model.init_with_output(jax.random.PRNGKey(0), x, train=False))
  assert count_params(variables['params']) == model_info(name).params
  chex.assert_shape((out['boxes'], out['masks']), [(1, 100, 4), (1, 100, 28, 28)])
  targets = dict(gt_boxes=jax.ShapeDtypeStruct((1, gts, 4), jnp.float32),
                 gt_labels=jax.ShapeDtypeStruct((1, gts), jnp.int32),
                 gt_masks=jax.ShapeDtypeStruct((1, gts, size // 4, size // 4), jnp.uint8),
                 gt_valid=jax.ShapeDtypeStruct((1, gts), jnp.bool_))
  loss, metrics = jax.eval_shape(
      lambda v, t: model.apply(v, x, train=True, targets=t, rngs={'sampling': jax.random.PRNGKey(0),
                                                                  'drop_path': jax.random.PRNGKey(1)}),
      variables, targets)
  assert loss.shape == () and loss.dtype == jnp.float32
  assert {'loss_rpn_cls', 'loss_rpn_bbox', 'loss_cls', 'loss_bbox', 'loss_mask'} <= set(metrics)
