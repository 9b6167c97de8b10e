"""lgvit.models.cascade_rcnn: the per-stage functions against numpy (detectron2's relabelling, mmdet's
regress_by_class), the gradient scale, BatchNorm over real RoIs only, a one-stage cascade against the
Mask R-CNN it generalises, the three-stage test path against a second formulation in numpy (mmdet's
logit averaging and detectron2's probability averaging), a tiny cascade that learns a batch through every
stage, and the registered counts against NomMer Table 2 (traced only)."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_mask_rcnn import TINY, _batch, np_iou

from lgvit.models import create_model, layers, model_info
from lgvit.models import cascade_rcnn as cr
from lgvit.models import mask_rcnn as mr
from lgvit.models.layers import count_params

NUM_CLASSES = TINY['num_classes']


def np_decode(rois, deltas, stds, hw):
  """mmdet delta2bbox with the wh clamp and the clip to (h, w), in float64."""
  rois, d = np.asarray(rois, np.float64), np.asarray(deltas, np.float64) * np.asarray(stds)
  clamp = abs(np.log(16 / 1000))
  dw, dh = np.clip(d[:, 2], -clamp, clamp), np.clip(d[:, 3], -clamp, clamp)
  w, h = rois[:, 2] - rois[:, 0], rois[:, 3] - rois[:, 1]
  cx, cy = rois[:, 0] + 0.5 * w + d[:, 0] * w, rois[:, 1] + 0.5 * h + d[:, 1] * h
  w, h = w * np.exp(dw), h * np.exp(dh)
  out = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
  return np.clip(out, 0, [hw[1], hw[0], hw[1], hw[0]])


def np_softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_label_rois_is_detectron2s_matcher_with_positives_first():
  rng = np.random.default_rng(0)
  gts = np.array([[10, 10, 40, 40], [30, 20, 70, 60], [0, 0, 0, 0]], np.float32)
  rois = (gts[rng.integers(0, 2, 40)] + rng.normal(0, 5, (40, 4))).astype(np.float32)  # jittered gts
  rois[:, 2:] = np.maximum(rois[:, 2:], rois[:, :2] + 1)
  gt_valid, labels = np.array([True, True, False]), np.array([2, 1, 0], np.int32)
  roi_valid = rng.uniform(size=40) > 0.2
  out = jax.device_get(cr.label_rois(rois, roi_valid, gts, labels, gt_valid, num_classes=NUM_CLASSES,
                                     iou_threshold=0.6, stds=cr.STAGE_STDS[1]))
  iou = np_iou(rois, gts[:2])
  want_pos = roi_valid & (iou.max(1) >= 0.6)
  assert want_pos.sum() >= 3  # the case exercises positives
  order = np.argsort(~want_pos, kind='stable')
  np.testing.assert_array_equal(out['rois'], rois[order])
  np.testing.assert_array_equal(out['positive'], want_pos[order])
  np.testing.assert_array_equal(out['valid'], roi_valid[order])
  best = iou.argmax(1)[order]
  np.testing.assert_array_equal(out['labels'], np.where(want_pos[order], labels[best], NUM_CLASSES))
  pos = want_pos[order]
  np.testing.assert_array_equal(out['matched'][pos], gts[best[pos]])
  w = rois[order][pos, 2:] - rois[order][pos, :2]
  c = rois[order][pos, :2] + w / 2
  g = gts[best[pos]]
  gw, gc = g[:, 2:] - g[:, :2], g[:, :2] + (g[:, 2:] - g[:, :2]) / 2
  want_targets = np.concatenate([(gc - c) / w, np.log(gw / w)], 1) / np.asarray(cr.STAGE_STDS[1])
  np.testing.assert_allclose(out['box_targets'][pos], want_targets, rtol=1e-4, atol=1e-4)
  assert not out['is_gt'].any() and (out['box_targets'][~pos] == 0).all()


@pytest.mark.parametrize('agnostic', [False, True])
def test_regress_by_class_decodes_the_labels_deltas_and_clips(agnostic):
  rng = np.random.default_rng(1)
  rois = np.array([[5, 5, 30, 40], [20, 10, 60, 30], [0, 0, 8, 8]], np.float32)
  deltas = rng.normal(0, 3, (3, 4 if agnostic else 4 * NUM_CLASSES)).astype(np.float32)
  labels = np.array([2, 0, NUM_CLASSES], np.int32)  # background picks the last class, as class_deltas
  hw = np.array([48, 56], np.int32)
  got = cr.regress_by_class(rois, deltas, labels, hw, num_classes=NUM_CLASSES, stds=cr.STAGE_STDS[0])
  picked = deltas if agnostic else deltas.reshape(3, NUM_CLASSES, 4)[np.arange(3), np.minimum(labels, NUM_CLASSES - 1)]
  np.testing.assert_allclose(np.asarray(got), np_decode(rois, picked, cr.STAGE_STDS[0], hw), rtol=1e-5, atol=1e-4)


def test_scale_gradient_passes_the_value_and_scales_the_gradient():
  x = jnp.array([1.0, -2.0, 3.0])
  f = lambda v: jnp.sum(cr.scale_gradient(v, 1 / 3) ** 2)
  np.testing.assert_allclose(np.asarray(cr.scale_gradient(x, 1 / 3)), np.asarray(x))
  np.testing.assert_allclose(np.asarray(jax.grad(f)(x)), np.asarray(2 * x / 3), rtol=1e-6)


def test_batchnorm_mask_takes_the_statistics_of_the_real_rows_only():
  rng = np.random.default_rng(2)
  x = rng.normal(2.0, 3.0, (6, 2, 2, 4)).astype(np.float32)
  keep = np.array([True, False, True, True, False, True])
  x[~keep] = 1e3  # padding slots that would dominate unmasked statistics
  bn = layers.BatchNorm()
  variables = bn.init(jax.random.PRNGKey(0), x, train=False)
  y, updates = bn.apply(variables, x, train=True, mask=keep[:, None, None], mutable=['batch_stats'])
  real = x[keep].reshape(-1, 4).astype(np.float64)
  mean, var = real.mean(0), real.var(0)
  np.testing.assert_allclose(np.asarray(y)[keep], ((x[keep] - mean) / np.sqrt(var + 1e-5)), rtol=1e-4, atol=1e-4)
  n = real.shape[0]
  np.testing.assert_allclose(np.asarray(updates['batch_stats']['mean']), 0.1 * mean, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(updates['batch_stats']['var']), 0.9 + 0.1 * var * n / (n - 1), rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# The tiny detectors.
# ----------------------------------------------------------------------------------------------

#: The detectron2 chaining with ResNeSt's normalised heads (CoTNet's cascade).
DETECTRON2 = dict(cr.DETECTRON2_CASCADE, **mr.DETECTRON2_HEADS)


@pytest.fixture(scope='module')
def batch():
  return _batch()


def _init(model, batch):
  images, image_hw, _ = batch
  return jax.jit(lambda: model.init(jax.random.PRNGKey(0), images, train=False, image_hw=image_hw))()


def _train(model, variables, batch, key=1):
  images, image_hw, targets = batch
  rngs = {'sampling': jax.random.PRNGKey(key)}
  return jax.jit(lambda v: model.apply(v, images, train=True, image_hw=image_hw, targets=targets, rngs=rngs,
                                       mutable=['batch_stats'])[0])(variables)


def test_one_stage_cascade_is_the_mask_rcnn(batch):
  """A cascade of one stage at Mask R-CNN's settings, on the Mask R-CNN's variables (heads renamed): the
  same detections and the same losses from the same samples."""
  images, image_hw, _ = batch
  mask = create_model('mask_rcnn_resnet50', **TINY)
  one = create_model('cascade_mask_rcnn_resnet50', **TINY, stage_ious=(0.5,), stage_stds=(mr.RCNN_STDS,),
                     stage_loss_weights=(1.0,), rpn_smooth_l1_beta=0.0, rpn_allowed_border=-1,
                     rpn_train_max_proposals=0,
                     rcnn_match_low_quality=True, box_head='2fc', class_agnostic=False, box_loss='l1',
                     box_loss_weight=1.0)
  variables = _init(mask, batch)
  params = dict(variables['params'])
  params['bbox_heads_0'], params['mask_heads_0'] = params.pop('bbox_head'), params.pop('mask_head')
  renamed = {**variables, 'params': params}
  want = jax.jit(lambda: mask.apply(variables, images, train=False, image_hw=image_hw))()
  got = jax.jit(lambda: one.apply(renamed, images, train=False, image_hw=image_hw))()
  np.testing.assert_array_equal(np.asarray(got['valid']), np.asarray(want['valid']))
  for k in ('boxes', 'scores', 'masks'):
    np.testing.assert_allclose(np.asarray(got[k]), np.asarray(want[k]), rtol=1e-5, atol=1e-5, err_msg=k)
  (_, m_want), (_, m_got) = _train(mask, variables, batch), _train(one, renamed, batch)
  for ours, theirs in (('s0.loss_cls', 'loss_cls'), ('s0.loss_bbox', 'loss_bbox'), ('s0.loss_mask', 'loss_mask'),
                       ('loss_rpn_cls', 'loss_rpn_cls'), ('loss_rpn_bbox', 'loss_rpn_bbox')):
    np.testing.assert_allclose(float(m_got[ours]), float(m_want[theirs]), rtol=1e-5, err_msg=ours)


def _heads_on(model, variables, pyramid, rois, stage):
  """Stage ``stage``'s box head on ``rois`` through apply: (logits, deltas)."""
  return model.apply(variables, pyramid, rois, method=lambda m, p, r: m.bbox_heads[stage](m._roi_features(p, r, 7)))


@pytest.mark.parametrize('style', ['mmdet', 'detectron2'])
def test_three_stage_test_path_equals_a_numpy_formulation(batch, style):
  """detect() against the cascade written out in numpy from the stage heads' outputs: RoIs refined by each
  stage's argmax class, scores averaged over stages (logits for mmdet, probabilities for detectron2),
  the last stage's deltas decoded, then mask_rcnn.detections; the masks the mean of the stages' heads."""
  images, image_hw, _ = batch
  extra = dict(box_head='4conv1fc', class_agnostic=False) if style == 'mmdet' else DETECTRON2
  model = create_model('cascade_mask_rcnn_resnet50', **TINY, **extra)
  variables = _init(model, batch)
  found = jax.device_get(jax.jit(lambda: model.apply(variables, images, train=False, image_hw=image_hw))())
  pyramid = model.apply(variables, images, method=lambda m, x: m.pyramid(x))
  proposals, proposal_valid = model.apply(variables, pyramid, image_hw, method=lambda m, p, hw: m._proposals(
      p, *m.rpn_head(p), hw, m.rpn_test_pre_nms, m.rpn_max_proposals))
  rois, scores = np.array(proposals), []
  for t, stds in enumerate(cr.STAGE_STDS):
    logits, deltas = map(np.asarray, _heads_on(model, variables, pyramid, jnp.asarray(rois), t))
    scores.append(logits if style == 'mmdet' else np_softmax(logits.astype(np.float64)))
    if t < 2:
      label = logits[..., :NUM_CLASSES].argmax(-1)
      for b in range(2):
        d = deltas[b] if deltas.shape[-1] == 4 else deltas[b].reshape(-1, NUM_CLASSES, 4)[np.arange(len(label[b])),
                                                                                          label[b]]
        rois[b] = np_decode(rois[b], d, stds, np.asarray(image_hw[b]))
  mean = np.mean(scores, 0)
  logits = mean if style == 'mmdet' else np.log(mean)
  want = jax.device_get(jax.vmap(lambda lg, dl, p, pv, hw: mr.detections(
      lg, dl, p, pv, hw, max_detections=TINY['max_detections'], stds=cr.STAGE_STDS[-1]))(
          jnp.asarray(logits, jnp.float32), jnp.asarray(deltas), jnp.asarray(rois, jnp.float32), proposal_valid,
          image_hw))
  assert want['valid'].any()
  np.testing.assert_array_equal(found['valid'], want['valid'])
  np.testing.assert_array_equal(found['labels'], want['labels'])
  np.testing.assert_allclose(found['boxes'], want['boxes'], rtol=1e-4, atol=1e-3)
  np.testing.assert_allclose(found['scores'], want['scores'], rtol=1e-4, atol=1e-6)
  heads = model.apply(variables, pyramid, jnp.asarray(found['boxes']), jnp.asarray(found['labels']),
                      method=lambda m, p, b, l: [m._mask_probabilities([h], p, dict(boxes=b, labels=l))
                                                 for h in m.mask_heads])
  assert len(heads) == (3 if style == 'mmdet' else 1)
  want_masks = np.where(found['valid'][:, :, None, None], np.mean([np.asarray(h) for h in heads], 0), 0)
  np.testing.assert_allclose(found['masks'], want_masks, rtol=1e-5, atol=1e-6)


def test_tiny_cascade_learns_a_batch_through_every_stage(batch):
  """mmdet's cascade with Swin's heads (4conv1fc BN, class-specific GIoU x10): every stage's losses fall
  over 15 Adam steps, and each stage's losses reach that stage's own heads."""
  images, image_hw, targets = batch
  model = create_model('cascade_mask_rcnn_resnet50', **TINY)
  variables = _init(model, batch)
  optimizer = optax.adam(2e-3)
  key = jax.random.PRNGKey(1)

  def loss_fn(params, batch_stats):
    (loss, metrics), updates = model.apply({'params': params, 'batch_stats': batch_stats}, images, train=True,
                                           image_hw=image_hw, targets=targets, rngs={'sampling': key},
                                           mutable=['batch_stats'])
    return loss, (metrics, updates['batch_stats'])

  @jax.jit
  def step(params, batch_stats, state):
    (loss, (metrics, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch_stats)
    updates, state = optimizer.update(grads, state, params)
    return optax.apply_updates(params, updates), batch_stats, state, dict(metrics, total=loss), grads

  params, batch_stats = variables['params'], variables['batch_stats']
  state = optimizer.init(params)
  history = []
  for i in range(15):
    params, batch_stats, state, metrics, grads = step(params, batch_stats, state)
    history.append(jax.device_get(metrics))
    if i == 0:
      for t in range(3):
        own = ((f'bbox_heads_{t}', 'fc_cls'), (f'bbox_heads_{t}', 'fc_reg'), (f'mask_heads_{t}', 'conv_logits'))
        for head, layer in own:
          assert float(optax.global_norm(grads[head][layer])) > 0, (head, layer)
  first, last = history[0], history[-1]
  assert last['total'] < 0.6 * first['total'], (first['total'], last['total'])
  for t in range(3):
    assert first[f's{t}.positives'] > 0
    for term in ('loss_cls', 'loss_bbox', 'loss_mask'):
      values = np.array([h[f's{t}.{term}'] for h in history])
      assert np.isfinite(values).all() and values.min() < 0.8 * values[0], (t, term, values)
  assert first['s1.loss_cls'] < first['s0.loss_cls']  # stage weights 1, 0.5, 0.25 on similar terms


def test_detectron2_cascade_trains_one_step_with_scaled_stage_gradients(batch):
  """detectron2's chaining: stage losses unweighted, one mask head (on the last stage), finite gradients; the
  backbone's gradient from the box stages is 1/3 of what stage_gradient_scale=1 gives."""
  images, image_hw, targets = batch
  model = create_model('cascade_rcnn_resnet50', **TINY, **DETECTRON2)
  unscaled = model.clone(stage_gradient_scale=1.0)
  variables = _init(model, batch)

  def box_grads(m):
    def loss_fn(params):
      (_, metrics), _ = m.apply({**variables, 'params': params}, images, train=True, image_hw=image_hw,
                                targets=targets, rngs={'sampling': jax.random.PRNGKey(1)}, mutable=['batch_stats'])
      return sum(v for k, v in metrics.items() if k.startswith('s') and 'loss' in k), metrics
    return jax.jit(jax.grad(loss_fn, has_aux=True))(variables['params'])

  (scaled, metrics), (full, _) = box_grads(model), box_grads(unscaled)
  assert set(k for k in metrics if 'loss' in k and k.startswith('s')) == {
      f's{t}.{n}' for t in range(3) for n in ('loss_cls', 'loss_bbox')}
  chex.assert_tree_all_finite(scaled)
  np.testing.assert_allclose(np.asarray(jax.tree_util.tree_leaves(scaled['neck'])[0]),
                             np.asarray(jax.tree_util.tree_leaves(full['neck'])[0]) / 3, rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(np.asarray(scaled['bbox_heads_1']['fc_cls']['kernel']),
                             np.asarray(full['bbox_heads_1']['fc_cls']['kernel']), rtol=1e-4, atol=1e-7)


# ----------------------------------------------------------------------------------------------
# The registered models at full size (traced only).
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize('variant', ['t', 's', 'b'])
def test_nommer_cascade_counts_are_table_2s_without_the_input_sized_position_embedding(variant):
  name = f'cascade_mask_rcnn_nommer_{variant}'
  model, size = create_model(name), model_info(name).input_size
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)), train=False))
  total = count_params(variables['params'])
  position = count_params(variables['params']['backbone']['pos_embedding'])
  paper = model_info(name).paper['params']
  assert total == model_info(name).params
  assert abs(total - position - paper) / paper < 0.01, (total, position, paper)


@pytest.mark.parametrize('name', ['cascade_mask_rcnn_swin_t', 'cascade_rcnn_cotnet50'])
def test_full_size_cascade_train_and_eval_trace(name):
  model, size, gts, n = create_model(name), 1344, 20, 2  # CoTNet's BN needs two images in training
  x = jnp.zeros((n, size, size, 3))
  out, variables = jax.eval_shape(lambda: model.init_with_output(jax.random.PRNGKey(0), x, train=False))
  masks = model_info(name).defaults.get('with_mask', True)
  assert out['boxes'].shape == (n, 100, 4) and ('masks' in out) == masks
  targets = dict(gt_boxes=jax.ShapeDtypeStruct((n, gts, 4), jnp.float32),
                 gt_labels=jax.ShapeDtypeStruct((n, gts), jnp.int32),
                 gt_masks=jax.ShapeDtypeStruct((n, gts, size // 4, size // 4), jnp.uint8),
                 gt_valid=jax.ShapeDtypeStruct((n, gts), jnp.bool_))
  (loss, metrics), _ = jax.eval_shape(
      lambda v, t: model.apply(v, x, train=True, targets=t, mutable=['batch_stats'],
                               rngs={'sampling': jax.random.PRNGKey(0), 'drop_path': jax.random.PRNGKey(1)}),
      variables, targets)
  assert loss.shape == () and {f's{t}.loss_bbox' for t in range(3)} <= set(metrics)
  assert ('s2.loss_mask' in metrics) == masks
