"""The detection task (lgvit.tasks.detection) and its recipes (configs/mask_rcnn.py): the train forward's
padding and unreadable-slot rules, the COCO evaluator against detectors built from the ground truth,
the cross-process gather, the mmdet step schedule, and every recipe's config."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import random_variables
from test_mask_rcnn import TINY

from lgvit import evals, optim, schema, tasks
from lgvit.data import det_pipeline, digits_det
from lgvit.data.classes import DET_DEMO_CLASS_NAMES
from lgvit.modeling import build_model, init_variables, make_mesh, normalize
from lgvit.models import box_ops
from lgvit.segmentation import zero_outside
from lgvit.tasks import detection as det_task

from configs import cascade_mask_rcnn, cascade_rcnn, faster_rcnn, mask_rcnn

#: The detection frameworks besides Mask R-CNN -> their config modules.
FRAMEWORK_CONFIGS = {'faster_rcnn': faster_rcnn, 'cascade_rcnn': cascade_rcnn, 'cascade_mask_rcnn': cascade_mask_rcnn}


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
  """The demo builder cut to 40 train / 12 validation canvases, and a config of the tiny detector on it
  (the 128x128 digits at their size, or at 96x96 by the second scale of the multi-scale list)."""
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(digits_det, 'SPLIT_SIZES', {'train': 40, 'validation': 12})
    builder = digits_det.LgvitDigitsDet(data_dir=data_dir)
    builder.download_and_prepare()
  c = mask_rcnn.get_config('backbone=resnet50,demo')
  c.unlock()
  c.model_kwargs = {k: v for k, v in TINY.items() if k != 'num_classes'}
  c.data.update(data_dir=data_dir, scale=(128, 128), pad_size=(128, 128), image_size=128, max_instances=6,
                mask_stride=4, shuffle_buffer=64)
  c.aug.scales = ((128, 128), (128, 96))
  c.batch_size, c.eval_batch_size = 4, 4
  return builder, c


def _train_batch(builder, c):
  ds = det_pipeline.build_detection_input(c.data, c.aug, builder, split='train', training=True, batch_size=4,
                                          seed=0, steps_per_epoch=1)
  return next(iter(tfds.as_numpy(ds)))


def test_train_forward_sees_the_mean_colour_outside_each_image_and_nothing_of_an_unreadable_slot(tiny):
  builder, c = tiny
  batch = _train_batch(builder, c)
  task = tasks.of_config(c)
  settings = task.settings(c)
  model = build_model(c)
  variables = random_variables(model, jnp.zeros((1, 128, 128, 3)))  # no compiled init
  forward = jax.jit(task.train_forward(model, settings))
  rngs = {'dropout': jax.random.PRNGKey(0), 'drop_path': jax.random.PRNGKey(1), 'gumbel': jax.random.PRNGKey(2)}
  keys = (jax.random.PRNGKey(3), jax.random.PRNGKey(4))
  hw = batch['image_hw']
  assert (hw < 128).any(), hw  # a smaller image: its canvas has padding
  inside = (np.arange(128)[None, :, None] < hw[:, 0, None, None]) & (np.arange(128)[None, None, :] < hw[:, 1, None, None])

  def loss(fed):
    out, (metrics, _) = forward(variables['params'], variables['batch_stats'], normalize(jnp.asarray(fed['image'])),
                                fed, rngs, keys)
    return float(out), jax.device_get(metrics)

  base, metrics = loss(batch)
  assert np.isfinite(base) and metrics['rpn_positives'] > 0 and metrics['rcnn_positives'] > 0
  white = dict(batch, image=np.where(inside[..., None], batch['image'], 255).astype(np.uint8))
  assert loss(white)[0] == base  # whatever fills the padding, the detector sees the mean colour

  # The same loss written out: the detector on the normalised, zeroed canvases with the 'sampling' key.
  images = zero_outside(normalize(jnp.asarray(batch['image'])), jnp.asarray(hw))
  targets = {k: jnp.asarray(batch[k]) for k in det_task.TARGETS}
  direct, _ = jax.jit(lambda v, x, t: model.apply(v, x, train=True, image_hw=jnp.asarray(hw), targets=t, mask_stride=4,
                                                  rngs={**rngs, 'sampling': keys[0]}, mutable=['batch_stats']))(
      variables, images, targets)
  assert float(direct[0]) == pytest.approx(base, rel=1e-6)

  # Slot 3 unreadable: its pixels and objects change nothing; the other slots' loss changes with it.
  rng = np.random.default_rng(0)
  unreadable = dict(batch, valid=np.array([1, 1, 1, 0], np.int32))
  scrambled = dict(unreadable, image=batch['image'].copy(), gt_boxes=batch['gt_boxes'].copy())
  scrambled['image'][3] = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)
  scrambled['gt_boxes'][3] = np.array([0, 0, 30, 30], np.float32)
  scrambled['gt_valid'] = batch['gt_valid'].copy()
  scrambled['gt_valid'][3] = True
  without, metrics3 = loss(unreadable)
  assert loss(scrambled)[0] == without and without != base
  assert metrics3['rpn_positives'] < metrics['rpn_positives']


def _fake_step(drop_every_second: bool = False):
  """A detector that returns each image's ground truth (boxes, labels, masks RoIAligned to 28x28 from the
  canvas masks) with score 1; with ``drop_every_second`` only every second object."""
  def step(variables, batch):
    del variables
    batch = jax.device_get(batch)
    valid = np.array(batch['gt_valid'], bool)
    if drop_every_second:
      valid &= (np.arange(valid.shape[1]) % 2 == 0)[None]
    stride = batch['image'].shape[1] // batch['gt_masks'].shape[2]
    masks = np.stack([np.asarray(_roi_masks(m, b, stride)) for m, b in zip(batch['gt_masks'], batch['gt_boxes'])])
    return {'boxes': np.where(valid[..., None], batch['gt_boxes'], 0), 'scores': valid.astype(np.float32),
            'labels': batch['gt_labels'], 'valid': valid, 'masks': np.where(valid[..., None, None], masks, 0)}
  return step


@functools.partial(jax.jit, static_argnums=2)
def _roi_masks(masks, boxes, stride):
  """(G, h, w) uint8 coverage at 1 / stride of the canvas, (G, 4) canvas boxes -> (G, 28, 28) in [0, 1]."""
  one = lambda mask, box: box_ops.roi_align(mask[..., None].astype(jnp.float32) / 255, box[None], 28, 1 / stride)
  return jax.vmap(one)(masks, boxes)[:, 0, ..., 0]


def _evaluator(builder, c, model=None):
  task = tasks.of_config(c)
  (spec,) = evals.specs(c)
  model = model or build_model(c)
  return evals.build(spec, evals.Context(model, task.settings(c), make_mesh()))


def test_evaluator_scores_the_ground_truth_one_and_half_of_it_about_half(tiny):
  builder, c = tiny
  evaluator = _evaluator(builder, c)
  assert evaluator.num_examples == 12
  evaluator.step = _fake_step()
  perfect = evaluator.run(None)
  assert perfect['count'] == 12 and perfect['skipped'] == 0
  # Boxes keep their size (scale 1); the masks lose a little in 28x28 from stride-4 coverage.
  assert perfect['bbox_AP'] == pytest.approx(1.0, abs=1e-6) and perfect['bbox_AP50'] == pytest.approx(1.0)
  assert perfect['segm_AP50'] == pytest.approx(1.0) and perfect['segm_AP'] > 0.6
  evaluator.step = _fake_step(drop_every_second=True)
  half = evaluator.run(None)
  assert 0.3 < half['bbox_AP'] < 0.7, half  # recall about 1/2 at precision 1
  assert 'bbox AP 1.0000 | segm AP' in evaluator.summary(perfect) and '12 images' in evaluator.summary(perfect)


def test_evaluator_runs_the_real_detector(tiny):
  builder, c = tiny
  model = build_model(c)
  variables = random_variables(model, jnp.zeros((1, 128, 128, 3)))  # no compiled init
  metrics = _evaluator(builder, c, model).run(variables)
  assert metrics['count'] == 12
  for key in ('bbox_AP', 'bbox_AP50', 'segm_AP', 'segm_APl'):
    assert -1.0 <= metrics[key] <= 1.0, key


def test_gather_objects_pads_and_unpickles_each_processes_part(monkeypatch):
  parts = [{'rank': 0, 'boxes': np.zeros((3, 4))}, {'rank': 1, 'long': 'x' * 1000}]

  def allgather(x):  # what two processes would give: process 0's value, then process 1's
    x = np.asarray(x)
    if x.ndim == 0:
      return np.array([len(pickle_bytes[0]), len(pickle_bytes[1])])
    return np.stack([np.pad(p, (0, len(x) - len(p))) for p in pickle_bytes])

  import pickle
  pickle_bytes = [np.frombuffer(pickle.dumps(p), np.uint8) for p in parts]
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  monkeypatch.setattr(evals.multihost_utils, 'process_allgather', allgather)
  got = evals.gather_objects(parts[1])  # process 1's call; the pad is to the longer pickle
  assert got[0]['rank'] == 0 and got[1] == parts[1]
  np.testing.assert_array_equal(got[0]['boxes'], parts[0]['boxes'])


def _mmcv_step_lr(it, epoch_len, base=0.02, warmup=500, ratio=0.001, steps=(8, 11)):
  """mmcv StepLrUpdaterHook(by_epoch) with a linear iteration warm-up, as mmcv computes it."""
  epoch = it // epoch_len
  regular = base * 0.1 ** sum(epoch >= s for s in steps)
  if it < warmup:
    k = (1 - it / warmup) * (1 - ratio)
    return regular * (1 - k)
  return regular


def test_mmdet_schedule_is_mmcvs_step_hook_with_linear_warmup():
  c = mask_rcnn.get_config('backbone=resnet50')
  epoch_len = mask_rcnn.COCO_TRAIN_EXAMPLES // 16
  schedule = optim.lr_schedule(c.schedule, c.batch_size, epoch_len, 12 * epoch_len)
  for it in (0, 1, 250, 499, 500, 8 * epoch_len - 1, 8 * epoch_len, 11 * epoch_len - 1, 11 * epoch_len,
             12 * epoch_len - 1):
    assert float(schedule(it)) == pytest.approx(_mmcv_step_lr(it, epoch_len), rel=1e-5), it


def _detectron2_lr(it, base=0.02, warmup=1000, factor=0.001, steps=(60_000, 80_000)):
  """detectron2's WarmupMultiStepLR (linear warm-up), as detectron2/solver/lr_scheduler.py computes it."""
  warm = factor * (1 - it / warmup) + it / warmup if it < warmup else 1.0
  return base * warm * 0.1 ** sum(it >= s for s in steps)


@pytest.mark.parametrize('arg,total,steps', [('', 90_000, (60_000, 80_000)),
                                             (',schedule=3x', 270_000, (210_000, 250_000))])
def test_cotnet_schedule_is_detectron2s_in_iterations(arg, total, steps):
  c = mask_rcnn.get_config(f'backbone=cotnet50{arg}')
  assert c.num_train_steps == total and c.optim.wd_exclude == 'norms'
  epoch_len = mask_rcnn.COCO_TRAIN_EXAMPLES // 16
  schedule = optim.lr_schedule(c.schedule, c.batch_size, epoch_len, c.num_train_steps)
  for it in (0, 1, 500, 999, 1000, steps[0] - 1, steps[0], steps[1] - 1, steps[1], c.num_train_steps - 1):
    assert float(schedule(it)) == pytest.approx(_detectron2_lr(it, steps=steps), rel=1e-5), it


@pytest.mark.parametrize('backbone', list(mask_rcnn.BACKBONES))
def test_every_recipe_builds_and_passes_the_schema(backbone):
  for arg in ('', ',schedule=3x', ',demo'):
    c = mask_rcnn.get_config(f'backbone={backbone}{arg}')
    schema.check(c, device_count=1)
    assert c.task == 'detection' and c.model == f'mask_rcnn_{backbone}'
    tasks.of_config(c).check_model(c.model)
  c = mask_rcnn.get_config(f'backbone={backbone}')
  transformer = backbone in mask_rcnn.TRANSFORMER
  assert c.optim.optimizer == ('adamw' if transformer else 'sgd')
  cotnet = backbone in mask_rcnn.COTNET  # detectron2's iteration schedules (the test above)
  assert c.schedule.lr == (1e-4 if transformer else 0.02) and (cotnet or c.schedule.decay_epochs == (8, 11))
  assert c.aug.autoaugment_crop == transformer  # the Swin configs' AutoAugment
  assert not mask_rcnn.get_config(f'backbone={backbone},demo').aug.autoaugment_crop
  assert det_pipeline.geometry(c.data, c.aug)['crop_policy'] == transformer
  assert cotnet or mask_rcnn.get_config(f'backbone={backbone},schedule=3x').schedule.decay_epochs == (27, 33)
  assert mask_rcnn.get_config(f'backbone={backbone},schedule=20e').schedule.decay_epochs == (16, 19)  # LESA Table 3
  if backbone in mask_rcnn.LESA:
    assert c.data.pad_size == (1024, 1024) and not c.data.keep_ratio
    hires = mask_rcnn.get_config(f'backbone={backbone},side=1280')  # LESA Table 3's superscript-h rows
    assert hires.data.scale == hires.data.pad_size == (1280, 1280) and hires.data.image_size == 1280
    with pytest.raises(ValueError, match='unknown LESA input side 1333; choose one of 1024, 1280'):
      mask_rcnn.get_config(f'backbone={backbone},side=1333')
  else:
    with pytest.raises(ValueError, match='applies to the LESA backbones'):
      mask_rcnn.get_config(f'backbone={backbone},side=1280')
  with pytest.raises(ValueError, match='unknown schedule'):
    mask_rcnn.get_config(f'backbone={backbone},schedule=2x')


def _trace_task_steps(c, pad_size=None):
  """The task's train forward and eval step of config ``c`` on a COCO-sized batch of two (100 objects,
  the recipe's mask stride) at ``pad_size`` (default the recipe's canvas), traced only:
  ``(loss, metrics, detections)`` as ShapeDtypeStructs."""
  c.unlock()
  if pad_size:
    c.data.pad_size = pad_size
  (h, w), g, s = c.data.pad_size, c.data.max_instances, c.data.mask_stride
  task = tasks.of_config(c)
  settings, model = task.settings(c), build_model(c)
  variables = jax.eval_shape(lambda: init_variables(model, c.data.image_size, 0))
  spec = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype)
  batch = {'image': spec((2, h, w, 3), jnp.uint8), 'image_hw': spec((2, 2), jnp.int32),
           'gt_boxes': spec((2, g, 4), jnp.float32), 'gt_labels': spec((2, g), jnp.int32),
           'gt_masks': spec((2, g, h // s, w // s), jnp.uint8), 'gt_valid': spec((2, g), jnp.bool_),
           'valid': spec((2,), jnp.int32), 'mask': spec((2,), jnp.int32)}
  key = jax.random.PRNGKey(0)
  forward = task.train_forward(model, settings)
  loss, (metrics, _) = jax.eval_shape(
      lambda v, b: forward(v['params'], v['batch_stats'], normalize(b['image']), b,
                           {n: key for n in ('dropout', 'drop_path', 'gumbel')}, (key, key)), variables, batch)
  found = jax.eval_shape(task.eval_step(model, settings), variables, batch)
  return loss, metrics, found


@pytest.mark.parametrize('backbone,pad_size', [('resnet50', None), ('lesa_resnet50', None), ('nommer_t', (832, 1344))])
def test_train_and_eval_steps_trace_at_the_recipes_canvases(backbone, pad_size):
  """The task's train forward and eval step on COCO-sized batches (100 objects, stride-2 masks), traced
  only: the recipe's square canvas (1344, LESA 1024) and a landscape one."""
  c = mask_rcnn.get_config(f'backbone={backbone}')
  loss, metrics, found = _trace_task_steps(c, pad_size)
  assert loss.shape == () and 'loss_mask' in metrics
  assert found['boxes'].shape == (2, 100, 4) and found['masks'].shape == (2, 100, 28, 28)


@pytest.mark.parametrize('framework,backbone,pad_size', [('cascade_mask_rcnn', 'nommer_t', (1344, 832)),
                                                         ('cascade_rcnn', 'cotnet50', (800, 1216)),
                                                         ('faster_rcnn', 'resnet50', (800, 1344))])
def test_framework_steps_trace_at_portrait_and_landscape_canvases(framework, backbone, pad_size):
  """The other frameworks' task steps, traced at the canvases users feed (a portrait 1344x832, landscape
  800-row ones): every stage's losses, masks only from the mask frameworks."""
  loss, metrics, found = _trace_task_steps(FRAMEWORK_CONFIGS[framework].get_config(f'backbone={backbone}'), pad_size)
  cascade, masks = framework.startswith('cascade'), mask_rcnn.FRAMEWORKS[framework]
  assert loss.shape == () and (({f's{t}.loss_bbox' for t in range(3)} if cascade else {'loss_bbox'}) <= set(metrics))
  assert found['boxes'].shape == (2, 100, 4) and ('masks' in found) == masks
  if masks:
    assert found['masks'].shape == (2, 100, 28, 28) and 's2.loss_mask' in metrics


# ---------------------------------------------------------------------------------------------
# Inference on one image: LoadedModel.detect and python -m lgvit.predict --detect.
# ---------------------------------------------------------------------------------------------


def _first_validation_image(builder):
  example = next(iter(tfds.as_numpy(builder.as_dataset(split='validation', shuffle_files=False))))
  return int(example['image/id']), np.asarray(example['image'])


def _by_score(boxes, scores, labels, masks):
  order = np.argsort(-np.asarray(scores), kind='stable')
  return boxes[order], scores[order], labels[order], masks[order]


def test_detect_finds_what_the_evaluation_finds_on_the_same_image(tiny):
  """LoadedModel.detect (numpy and XLA, no TensorFlow) against the evaluator's path (the tf.data
  eval pipeline, the eval step, the host's mapping back and RLE masks) on a validation image."""
  from pycocotools import mask as mask_utils
  from lgvit import inference
  builder, c = tiny
  model = build_model(c)
  variables = random_variables(model, jnp.zeros((1, 128, 128, 3)), seed=4)
  ds, _ = det_pipeline.eval_dataset(c.data, c.det, builder, local_batch=4, process_index=0, process_count=1)
  batch = next(iter(tfds.as_numpy(ds)))
  found = jax.device_get(jax.jit(det_task.make_eval_step(model, tasks.of_config(c).settings(c)))(variables, batch))
  expected = det_task.image_results(found, batch, 0, with_masks=True)
  image_id, pixels = _first_validation_image(builder)
  assert expected['image_id'] == image_id and len(expected['scores']) > 0  # random weights: ~0.09 for each class

  got = inference.from_config(c, variables).detect(pixels, score_threshold=0.0)
  want = _by_score(expected['boxes'], expected['scores'], expected['labels'],
                   np.stack([mask_utils.decode(r) for r in expected['masks']]).astype(bool))
  np.testing.assert_allclose(got.boxes, want[0], atol=1e-3)
  np.testing.assert_allclose(got.scores, want[1], rtol=1e-5)
  np.testing.assert_array_equal(got.labels, want[2])
  np.testing.assert_array_equal(got.masks, want[3])
  assert got.names == [DET_DEMO_CLASS_NAMES[i] for i in got.labels]


def test_detect_resizes_as_the_input_pipeline_does():
  import tensorflow as tf
  from lgvit import inference
  image = np.random.default_rng(5).integers(0, 256, (75, 130, 3), dtype=np.uint8)
  for h, w in ((44, 77), (150, 260), (75, 131)):
    ours = inference._resize_uint8(image, h, w).astype(int)
    theirs = tf.cast(tf.clip_by_value(tf.round(tf.image.resize(image, (h, w), 'bilinear', antialias=False)), 0, 255),
                     tf.uint8).numpy().astype(int)
    assert np.abs(ours - theirs).max() <= 1, (h, w)


def test_predict_detect_draws_and_lists_the_objects(tiny, tmp_path, capsys):
  from PIL import Image
  from lgvit import checkpoint, inference, predict
  builder, c = tiny
  model = build_model(c)
  variables = random_variables(model, jnp.zeros((1, 128, 128, 3)), seed=4)
  meta = {'model': c.model, 'num_classes': c.num_classes, 'model_kwargs': c.model_kwargs.to_dict(), 'image_size': 128,
          'dataset': 'lgvit_digits_det', 'scale': [128, 128], 'keep_ratio': True, 'pad_size': [128, 128]}
  checkpoint.save_variables(str(tmp_path / 'detector'), variables, meta)
  _, pixels = _first_validation_image(builder)
  Image.fromarray(pixels).save(tmp_path / 'digits.png')
  expected = inference.from_config(c, variables).detect(pixels, score_threshold=0.05)
  assert predict.main(['--workdir', str(tmp_path / 'detector'), '--detect', str(tmp_path / 'digits.png'),
                       '--out', str(tmp_path / 'boxes.png'), '--score-threshold', '0.05']) == 0
  out = capsys.readouterr().out
  assert f'{len(expected.scores)} objects scoring >= 0.05' in out, out
  assert out.count(' at x0 y0 x1 y1 = ') == len(expected.scores) > 0
  drawn = np.asarray(Image.open(tmp_path / 'boxes.png'))
  assert drawn.shape == pixels.shape and (drawn != pixels).any()
  assert predict.main(['--workdir', str(tmp_path / 'detector'), '--detect', str(tmp_path / 'digits.png')]) == 2
  assert '--out is required with --detect' in capsys.readouterr().err


@pytest.mark.parametrize('geometry', [dict(scale=(1333, 800), keep_ratio=True, pad_size=(1344, 1344)),
                                      dict(scale=(1024, 1024), keep_ratio=False, pad_size=(1024, 1024))],
                         ids=['mmdet_1x', 'lesa'])
def test_detect_canvas_is_the_eval_pipelines_at_the_shapes_users_feed(geometry):
  """COCO-like landscape, portrait and small images at the recipes' test geometries: detect's canvas,
  resized size and scale factors are det_transforms.transform's (canvas within one grey level)."""
  import tensorflow as tf
  from lgvit import inference
  from lgvit.data import det_transforms
  loaded = inference.LoadedModel(name='mask_rcnn_resnet50', family='resnet', model=None, variables={}, image_size=1344,
                                 crop_pct=1.0, interpolation='bilinear', class_names=[], source='test',
                                 detection_input=geometry)
  rng = np.random.default_rng(6)
  for h, w in ((480, 640), (640, 427), (333, 500), (100, 90)):
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    objects = {'bbox': tf.constant([[0.1, 0.1, 0.5, 0.5]], tf.float32), 'label': tf.constant([0], tf.int64),
               'is_crowd': tf.constant([False]), 'mask': tf.constant([tf.io.encode_png(np.ones((h, w, 1), np.uint8)).numpy()])}
    want = det_transforms.transform(tf.constant(image), objects, scales=(geometry['scale'],),
                                    keep_ratio=geometry['keep_ratio'], pad_size=geometry['pad_size'])
    canvas, hw = loaded.detection_canvas(image)
    assert hw == tuple(want['image_hw'].numpy()), (h, w)
    np.testing.assert_allclose(np.asarray(want['scale']), (hw[0] / h, hw[1] / w), rtol=1e-6)
    assert canvas.shape == tuple(want['image'].shape)
    assert np.abs(canvas.astype(int) - want['image'].numpy().astype(int)).max() <= 1, (h, w)



@pytest.mark.parametrize('framework', list(FRAMEWORK_CONFIGS))
def test_every_framework_recipe_builds_over_every_backbone(framework):
  """configs/<framework>.py is configs/mask_rcnn.py's recipe for that framework's registered model: masks
  scored only where it predicts them, Cascade Mask R-CNN over the transformers at 3x (NomMer Table 2),
  CoTNet's box-only detectors on ResNeSt's range of shorter sides."""
  config = FRAMEWORK_CONFIGS[framework]
  for backbone in mask_rcnn.BACKBONES:
    for arg in ('', ',demo'):
      c = config.get_config(f'backbone={backbone}{arg}')
      schema.check(c, device_count=1)
      assert c.model == f'{framework}_{backbone}' and c.task == 'detection'
      tasks.of_config(c).check_model(c.model)
    c = config.get_config(f'backbone={backbone}')
    base = mask_rcnn.get_config(f'backbone={backbone}')
    assert c.det.iou_types == (('bbox', 'segm') if mask_rcnn.FRAMEWORKS[framework] else ('bbox',))
    three_x = framework == 'cascade_mask_rcnn' and backbone in mask_rcnn.TRANSFORMER
    assert c.num_epochs == (36.0 if three_x else base.num_epochs)
    assert config.get_config(f'backbone={backbone},schedule=1x').num_epochs == base.num_epochs
    assert (c.optim.optimizer, c.schedule.lr) == (base.optim.optimizer, base.schedule.lr)
    if backbone in mask_rcnn.COTNET:
      want = mask_rcnn.COTNET_SCALES if mask_rcnn.FRAMEWORKS[framework] else mask_rcnn.COTNET_RANGE_SCALES
      assert tuple(map(tuple, c.aug.scales)) == want
  with pytest.raises(ValueError, match='unknown detection framework'):
    mask_rcnn.get_config('backbone=resnet50,framework=htc_rcnn')


@pytest.mark.parametrize('framework', ['faster_rcnn', 'cascade_rcnn', 'cascade_mask_rcnn'])
def test_each_framework_trains_one_step_on_a_coco_shaped_batch(framework):
  """The COCO recipe (80 classes, 100 object slots, stride-2 masks) with tiny widths on a 128-pixel canvas:
  one SGD step of the task's train forward gives a finite loss with every stage's terms, and changes the
  box heads."""
  c = FRAMEWORK_CONFIGS[framework].get_config('backbone=resnet50')
  c.unlock()
  c.model_kwargs = {k: v for k, v in TINY.items() if k != 'num_classes'}
  c.data.update(pad_size=(128, 128), image_size=128)
  g, s = c.data.max_instances, c.data.mask_stride
  task, model = tasks.of_config(c), build_model(c)
  settings = task.settings(c)
  variables = jax.jit(lambda: init_variables(model, 128, 0))()
  rng = np.random.default_rng(0)
  boxes = np.zeros((2, g, 4), np.float32)
  boxes[:, :3] = [[8, 8, 60, 50], [40, 30, 120, 100], [70, 10, 100, 44]]
  valid = np.zeros((2, g), bool)
  valid[:, :3] = True
  masks = np.zeros((2, g, 128 // s, 128 // s), np.uint8)
  for i, (x1, y1, x2, y2) in enumerate(boxes[0, :3].astype(int) // s):
    masks[:, i, y1:y2, x1:x2] = 255
  batch = {'image': rng.integers(0, 255, (2, 128, 128, 3), dtype=np.uint8),
           'image_hw': np.array([[128, 128], [128, 112]], np.int32), 'gt_boxes': boxes,
           'gt_labels': rng.integers(0, 80, (2, g)).astype(np.int32), 'gt_masks': masks, 'gt_valid': valid,
           'valid': np.ones(2, np.int32), 'mask': np.ones(2, np.int32)}
  forward = task.train_forward(model, settings)
  key = jax.random.PRNGKey(0)

  @jax.jit
  def step(params, batch_stats, batch):
    rngs = {n: key for n in ('dropout', 'drop_path', 'gumbel')}
    grad_fn = jax.value_and_grad(lambda p: forward(p, batch_stats, normalize(batch['image']), batch, rngs, (key, key)),
                                 has_aux=True)
    (loss, (metrics, _)), grads = grad_fn(params)
    return loss, metrics, jax.tree_util.tree_map(lambda p, g: p - 0.01 * g, params, grads)

  loss, metrics, params = step(variables['params'], variables['batch_stats'], batch)
  assert np.isfinite(float(loss)) and float(loss) > 0
  cascade = framework.startswith('cascade')
  want = {f's{t}.loss_bbox' for t in range(3)} if cascade else {'loss_bbox'}
  assert want <= set(metrics) and (('s2.loss_mask' in metrics) == (framework == 'cascade_mask_rcnn'))
  head = 'bbox_heads_2' if cascade else 'bbox_head'
  moved = jax.tree_util.tree_map(lambda a, b: float(jnp.abs(a - b).max()), params[head], variables['params'][head])
  assert max(jax.tree_util.tree_leaves(moved)) > 0
