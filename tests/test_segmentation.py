"""Segmentation: metrics against a numpy brute force, inference modes against each other, UperNet.

docs/segmentation.md describes what is compared with mmsegmentation and why.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lgvit import segmentation as seg
from lgvit.data import classes
from lgvit.errors import InvalidInputSizeError
from lgvit.models import create_model, layers, list_models, model_info
from lgvit.models.layers import count_params
from conftest import RESNET_TINY, init_shapes, random_variables

# --------------------------------------------------------------------------------------------
# Metrics.
# --------------------------------------------------------------------------------------------


def brute_force_metrics(labels, preds, k, ignore=255):
  """Per-pixel loops and per-class sets: the definitions, written out independently."""
  pairs = [(int(l), int(p)) for l, p in zip(labels.ravel(), preds.ravel()) if l != ignore]
  iou, acc = [], []
  for c in range(k):
    tp = sum(1 for l, p in pairs if l == c and p == c)
    union = sum(1 for l, p in pairs if l == c or p == c)
    gt = sum(1 for l, _ in pairs if l == c)
    iou.append(tp / union if union else None)
    acc.append(tp / gt if gt else None)
  mean = lambda v: sum(x for x in v if x is not None) / sum(x is not None for x in v)
  return dict(IoU=iou, mIoU=mean(iou), mAcc=mean(acc), aAcc=sum(l == p for l, p in pairs) / len(pairs))


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_confusion_metrics_match_brute_force_with_ignore_pixels(seed):
  rng = np.random.default_rng(seed)
  k = 7
  labels = rng.integers(0, k - 2, (3, 9, 11))  # classes 5, 6 never in the ground truth
  labels[rng.random(labels.shape) < 0.2] = 255
  preds = rng.integers(0, k - 1, labels.shape)  # class 6 absent from both: excluded from the mean
  cm = jax.jit(seg.confusion_matrix, static_argnums=2)(jnp.asarray(labels), jnp.asarray(preds), k)
  assert int(cm.sum()) == int((labels != 255).sum())
  got = seg.metrics_from_confusion(cm)
  want = brute_force_metrics(labels, preds, k)
  assert np.isnan(got['IoU'][6]) and want['IoU'][6] is None
  assert got['IoU'][5] == 0.0  # predicted but never true: counts as 0, as in mmseg
  np.testing.assert_allclose(got['IoU'][:6], want['IoU'][:6], rtol=1e-12)
  for key in ('mIoU', 'mAcc', 'aAcc'):
    assert got[key] == pytest.approx(want[key], rel=1e-12), key


def test_confusion_sums_over_batches_and_masks_padded_images():
  rng = np.random.default_rng(3)
  labels, preds = rng.integers(0, 4, (4, 6, 6)), rng.integers(0, 4, (4, 6, 6))
  mask = np.array([1, 1, 0, 1], bool)  # image 2 is eval padding
  whole = seg.confusion_matrix(jnp.asarray(labels), jnp.asarray(preds), 4, mask=jnp.asarray(mask))
  parts = sum(seg.confusion_matrix(jnp.asarray(labels[i:i + 1]), jnp.asarray(preds[i:i + 1]), 4) for i in (0, 1, 3))
  np.testing.assert_array_equal(np.asarray(whole), np.asarray(parts))
  cm = np.zeros((4, 4), int)
  np.add.at(cm, (labels[mask].ravel(), preds[mask].ravel()), 1)
  np.testing.assert_array_equal(np.asarray(whole), cm)


def test_ignore_label_pixels_change_nothing():
  labels = jnp.array([[0, 1, 255, 2]])
  a = seg.confusion_matrix(labels, jnp.array([[0, 1, 0, 2]]), 3)
  b = seg.confusion_matrix(labels, jnp.array([[0, 1, 2, 2]]), 3)  # only the ignored pixel's prediction differs
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert seg.metrics_from_confusion(a)['mIoU'] == 1.0


# --------------------------------------------------------------------------------------------
# Resizing, pooling and the inference modes.
# --------------------------------------------------------------------------------------------


def torch_bilinear_reference(x, size):
  """F.interpolate(bilinear, align_corners=False) in numpy: half-pixel sources clamped at 0."""
  def weights(n_in, n_out):
    m = np.zeros((n_out, n_in))
    for o in range(n_out):
      src = max((o + 0.5) * n_in / n_out - 0.5, 0.0)
      i0 = min(int(np.floor(src)), n_in - 1)
      i1, frac = min(i0 + 1, n_in - 1), src - i0
      m[o, i0] += 1 - frac
      m[o, i1] += frac
    return m
  return np.einsum('ih,jw,bhwc->bijc', weights(x.shape[1], size[0]), weights(x.shape[2], size[1]), x)


@pytest.mark.parametrize('size', [(26, 20), (7, 5), (30, 3), (4, 19)])
def test_resize_bilinear_is_torch_interpolate(size):
  x = np.random.default_rng(0).standard_normal((2, 13, 10, 3)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(layers.resize_bilinear(jnp.asarray(x), size)),
                             torch_bilinear_reference(x, size), atol=2e-6)


@pytest.mark.parametrize('out', [1, 2, 3, 6, (4, 5)])
def test_adaptive_avg_pool_is_torch_adaptive_pool(out):
  x = np.random.default_rng(1).standard_normal((2, 13, 10, 3)).astype(np.float32)
  oh, ow = (out, out) if isinstance(out, int) else out
  want = np.zeros((2, oh, ow, 3))
  for i in range(oh):
    for j in range(ow):  # PyTorch's bins: [floor(i H / s), ceil((i + 1) H / s))
      rows = slice(i * 13 // oh, -(-(i + 1) * 13 // oh))
      cols = slice(j * 10 // ow, -(-(j + 1) * 10 // ow))
      want[:, i, j] = x[:, rows, cols].mean((1, 2))
  np.testing.assert_allclose(np.asarray(layers.adaptive_avg_pool(jnp.asarray(x), out)), want, atol=1e-6)


def test_rescale_size_is_mmcvs_keep_ratio_rule():
  assert seg.rescale_size(375, 500, (2048, 512)) == (512, 683)  # short side bound
  assert seg.rescale_size(256, 2560, (2048, 512)) == (205, 2048)  # long side bound
  assert seg.rescale_size(512, 512, (1024, 256)) == (256, 256)


def test_slide_windows_cover_the_image_like_mmseg():
  wins = seg.slide_windows(512, 683, (512, 512), (341, 341))
  assert wins == [(0, 512, 0, 512), (0, 512, 171, 683)]
  assert seg.slide_windows(40, 30, (512, 512), (341, 341)) == [(0, 40, 0, 30)]


def _pointwise(k=5, seed=0):
  """A per-pixel linear 'model' at stride 1: any window average equals the whole image exactly."""
  w = jax.random.normal(jax.random.PRNGKey(seed), (3, k))
  return lambda x: jnp.einsum('bhwc,ck->bhwk', x, w)


def _tiny_upernet(num_classes=5):
  model = create_model('upernet_cotnet50', num_classes=num_classes, backbone='resnet50', backbone_kwargs=RESNET_TINY,
                       channels=8, aux_channels=4)
  x = jnp.zeros((1, 64, 64, 3))
  variables = random_variables(model, x, scale=0.3)
  return model, variables, jax.jit(lambda x: model.apply(variables, x, train=False))


def test_sliding_window_equals_whole_image_when_one_window_covers_it():
  _, _, apply_fn = _tiny_upernet()
  x = jax.random.normal(jax.random.PRNGKey(1), (1, 40, 56, 3))  # padded to 64x64 inside, both ways
  whole = seg.infer_whole(apply_fn, x)
  slide = seg.infer_slide(apply_fn, x, crop=(64, 64), stride=(43, 43))
  assert whole.shape == (1, 40, 56, 5)
  np.testing.assert_allclose(np.asarray(slide), np.asarray(whole), rtol=0, atol=1e-5)


def test_sliding_windows_average_overlaps_exactly():
  fn = _pointwise()
  x = jax.random.normal(jax.random.PRNGKey(2), (2, 40, 29, 3))
  windows = seg.slide_windows(40, 29, (16, 16), (11, 11))
  assert len(windows) == 12 and len({w[:2] for w in windows}) == 4
  slide = seg.infer_slide(fn, x, crop=(16, 16), stride=(11, 11), size_divisor=1)
  np.testing.assert_allclose(np.asarray(slide), np.asarray(fn(x)), atol=1e-5)


def test_flip_runs_the_mirrored_image_and_mirrors_back():
  _, _, apply_fn = _tiny_upernet()
  x = jax.random.normal(jax.random.PRNGKey(3), (1, 32, 64, 3))
  flipped = seg.infer_whole(apply_fn, x, flip=True)
  want = seg.infer_whole(apply_fn, x[:, :, ::-1])[:, :, ::-1]
  np.testing.assert_allclose(np.asarray(flipped), np.asarray(want), atol=1e-6)
  assert not np.allclose(np.asarray(flipped), np.asarray(seg.infer_whole(apply_fn, x)), atol=1e-3)
  fn = _pointwise()  # mirror-equivariant: flipping changes nothing
  np.testing.assert_allclose(np.asarray(seg.infer_whole(fn, x, flip=True, size_divisor=1)), np.asarray(fn(x)),
                             atol=1e-5)


def test_whole_mode_rescales_and_returns_the_original_size():
  pointwise, seen = _pointwise(), []

  def fn(x):
    seen.append(x.shape[1:3])
    return pointwise(x)

  x = jax.random.normal(jax.random.PRNGKey(4), (1, 30, 40, 3))
  out = seg.infer_whole(fn, x, scale=(100, 45), size_divisor=8)  # -> 45x60, padded to 48x64
  assert seen == [(48, 64)]
  want = layers.resize_bilinear(pointwise(layers.resize_bilinear(x, (45, 60))), (30, 40))
  np.testing.assert_allclose(np.asarray(out), np.asarray(want), atol=1e-5)
  fn = pointwise
  probs = seg.infer_multiscale(fn, x, scale=(80, 60), ratios=(0.5, 1.0), size_divisor=1)
  assert probs.shape == (1, 30, 40, 5)
  np.testing.assert_allclose(np.asarray(probs.sum(-1)), 1.0, atol=1e-5)
  with pytest.raises(ValueError, match="mode must be 'whole' or 'slide'"):
    seg.infer_multiscale(fn, x, mode='tiles')


# --------------------------------------------------------------------------------------------
# UperNet.
# --------------------------------------------------------------------------------------------


def head_params(in_channels, c, k, scales=4, aux_c=256, aux_in=None):
  """UperHead + FCNHead parameter count by hand (convs without bias before BN; BN scale+bias)."""
  conv_bn = lambda cin, cout, ks: ks * ks * cin * cout + 2 * cout
  n = scales * conv_bn(in_channels[-1], c, 1) + conv_bn(in_channels[-1] + scales * c, c, 3)
  n += sum(conv_bn(ci, c, 1) + conv_bn(c, c, 3) for ci in in_channels[:-1])
  n += conv_bn(len(in_channels) * c, c, 3) + c * k + k
  return n + conv_bn(aux_in or in_channels[2], aux_c, 3) + aux_c * k + k


@pytest.mark.parametrize('name', list_models('upernet'))
def test_upernet_counts_are_backbone_plus_the_hand_counted_head(name):
  info = model_info(name)
  assert info.task == 'segmentation' and info.input_size == 512
  shapes = init_shapes(create_model(name), 512)['params']
  assert count_params(shapes) == info.params
  backbone = count_params(shapes['backbone'])
  channels = [shapes['decode_head'][f'lateral{i}']['unit']['conv']['kernel'].shape[2] for i in range(3)]
  channels.append(shapes['decode_head']['ppm1']['unit']['conv']['kernel'].shape[2])
  norms = 2 * sum(channels) if 'norm0' in shapes else 0
  assert info.params == backbone + norms + head_params(channels, 512, 150)
  assert 'head' not in shapes['backbone'] and 'fc' not in shapes['backbone']  # no classifier
  paper = info.paper.get('params')
  assert paper is None or abs(info.params - paper) / paper < 0.01, (info.params, paper)


def test_upernet_outputs_stride_4_logits_and_the_aux_head_in_training():
  model, variables, apply_fn = _tiny_upernet()
  x = jax.random.normal(jax.random.PRNGKey(5), (2, 64, 96, 3))
  assert apply_fn(x).shape == (2, 16, 24, 5)
  (logits, aux), state = model.apply(variables, x, train=True, mutable=['batch_stats'],
                                     rngs={'dropout': jax.random.PRNGKey(0), 'drop_path': jax.random.PRNGKey(1)})
  assert logits.shape == (2, 16, 24, 5) and aux.shape == (2, 4, 6, 5)
  assert logits.dtype == jnp.float32
  assert set(state['batch_stats']) == set(variables['batch_stats'])
  with pytest.raises(InvalidInputSizeError, match='not a multiple of 32; pad it to 64x96'):
    model.apply(variables, x[:, :40, :70], train=False)


def test_default_classes_and_drop_path_reach_the_backbone():
  model = create_model('upernet_nommer_t')
  assert model.num_classes == 150 and model.backbone.features_only
  # NomMer's own stochastic depth (paper Sec. 4.1/4.2, official nommer_*_attn.yaml): 0.1 / 0.3 / 0.5
  for variant, rate in (('t', 0.1), ('s', 0.3), ('b', 0.5)):
    assert create_model(f'upernet_nommer_{variant}').backbone.drop_path_rate == rate
    assert create_model(f'nommer_{variant}').drop_path_rate == rate
  assert create_model('upernet_swin_t', drop_path_rate=0.1).backbone.drop_path_rate == 0.1
  assert create_model('nommer_t').num_classes == 1000


@pytest.mark.parametrize('name', list_models(task='segmentation'))
def test_every_upernet_built_at_512_runs_at_other_sizes(name):
  """Built (initialised) at the 512x512 training crop, applied at the sizes whole-image, multi-scale and
  the in-training eval feed: a 512x704 ADE20K image and a 1024x1024 one (jax.eval_shape: traced, not run)."""
  model = create_model(name)
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 512, 512, 3)), train=False))
  for h, w in ((512, 512), (512, 704), (1024, 1024)):
    out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((1, h, w, 3)), train=False), variables)
    assert out.shape == (1, h // 4, w // 4, 150)


def test_nommer_features_resample_the_position_embedding_bicubically_at_apply_time():
  """features_only NomMer at a new size equals the same weights with pos_embedding resized beforehand by
  PyTorch's bicubic (mmseg's resize_pos_embed); the classifier still refuses a new size."""
  import torch
  kw = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), pad_windows=True)
  model = create_model('nommer_t', features_only=True, **kw)
  small = random_variables(model, jnp.zeros((1, 64, 64, 3)), seed=3)
  x = jax.random.normal(jax.random.PRNGKey(1), (1, 64, 96, 3))
  got = model.apply(small, x, train=False)
  pos = np.asarray(small['params']['pos_embedding'])
  want_pos = torch.nn.functional.interpolate(torch.tensor(pos).permute(0, 3, 1, 2), size=(4, 6), mode='bicubic',
                                             align_corners=False).permute(0, 2, 3, 1).numpy()
  small['params']['pos_embedding'] = jax.random.normal(jax.random.PRNGKey(2), pos.shape)
  pos = np.asarray(small['params']['pos_embedding'])
  got = model.apply(small, x, train=False)
  want_pos = torch.nn.functional.interpolate(torch.tensor(pos).permute(0, 3, 1, 2), size=(4, 6), mode='bicubic',
                                             align_corners=False).permute(0, 2, 3, 1).numpy()
  resized = jax.tree_util.tree_map(lambda a: a, small)
  resized['params']['pos_embedding'] = jnp.asarray(want_pos)
  big = model.apply(resized, x, train=False)
  for a, b in zip(got, big):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
  classifier = create_model('nommer_t', **kw)
  cls_vars = random_variables(classifier, jnp.zeros((1, 64, 64, 3)), seed=3)
  with pytest.raises(InvalidInputSizeError, match='pos_embedding grid 4x4'):
    classifier.apply(cls_vars, x, train=False)


def test_lesa_axial_relative_logits_equal_a_brute_force_loop_at_smaller_and_larger_maps():
  """The detection code's 2-D query term q.(R_h[a - x] + R_w[b - y]) with tables built for a 3x3 map: at
  2x3 an offset keeps its trained row; at 4x5 the tables are resampled as torch's linear interpolate."""
  import torch
  from lgvit.models import lesa
  rng = np.random.default_rng(0)
  table_h, table_w = rng.standard_normal((5, 4)).astype(np.float32), rng.standard_normal((5, 4)).astype(np.float32)

  def resampled(table, side):
    if 2 * side - 1 <= len(table):
      return table, len(table) // 2  # (rows, index of offset 0)
    t = torch.nn.functional.interpolate(torch.tensor(table.T[None]), size=2 * side - 1, mode='linear',
                                        align_corners=False)[0].numpy().T
    return t, side - 1

  for h, w in ((2, 3), (3, 3), (4, 5)):
    q = rng.standard_normal((2, h, w, 2, 4)).astype(np.float32)
    got = np.asarray(lesa.axial_relative_logits(jnp.asarray(q), jnp.asarray(table_h), jnp.asarray(table_w)))
    (rh, zh), (rw, zw) = resampled(table_h, h), resampled(table_w, w)
    want = np.zeros((2, h * w, h * w, 2), np.float32)
    for x in range(h):
      for y in range(w):
        for a in range(h):
          for b in range(w):
            want[:, x * w + y, a * w + b] = np.einsum('ngc,c->ng', q[:, x, y], rh[zh + a - x] + rw[zw + b - y])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_lesa_upernet_backbone_uses_the_detection_position_embedding_and_loads_an_imagenet_run():
  """upernet_lesa_resnet50's LESA layers carry rel_height/rel_width (no raster 'relative' table), and the
  config's init_skip lets a classification checkpoint fill everything else."""
  from configs import upernet
  from lgvit import checkpoint
  model = create_model('upernet_lesa_resnet50')
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 512, 512, 3)), train=False))
  binary = shapes['params']['backbone']['layer3_1']['conv2']['binary']
  assert set(binary) >= {'rel_height', 'rel_width'} and 'relative' not in binary
  assert binary['rel_height'].shape == (63, 16)  # 2 * 32 - 1 offsets of the 32x32 stage-3 map, 256/(2*8) deep
  classifier = create_model('lesa_resnet50', features_only=True)
  imagenet = jax.eval_shape(lambda: classifier.init(jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)), train=False))
  loaded = {k: {'backbone': jax.tree_util.tree_map(lambda a: np.zeros(a.shape, a.dtype), v)} for k, v in imagenet.items()}
  skip = upernet.get_config('backbone=lesa_resnet50').init_skip
  with pytest.raises(checkpoint.CheckpointError, match='rel_height: missing in checkpoint'):
    checkpoint.adapt_variables(loaded, shapes, skip=r'^(params|batch_stats)/(decode_head|auxiliary_head)/')
  fitted = checkpoint.adapt_variables(loaded, shapes, skip=skip)
  assert jax.tree_util.tree_structure(fitted) == jax.tree_util.tree_structure(shapes)


def test_window_attention_pads_maps_the_window_does_not_tile():
  """Swin's segmentation rule: zero-pad bottom/right, shift and mask the padded map, crop back."""
  x = jax.random.normal(jax.random.PRNGKey(6), (1, 10, 12, 8))
  padded = jnp.pad(x, ((0, 0), (0, 4), (0, 2), (0, 0)))
  for shift in (0, 3):
    attn = layers.WindowAttention(2, 7, shift)
    variables = attn.init(jax.random.PRNGKey(0), padded)
    np.testing.assert_allclose(np.asarray(attn.apply(variables, x)),
                               np.asarray(attn.apply(variables, padded))[:, :10, :12], atol=1e-6)


def test_pad_windows_lets_swin_and_nommer_take_512_and_keeps_classifiers_strict():
  x = jnp.zeros((1, 512, 512, 3))
  for name in ('swin_t', 'nommer_t'):
    with pytest.raises(InvalidInputSizeError):
      jax.eval_shape(lambda: create_model(name).init(jax.random.PRNGKey(0), x, train=False))
  with pytest.raises(InvalidInputSizeError, match='multiple of the total stride 32'):
    jax.eval_shape(lambda: create_model('swin_t', pad_windows=True).init(jax.random.PRNGKey(0), x[:, :500],
                                                                          train=False))


def test_pixel_cross_entropy_is_mmsegs_mean_with_ignored_pixels_zero():
  rng = np.random.default_rng(7)
  logits = rng.standard_normal((2, 4, 4, 3)).astype(np.float32)
  labels = rng.integers(0, 3, (2, 4, 4))
  labels[0, 0, :2] = 255
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  nll = np.where(labels == 255, 0.0, -np.take_along_axis(logp, np.where(labels == 255, 0, labels)[..., None], -1)[..., 0])
  got = seg.pixel_cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
  assert float(got) == pytest.approx(nll.sum() / labels.size, rel=1e-5)  # mmseg default: / every pixel
  got = seg.pixel_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), avg_non_ignore=True)
  assert float(got) == pytest.approx(nll.sum() / (labels != 255).sum(), rel=1e-5)
  got = seg.pixel_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), mask=jnp.array([0, 1]))
  assert float(got) == pytest.approx(nll[1].sum() / labels[1].size, rel=1e-5)
  total, terms = seg.upernet_loss((jnp.asarray(logits), jnp.asarray(logits[:, ::2, ::2])), jnp.asarray(labels))
  assert float(total) == pytest.approx(float(terms['loss_decode'] + 0.4 * terms['loss_aux']), rel=1e-6)
  assert float(terms['loss_aux']) != pytest.approx(float(terms['loss_decode']))  # upsampled from stride 2


def test_ade20k_names_colours_and_colorize():
  names, palette = classes.ade20k_classes()
  assert len(names) == 150 and palette.shape == (150, 3) and palette.dtype == np.uint8
  assert (names[0], names[2], names[12], names[149]) == ('wall', 'sky', 'person', 'flag')
  assert palette[0].tolist() == [120, 120, 120] and palette[149].tolist() == [92, 0, 255]
  mask = np.array([[0, 2], [255, 149]])
  out = seg.colorize(mask, palette)
  np.testing.assert_array_equal(out, [[palette[0], palette[2]], [[0, 0, 0], palette[149]]])
  pic = seg.comparison_picture(np.zeros((2, 2, 3)), mask, np.zeros((2, 2), int), palette)
  assert pic.shape == (2, 6, 3) and (pic[:, 4:] == palette[0]).all()
