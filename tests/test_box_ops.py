"""lgvit.models.box_ops against independent references: torchvision's ops (RoIAlign, NMS, IoU),
torch's grid_sample, and plain numpy/python transcriptions of mmdetection's formulas and loops."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lgvit.models import box_ops

torch = pytest.importorskip('torch')
torchvision = pytest.importorskip('torchvision')

# Jitted once for the module: eager RoIAlign would dispatch (and compile) op by op.
_roi_align = jax.jit(box_ops.roi_align, static_argnames=('output_size', 'spatial_scale',
                                                         'sampling_ratio', 'aligned', 'max_samples'))


def _random_boxes(rng, n, extent=100.0, min_size=1.0, max_size=40.0):
  x1 = rng.uniform(-0.1 * extent, extent, n)
  y1 = rng.uniform(-0.1 * extent, extent, n)
  w = rng.uniform(min_size, max_size, n)
  h = rng.uniform(min_size, max_size, n)
  return np.stack([x1, y1, x1 + w, y1 + h], axis=1).astype(np.float32)


def _clustered_boxes(rng, n, clusters=12, extent=200.0):
  """Boxes jittered around a few centres, so NMS suppresses plenty (and chains of suppression)."""
  centres = _random_boxes(rng, clusters, extent, 10.0, 60.0)
  picks = centres[rng.integers(0, clusters, n)]
  sizes = np.concatenate([picks[:, 2:] - picks[:, :2]] * 2, axis=1)
  return (picks + rng.normal(0, 0.15, (n, 4)) * sizes).astype(np.float32)


# --------------------------------------------------------------------------------------------
# IoU, coder, anchors.
# --------------------------------------------------------------------------------------------


def test_box_iou_matches_torchvision_and_broadcasts():
  rng = np.random.default_rng(0)
  a, b = _random_boxes(rng, 23), _random_boxes(rng, 17)
  ref = torchvision.ops.box_iou(torch.from_numpy(a), torch.from_numpy(b)).numpy()
  np.testing.assert_allclose(box_ops.box_iou(a, b), ref, rtol=1e-6, atol=1e-7)
  assert (ref > 0).sum() > 10  # the boxes do overlap
  batched = box_ops.box_iou(np.stack([a, a[::-1]]), b[None])
  np.testing.assert_allclose(batched[1], ref[::-1], rtol=1e-6, atol=1e-7)
  # Degenerate boxes: the eps-clamped union gives 0, not NaN (mmdetection's bbox_overlaps).
  empty = np.array([[5., 5., 5., 5.]], np.float32)
  assert float(box_ops.box_iou(empty, empty)[0, 0]) == 0.0


def _np_bbox2delta(p, g, means, stds):
  p, g = p.astype(np.float64), g.astype(np.float64)
  pw, ph = p[:, 2] - p[:, 0], p[:, 3] - p[:, 1]
  gw, gh = g[:, 2] - g[:, 0], g[:, 3] - g[:, 1]
  px, py = p[:, 0] + 0.5 * pw, p[:, 1] + 0.5 * ph
  gx, gy = g[:, 0] + 0.5 * gw, g[:, 1] + 0.5 * gh
  d = np.stack([(gx - px) / pw, (gy - py) / ph, np.log(gw / pw), np.log(gh / ph)], axis=1)
  return (d - np.array(means)) / np.array(stds)


def _np_delta2bbox(r, d, means, stds, max_shape, wh_ratio_clip=16 / 1000):
  r, d = r.astype(np.float64), d.astype(np.float64) * np.array(stds) + np.array(means)
  limit = abs(math.log(wh_ratio_clip))
  out = np.zeros_like(r)
  for i in range(len(r)):
    w, h = r[i, 2] - r[i, 0], r[i, 3] - r[i, 1]
    cx, cy = r[i, 0] + w / 2, r[i, 1] + h / 2
    dw, dh = min(max(d[i, 2], -limit), limit), min(max(d[i, 3], -limit), limit)
    nx, ny, nw, nh = cx + d[i, 0] * w, cy + d[i, 1] * h, w * math.exp(dw), h * math.exp(dh)
    box = [nx - nw / 2, ny - nh / 2, nx + nw / 2, ny + nh / 2]
    if max_shape is not None:
      box = [min(max(v, 0), max_shape[1 - k % 2]) for k, v in enumerate(box)]
    out[i] = box
  return out


@pytest.mark.parametrize('means,stds', [((0, 0, 0, 0), (1, 1, 1, 1)),
                                        ((0.1, -0.2, 0.0, 0.05), (0.1, 0.1, 0.2, 0.2))])
def test_encode_decode_match_mmdet_formulas(means, stds):
  rng = np.random.default_rng(1)
  proposals, gts = _random_boxes(rng, 40), _random_boxes(rng, 40)
  deltas = box_ops.encode_boxes(proposals, gts, means, stds)
  np.testing.assert_allclose(deltas, _np_bbox2delta(proposals, gts, means, stds), rtol=1e-5,
                             atol=1e-5)
  # Round trip (no clipping): decode(encode(p, g)) == g.
  np.testing.assert_allclose(box_ops.decode_boxes(proposals, deltas, means, stds), gts, rtol=1e-5,
                             atol=1e-3)
  # Wild deltas exercise the dw/dh clamp, and max_shape the clipping.
  wild = rng.normal(0, 3, (40, 4)).astype(np.float32)
  wild[:4, 2:] = [[30, -30], [-30, 30], [25, 25], [-25, -25]]  # beyond the clamp even at std 0.2
  for max_shape in (None, (60, 80)):
    ours = jax.jit(lambda r, d: box_ops.decode_boxes(r, d, means, stds, max_shape))(proposals, wild)
    ref = _np_delta2bbox(proposals, wild, means, stds, max_shape)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-3)
  assert np.abs(wild[:, 2:] * np.array(stds[2:]) + np.array(means[2:])).max() > abs(math.log(0.016))
  # bf16 inputs are decoded in float32.
  assert box_ops.decode_boxes(proposals.astype(jnp.bfloat16), wild).dtype == jnp.float32


def test_anchor_grid_matches_mmdet_formula():
  # mmdetection's stride-4 base anchors for scale 8 and ratios (0.5, 1, 2): w = 4 * 8 / sqrt(r),
  # h = 4 * 8 * sqrt(r), centred at 0.
  anchors = np.asarray(box_ops.anchor_grid((3, 5), 4))
  np.testing.assert_allclose(anchors[:3], [[-22.6274, -11.3137, 22.6274, 11.3137],
                                           [-16., -16., 16., 16.],
                                           [-11.3137, -22.6274, 11.3137, 22.6274]], atol=1e-4)
  np.testing.assert_allclose(anchors[3:6], anchors[:3] + [4, 0, 4, 0])  # next x first
  np.testing.assert_allclose(anchors[15:18], anchors[:3] + [0, 4, 0, 4])  # then the next row
  for hw, stride, scales, ratios, offset in [((3, 5), 4, (8,), (0.5, 1.0, 2.0), 0.0),
                                             ((4, 2), 16, (4, 8), (0.5, 2.0), 0.5)]:
    ref = []
    for y in range(hw[0]):
      for x in range(hw[1]):
        for r in ratios:  # ratios slow, scales fast (scale_major)
          for s in scales:
            w, h = stride * s / math.sqrt(r), stride * s * math.sqrt(r)
            cx, cy = x * stride + offset * stride, y * stride + offset * stride
            ref.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
    ours = box_ops.anchor_grid(hw, stride, scales, ratios, offset)
    assert ours.shape == (hw[0] * hw[1] * len(scales) * len(ratios), 4)
    np.testing.assert_allclose(ours, np.array(ref), rtol=1e-6, atol=1e-4)


# --------------------------------------------------------------------------------------------
# NMS.
# --------------------------------------------------------------------------------------------


def _valid_prefix(indices, valid):
  indices, valid = np.asarray(indices), np.asarray(valid)
  count = int(valid.sum())
  assert valid[:count].all() and not valid[count:].any()
  return indices[:count]


@pytest.mark.parametrize('threshold,block_size', [(0.5, 256), (0.3, 32), (0.7, 7)])
def test_nms_matches_torchvision(threshold, block_size):
  rng = np.random.default_rng(2)
  boxes = _clustered_boxes(rng, 300)
  scores = rng.permutation(300).astype(np.float32) / 300  # distinct: no ties
  ref = torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), threshold).numpy()
  assert 12 < len(ref) < 250
  run = jax.jit(box_ops.nms, static_argnames=('max_output', 'block_size'))
  ours = _valid_prefix(*run(boxes, scores, threshold, max_output=300, block_size=block_size))
  np.testing.assert_array_equal(ours, ref)
  # A short output is the first max_output of the same list.
  short = _valid_prefix(*run(boxes, scores, threshold, max_output=10, block_size=block_size))
  np.testing.assert_array_equal(short, ref[:10])
  # score_threshold drops boxes first: the same as torchvision on the survivors.
  keep = scores > 0.4
  ref_kept = np.flatnonzero(keep)[torchvision.ops.nms(torch.from_numpy(boxes[keep]),
                                                      torch.from_numpy(scores[keep]),
                                                      threshold).numpy()]
  ours = run(boxes, scores, threshold, max_output=300, score_threshold=0.4, block_size=block_size)
  np.testing.assert_array_equal(_valid_prefix(*ours), ref_kept)


def test_nms_vmaps_over_images():
  rng = np.random.default_rng(3)
  boxes = np.stack([_clustered_boxes(rng, 120) for _ in range(3)])
  scores = rng.uniform(size=(3, 120)).astype(np.float32)
  indices, valid = jax.vmap(lambda b, s: box_ops.nms(b, s, 0.5, 64, block_size=32))(boxes, scores)
  for i in range(3):
    ref = torchvision.ops.nms(torch.from_numpy(boxes[i]), torch.from_numpy(scores[i]), 0.5).numpy()
    np.testing.assert_array_equal(_valid_prefix(indices[i], valid[i]), ref[:64])


def test_batched_nms_matches_torchvision():
  rng = np.random.default_rng(4)
  boxes = _clustered_boxes(rng, 400)
  scores = rng.permutation(400).astype(np.float32) / 400
  classes = rng.integers(0, 5, 400)
  ref = torchvision.ops.batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores),
                                    torch.from_numpy(classes), 0.5).numpy()
  plain = torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), 0.5).numpy()
  assert len(ref) > len(plain)  # the classes matter
  ours = jax.jit(box_ops.batched_nms, static_argnames='max_output')(boxes, scores, classes, 0.5,
                                                                     max_output=400)
  np.testing.assert_array_equal(_valid_prefix(*ours), ref)


# --------------------------------------------------------------------------------------------
# RoIAlign.
# --------------------------------------------------------------------------------------------


def _roi_set(rng, height, width, scale):
  """RoIs (image pixels) inside, across the borders, wholly outside, tiny and empty."""
  ih, iw = height / scale, width / scale
  inside = _random_boxes(rng, 12, min(ih, iw) * 0.8, 2.0, min(ih, iw) * 0.5)
  special = np.array([[-10, -10, 20, 20], [iw - 15, ih - 15, iw + 10, ih + 12],
                      [-30, 5, -5, 25], [iw + 1, 0, iw + 20, ih], [0, 0, iw, ih],
                      [3.3, 4.4, 3.9, 5.0], [7, 7, 7, 7], [10, 12, 8, 20],
                      [0.5, ih - 1, iw - 0.5, ih + 3]], np.float32)
  return np.concatenate([inside, special]).astype(np.float32)


def _torch_roi_align(features_hwc, rois, out, scale, sampling_ratio, aligned):
  feats = torch.from_numpy(np.ascontiguousarray(features_hwc.transpose(2, 0, 1)[None]))
  boxes = torch.cat([torch.zeros(len(rois), 1), torch.from_numpy(rois)], dim=1)
  pooled = torchvision.ops.roi_align(feats, boxes, out, scale, sampling_ratio, aligned)
  return pooled.numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize('sampling_ratio', [0, 2])
@pytest.mark.parametrize('aligned', [True, False])
def test_roi_align_matches_torchvision(sampling_ratio, aligned):
  rng = np.random.default_rng(5)
  features = rng.normal(size=(13, 17, 3)).astype(np.float32)
  rois = _roi_set(rng, 13, 17, 0.25)
  ours = _roi_align(features, rois, output_size=5, spatial_scale=0.25,
                    sampling_ratio=sampling_ratio, aligned=aligned)
  ref = _torch_roi_align(features, rois, 5, 0.25, sampling_ratio, aligned)
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
  assert np.abs(ref).sum(axis=(1, 2, 3)).min() < 1e-6  # some RoI samples nothing (outside/empty)


def test_roi_align_gradient_and_bf16():
  rng = np.random.default_rng(6)
  features = rng.normal(size=(9, 11, 2)).astype(np.float32)
  rois = _roi_set(rng, 9, 11, 0.5)
  cotangent = rng.normal(size=(len(rois), 4, 4, 2)).astype(np.float32)
  pool = lambda f: _roi_align(f, rois, output_size=4, spatial_scale=0.5)
  grad = jax.jit(jax.grad(lambda f: jnp.sum(pool(f) * cotangent)))(features)
  feats = torch.from_numpy(features.transpose(2, 0, 1)[None].copy()).requires_grad_()
  boxes = torch.cat([torch.zeros(len(rois), 1), torch.from_numpy(rois)], dim=1)
  pooled = torchvision.ops.roi_align(feats, boxes, 4, 0.5, 0, True)
  (pooled * torch.from_numpy(cotangent.transpose(0, 3, 1, 2).copy())).sum().backward()
  np.testing.assert_allclose(grad, feats.grad[0].numpy().transpose(1, 2, 0), rtol=1e-4, atol=1e-5)
  # bf16 features: bf16 output, accumulated in float32 (so only the inputs' rounding shows).
  low = pool(features.astype(jnp.bfloat16))
  assert low.dtype == jnp.bfloat16
  np.testing.assert_allclose(low.astype(np.float32), pool(features), atol=3e-2)


def test_roi_align_caps_adaptive_sampling_at_max_samples():
  """The documented deviation: beyond max_samples * out feature pixels the adaptive grid is capped,
  which for a RoI large on both axes is torchvision with sampling_ratio=max_samples."""
  rng = np.random.default_rng(7)
  features = rng.normal(size=(30, 30, 2)).astype(np.float32)
  big = np.array([[0., 0., 28., 26.], [1.5, 2.5, 29., 27.]], np.float32)  # 26-28 px, out 3 -> 9-10
  ours = _roi_align(features, big, output_size=3, spatial_scale=1.0, max_samples=4)
  np.testing.assert_allclose(ours, _torch_roi_align(features, big, 3, 1.0, 4, True), rtol=1e-5,
                             atol=1e-5)
  assert np.abs(ours - _torch_roi_align(features, big, 3, 1.0, 0, True)).max() > 1e-3
  # A large enough max_samples is torchvision's adaptive grid again.
  np.testing.assert_allclose(_roi_align(features, big, output_size=3, spatial_scale=1.0,
                                        max_samples=10),
                             _torch_roi_align(features, big, 3, 1.0, 0, True), rtol=1e-5, atol=1e-5)


def test_multilevel_roi_align_matches_mmdet_mapping():
  rng = np.random.default_rng(8)
  strides, image = (4, 8, 16, 32), 256
  features = [rng.normal(size=(2, image // s, image // s, 3)).astype(np.float32) for s in strides]
  sides = np.array([10, 30, 55, 60, 100, 120, 200, 250, 400, 500, 700], np.float32)
  rois = []
  for _ in range(2):
    x1, y1 = rng.uniform(-20, 200, (2, len(sides)))
    aspect = rng.uniform(0.5, 2.0, len(sides))
    rois.append(np.stack([x1, y1, x1 + sides * aspect, y1 + sides / aspect], axis=1))
  rois = np.stack(rois).astype(np.float32)
  ours = jax.jit(lambda f, r: box_ops.multilevel_roi_align(f, r, 7))(features, rois)
  assert ours.shape == (2, len(sides), 7, 7, 3)
  levels_seen = set()
  for b in range(2):
    for r in range(len(sides)):
      box = torch.from_numpy(rois[b, r])
      scale = torch.sqrt((box[2] - box[0]) * (box[3] - box[1]))
      level = int(torch.floor(torch.log2(scale / 56 + 1e-6)).clamp(0, 3))
      levels_seen.add(level)
      ref = _torch_roi_align(features[level][b], rois[b, r:r + 1], 7, 1 / strides[level], 0, True)
      np.testing.assert_allclose(ours[b, r], ref[0], rtol=1e-5, atol=1e-5)
  assert levels_seen == {0, 1, 2, 3}
  np.testing.assert_array_equal(box_ops.map_roi_levels(rois, 4)[0],
                                np.clip(np.floor(np.log2(sides / 56 + 1e-6)), 0, 3))


# --------------------------------------------------------------------------------------------
# Mask pasting.
# --------------------------------------------------------------------------------------------


def _torch_paste(masks, boxes, height, width):
  """mmdetection's _do_paste_mask with skip_empty=False, transcribed in torch."""
  masks, boxes = torch.from_numpy(masks)[:, None], torch.from_numpy(boxes)
  x0, y0, x1, y1 = torch.split(boxes, 1, dim=1)
  ys = (torch.arange(height, dtype=torch.float32) + 0.5 - y0) / (y1 - y0) * 2 - 1
  xs = (torch.arange(width, dtype=torch.float32) + 0.5 - x0) / (x1 - x0) * 2 - 1
  xs[torch.isinf(xs)] = 0
  ys[torch.isinf(ys)] = 0
  n = masks.shape[0]
  grid = torch.stack([xs[:, None, :].expand(n, height, width),
                      ys[:, :, None].expand(n, height, width)], dim=3)
  return torch.nn.functional.grid_sample(masks, grid, align_corners=False)[:, 0].numpy()


def test_paste_masks_matches_grid_sample():
  rng = np.random.default_rng(9)
  masks = rng.uniform(size=(6, 7, 5)).astype(np.float32)
  boxes = np.array([[3.2, 4.7, 20.5, 18.1], [-5, -3, 12, 9], [30, 20, 50, 33],
                    [0, 0, 40, 30], [10, 10, 10.5, 11], [10, 5, 10, 15]], np.float32)
  ref = _torch_paste(masks, boxes, 30, 40)
  probs = jax.jit(box_ops.paste_mask_probabilities, static_argnums=2)(masks, boxes, (30, 40))
  np.testing.assert_allclose(probs, ref, atol=1e-5)
  binary = jax.jit(box_ops.paste_masks, static_argnums=2)(masks, boxes, (30, 40))
  assert binary.dtype == jnp.bool_ and binary.shape == (6, 30, 40)
  decided = np.abs(ref - 0.5) > 1e-5
  np.testing.assert_array_equal(np.asarray(binary)[decided], (ref >= 0.5)[decided])
  assert 100 < (ref >= 0.5).sum() < ref.size / 2


# --------------------------------------------------------------------------------------------
# Assigner and sampler.
# --------------------------------------------------------------------------------------------


def _mmdet_assign(overlaps, pos_thr, neg_thr, min_pos, low_quality, assign_all):
  """MaxIoUAssigner.assign_wrt_overlaps as mmdetection writes it; overlaps is [gts, boxes]."""
  num_gts, num_boxes = overlaps.shape
  assigned = np.full(num_boxes, -1)
  if num_gts == 0:
    return np.zeros(num_boxes, int), np.zeros(num_boxes)
  max_iou, best = overlaps.max(axis=0), overlaps.argmax(axis=0)
  gt_max, gt_best = overlaps.max(axis=1), overlaps.argmax(axis=1)
  for j in range(num_boxes):
    if 0 <= max_iou[j] < neg_thr:
      assigned[j] = 0
    if max_iou[j] >= pos_thr:
      assigned[j] = best[j] + 1
  if low_quality:
    for i in range(num_gts):
      if gt_max[i] >= min_pos:
        if assign_all:
          for j in range(num_boxes):
            if overlaps[i, j] == gt_max[i]:
              assigned[j] = i + 1
        else:
          assigned[gt_best[i]] = i + 1
  return assigned, max_iou


@pytest.mark.parametrize('low_quality,assign_all', [(True, True), (True, False), (False, True)])
def test_max_iou_assign_matches_mmdet_loop(low_quality, assign_all):
  rng = np.random.default_rng(10)
  boxes = _random_boxes(rng, 60, 80, 5, 40)
  boxes[40:45] = boxes[35:40]  # duplicates: several boxes reach a gt's best IoU
  gts = _random_boxes(rng, 8, 80, 5, 40)
  gts[3] = boxes[12]  # a perfect match
  boxes[50:58] = gts + rng.normal(0, 1.5, (8, 4))  # near matches: positives at every threshold
  gt_valid = np.array([1, 1, 0, 1, 1, 1, 0, 1], bool)
  box_valid = rng.uniform(size=60) > 0.1
  run = jax.jit(box_ops.max_iou_assign, static_argnums=(6, 7))
  for pos_thr, neg_thr, min_pos in [(0.7, 0.3, 0.3), (0.5, 0.5, 0.5), (0.5, 0.4, 0.0)]:
    assigned, max_iou = run(boxes, gts, gt_valid, pos_thr, neg_thr, min_pos, low_quality,
                            assign_all, box_valid)
    vb, vg = np.flatnonzero(box_valid), np.flatnonzero(gt_valid)
    overlaps = np.asarray(box_ops.box_iou(gts[vg], boxes[vb]))  # mmdet's [gts, boxes]
    ref, ref_iou = _mmdet_assign(overlaps, pos_thr, neg_thr, min_pos, low_quality, assign_all)
    expected = np.full(60, -1)
    expected[vb] = np.where(ref > 0, vg[np.maximum(ref - 1, 0)] + 1, ref)  # back to padded ids
    np.testing.assert_array_equal(assigned, expected)
    np.testing.assert_allclose(np.asarray(max_iou)[vb], ref_iou, rtol=1e-6)
    assert (expected > 0).sum() >= 3 and (expected == 0).sum() > 10
  # No valid gt: every (valid) box is negative.
  assigned, max_iou = run(boxes, gts, np.zeros(8, bool), 0.7, 0.3, 0.3, low_quality, assign_all,
                          box_valid)
  np.testing.assert_array_equal(assigned, np.where(box_valid, 0, -1))
  assert float(jnp.abs(max_iou).max()) == 0.0


@pytest.mark.parametrize('num_pos,num_neg', [(10, 500), (200, 500), (300, 50), (0, 40)])
def test_sample_random_counts_and_membership(num_pos, num_neg):
  rng = np.random.default_rng(11)
  n = num_pos + num_neg + 30
  assigned = np.concatenate([rng.integers(1, 5, num_pos), np.zeros(num_neg, int),
                             -np.ones(30, int)])
  perm = rng.permutation(n)
  assigned = assigned[perm].astype(np.int32)
  valid = np.ones(n, bool)
  valid[rng.choice(n, 5, replace=False)] = False
  pos_ok, neg_ok = (assigned > 0) & valid, (assigned == 0) & valid
  run = jax.jit(box_ops.sample_random, static_argnums=(2, 3))
  pos, neg = run(jax.random.PRNGKey(0), assigned, 256, 0.5, valid)
  pos, neg = np.asarray(pos), np.asarray(neg)
  expected_pos = min(pos_ok.sum(), 128)
  assert pos.sum() == expected_pos
  assert neg.sum() == min(neg_ok.sum(), 256 - expected_pos)
  assert not (pos & ~pos_ok).any() and not (neg & ~neg_ok).any()
  pos2, _ = run(jax.random.PRNGKey(1), assigned, 256, 0.5, valid)
  if pos_ok.sum() > 128:
    assert (np.asarray(pos2) != pos).any()  # another key, another subset


def test_sample_random_is_uniform():
  assigned = np.array([1] * 20 + [0] * 30, np.int32)
  keys = jax.random.split(jax.random.PRNGKey(3), 2000)
  pos, neg = jax.vmap(lambda k: box_ops.sample_random(k, assigned, 10, 0.25))(keys)
  assert (np.asarray(pos).sum(1) == 2).all() and (np.asarray(neg).sum(1) == 8).all()
  # Each positive is drawn with probability 2/20, each negative 8/30 (binomial over 2000 draws).
  np.testing.assert_allclose(np.asarray(pos)[:, :20].mean(0), 0.1, atol=0.045)
  np.testing.assert_allclose(np.asarray(neg)[:, 20:].mean(0), 8 / 30, atol=0.06)


def test_giou_loss_is_torchvisions_and_smooth_l1_is_torchs():
  rng = np.random.default_rng(5)
  xy = rng.uniform(0, 50, (64, 2, 2))
  wh = rng.uniform(0.5, 40, (64, 2, 2))
  pred, target = (np.concatenate([xy[:, i], xy[:, i] + wh[:, i]], -1).astype(np.float32) for i in range(2))
  pred[:4] = target[:4]  # identical boxes: loss 0
  pred[4, 2:] = pred[4, :2]  # a degenerate prediction stays finite
  got = np.asarray(box_ops.giou_loss(jnp.asarray(pred), jnp.asarray(target)))
  want = torchvision.ops.generalized_box_iou_loss(torch.from_numpy(pred), torch.from_numpy(target)).numpy()
  np.testing.assert_allclose(got, want, atol=1e-5)
  assert np.all(np.isfinite(got)) and np.allclose(got[:4], 0, atol=1e-6) and (got > 1).any()
  diff = rng.normal(0, 0.3, (100,)).astype(np.float32)
  for beta in (1.0, 1 / 9):
    want = torch.nn.functional.smooth_l1_loss(torch.from_numpy(diff), torch.zeros(100), reduction='none', beta=beta)
    np.testing.assert_allclose(np.asarray(box_ops.smooth_l1(jnp.asarray(diff), beta)), want.numpy(), rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(box_ops.smooth_l1(jnp.asarray(diff), 0.0)), np.abs(diff))
