"""Segmentation in the train loop: the ADE20K builder and pipeline, the fixed-canvas eval, the demo run."""
import io
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from lgvit import evals, optim, segmentation, tasks
from lgvit.modeling import make_mesh
from lgvit.tasks import segmentation as segmentation_task
from lgvit.errors import DatasetNotFoundError
from lgvit.models.layers import resize_bilinear

from configs import upernet
from conftest import random_variables
from test_train import run_main


def test_logits_at_label_size_equals_cropping_then_resizing():
  """The canvas path against the direct one: crop the image's region, resize it to the label size."""
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(3, 24, 32, 5)), jnp.float32)
  scaled = np.array([[24, 32], [17, 9], [5, 30]])
  size = np.array([[40, 50], [9, 21], [12, 7]])  # up, mixed, up/down
  out = segmentation_task.logits_at_label_size(logits, jnp.asarray(scaled), jnp.asarray(size), (40, 50))
  assert out.shape == (3, 40, 50, 5)
  for i, ((sh, sw), (lh, lw)) in enumerate(zip(scaled, size)):
    expected = resize_bilinear(logits[i:i + 1, :sh, :sw], (lh, lw))[0]
    np.testing.assert_allclose(out[i, :lh, :lw], expected, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# ADE20K (lgvit_ade20k) from synthetic files in the layout of ADEChallengeData2016.
# ---------------------------------------------------------------------------------------------

TRAIN_SIZES = [(40, 60), (70, 50), (64, 64)]
VAL_SIZES = [(30, 80), (48, 36)]


def _write_split(root: pathlib.Path, part: str, sizes, rng) -> dict[str, np.ndarray]:
  (root / 'images' / part).mkdir(parents=True)
  (root / 'annotations' / part).mkdir(parents=True)
  labels = {}
  for i, (h, w) in enumerate(sizes):
    stem = f'ADE_{part}_{i:08d}'
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    label = np.zeros((h, w), np.uint8)  # 0 = "other", ignored
    label[:h // 2] = 1 + 3 * i  # class 3i in lgvit's 0-based numbering
    label[h // 2:, :w // 3] = 150
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format='JPEG', quality=95)
    (root / 'images' / part / f'{stem}.jpg').write_bytes(buf.getvalue())
    Image.fromarray(label).save(root / 'annotations' / part / f'{stem}.png')
    labels[f'{stem}.jpg'] = label
  return labels


@pytest.fixture(scope='module')
def ade20k(tmp_path_factory):
  from lgvit.data import ade20k as ade
  manual = tmp_path_factory.mktemp('manual')
  rng = np.random.default_rng(3)
  root = manual / ade.FOLDER
  _write_split(root, 'training', TRAIN_SIZES, rng)
  val_labels = _write_split(root, 'validation', VAL_SIZES, rng)
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  ade.main(['--manual_dir', str(manual), '--data_dir', data_dir])
  return data_dir, val_labels


def _config(data_dir, **data):
  c = upernet.get_config('backbone=nommer_t')
  c.unlock()
  c.data.update(data_dir=data_dir, image_size=32, shuffle_buffer=8, **data)
  c.data.scale = (64, 32)
  c.seg.eval_canvas, c.seg.label_canvas = (32, 64), (96, 96)
  c.batch_size = 2
  return c


def _train_batches(c, builder, start_step=0):
  from lgvit.data import pipeline, seg_pipeline
  ds = pipeline.train_dataset(c.data, c.aug, builder, batch_size=2, seed=0, epoch=0, start_step=start_step,
                              steps_per_epoch=1, process_index=0, process_count=1, shard_fn=seg_pipeline.shard_dataset)
  return list(pipeline.as_numpy(ds))


def test_ade20k_train_batches(ade20k):
  from lgvit.data import pipeline
  data_dir, _ = ade20k
  c = _config(data_dir)
  builder = pipeline.get_builder('lgvit_ade20k', data_dir)
  assert pipeline.num_examples(builder, 'train') == 3 and pipeline.num_examples(builder, 'validation') == 2
  (batch,) = _train_batches(c, builder)
  assert batch['image'].shape == (2, 32, 32, 3) and batch['image'].dtype == np.uint8
  assert batch['label'].shape == (2, 32, 32) and list(batch['valid']) == [1, 1]
  # reduce_zero_label: 0 -> 255 (ignored), k -> k - 1; the crop padding is 255 too
  assert set(np.unique(batch['label'])) <= {0, 3, 6, 149, 255}
  (again,) = _train_batches(c, builder)
  for k in batch:
    np.testing.assert_array_equal(batch[k], again[k])  # a pure function of (seed, epoch, position)


def test_ade20k_eval_batches_images_by_padded_shape_and_keeps_every_label_at_its_own_size(ade20k):
  from lgvit.data import pipeline, seg_pipeline
  from lgvit.data.seg_transforms import IGNORE_LABEL
  data_dir, val_labels = ade20k
  c = _config(data_dir)
  builder = pipeline.get_builder('lgvit_ade20k', data_dir)
  batches = list(pipeline.as_numpy(seg_pipeline.eval_dataset(c.data, c.seg, builder, local_batch=3, process_index=0,
                                                             process_count=1)))
  # (30, 80) -> scaled (24, 64) -> padded (32, 64); (48, 36) -> (32, 24): two shapes, one image each
  assert sorted(b['image'].shape for b in batches) == [(1, 32, 32, 3), (1, 32, 64, 3)]
  by_size = {label.shape: label for label in val_labels.values()}  # TFDS's order is its own; sizes differ
  for batch in batches:
    assert list(batch['mask']) == [1] and batch['label'].shape == (1, 96, 96)
    label = by_size[tuple(batch['size'][0])]
    h, w = label.shape
    sh, sw = segmentation.rescale_size(h, w, (64, 32))
    factor = min(1.0, 32 / sh, 64 / sw)  # fit into the 32x64 canvas
    assert tuple(batch['scaled'][0]) == (int(sh * factor), int(sw * factor))
    assert batch['image'].shape[1:3] == tuple(-(-int(s * factor) // 32) * 32 for s in (sh, sw))
    reduced = np.where(label == 0, IGNORE_LABEL, label.astype(np.int64) - 1)
    np.testing.assert_array_equal(batch['label'][0, :h, :w], reduced)
    assert (batch['label'][0, h:] == IGNORE_LABEL).all() and (batch['label'][0, :, w:] == IGNORE_LABEL).all()


def test_in_training_eval_equals_whole_image_inference_image_by_image(ade20k):
  """The train loop's eval (images batched by padded shape, padding masked to the mean colour, on a
  non-square canvas) through the real NomMer UperNet equals lgvit.evaluate's mmseg 'whole' mode, which
  runs each image alone at its own size; and neither matches the old black, canvas-padded input."""
  from lgvit.data import pipeline
  from lgvit.modeling import build_model, init_variables, normalize
  data_dir, _ = ade20k
  c = upernet.get_config('backbone=nommer_t,demo')
  c.unlock()
  c.num_classes = 150
  c.data.update(dataset='lgvit_ade20k', data_dir=data_dir, reduce_zero_label=True)
  c.data.scale = (64, 32)
  c.seg.eval_canvas, c.seg.label_canvas = (64, 96), (96, 96)
  c.eval_batch_size = 2
  builder = pipeline.get_builder('lgvit_ade20k', data_dir)
  model = build_model(c)
  variables = random_variables(model, jnp.zeros((1, 64, 64, 3)), seed=1)  # no compiled init
  settings = tasks.of_config(c).settings(c)
  (spec,) = evals.specs(c)
  in_training = evals.build(spec, evals.Context(model, settings, make_mesh())).run(variables)
  apply_fn = jax.jit(lambda x: model.apply(variables, x, train=False))
  whole = segmentation_task.evaluate_per_image(apply_fn, settings, builder, 'whole')
  assert in_training['count'] == whole['count'] == 2 and in_training['skipped'] == 0
  for key in ('mIoU', 'aAcc', 'mAcc'):
    assert in_training[key] == pytest.approx(whole[key], abs=1e-9), key
  ious = [k for k in whole if k.startswith('IoU/')]
  np.testing.assert_allclose([in_training[k] for k in ious], [whole[k] for k in ious], atol=1e-9)

  # The same images on one 64x96 canvas with black padding (what the eval did before) score otherwise.
  from lgvit.data import seg_pipeline
  import tensorflow_datasets as tfds
  ds = builder.as_dataset(split='validation', shuffle_files=False,
                          decoders={k: tfds.decode.SkipDecoding() for k in seg_pipeline.ENCODED})
  changed = 0
  for ex in tfds.as_numpy(ds):
    image, _ = seg_pipeline.decode(ex)
    scaled = seg_pipeline.scale_for_eval(image, (64, 32), (64, 96))[0].numpy()
    sh, sw = scaled.shape[:2]
    canvas = np.zeros((1, 64, 96, 3), np.uint8)
    canvas[0, :sh, :sw] = scaled
    old = resize_bilinear(apply_fn(normalize(jnp.asarray(canvas))), (64, 96))[:, :sh, :sw]
    padded = np.zeros((1, -(-sh // 32) * 32, -(-sw // 32) * 32, 3), np.float32)
    padded[0, :sh, :sw] = np.asarray(normalize(jnp.asarray(scaled)))
    new = resize_bilinear(apply_fn(jnp.asarray(padded)), padded.shape[1:3])[:, :sh, :sw]
    changed += int(np.abs(np.asarray(old) - np.asarray(new)).max() > 1e-3)
  assert changed == 2


def test_scene_parse150_is_refused_with_the_reason(tmp_path):
  from lgvit.data import seg_pipeline

  class Builder:
    name = 'scene_parse150'

  with pytest.raises(DatasetNotFoundError, match='instance.*lgvit_ade20k'):
    seg_pipeline.num_classes(Builder(), True)


def test_missing_ade20k_says_how_to_build_it(tmp_path):
  from lgvit.data import pipeline
  with pytest.raises(DatasetNotFoundError, match=r'ADEChallengeData2016\.zip.*python -m lgvit\.data\.ade20k'):
    pipeline.get_builder('lgvit_ade20k', str(tmp_path))


# ---------------------------------------------------------------------------------------------
# The demo through the train loop: the logged mIoU against an independent recomputation.
# ---------------------------------------------------------------------------------------------


def test_init_from_a_classification_run_fills_the_backbone(tmp_path):
  """A classifier's weights (here: a random backbone saved as a converted checkpoint) go under
  'backbone'; its head is dropped and the segmentation heads keep their fresh values."""
  from lgvit import checkpoint as ckpt
  from lgvit import train
  from lgvit.modeling import build_model, init_variables
  from lgvit.models import create_model
  c = upernet.get_config('backbone=nommer_t,demo')
  c.unlock()
  backbone_kwargs = dict(c.model_kwargs.backbone_kwargs)
  classifier = create_model('nommer_t', num_classes=10, **backbone_kwargs)
  source = init_variables(classifier, 64, seed=5)
  ckpt.save_variables(str(tmp_path / 'src'), source)
  model = build_model(c)
  tx = optim.make_optimizer(c.optim, init_variables(model, 64, 0)['params'], lambda s: 1e-3)
  state = train.create_state(model, tx, c)
  c.init_from = str(tmp_path / 'src')
  replicated = jax.sharding.NamedSharding(make_mesh(), jax.sharding.PartitionSpec())
  shardings = jax.tree_util.tree_map(lambda _: replicated, state)
  loaded = train.init_from_checkpoint(state, tx, c, replicated, shardings)
  flat_src = dict(jax.tree_util.tree_flatten_with_path(source['params'])[0])
  copied = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(loaded.params['backbone'])[0]:
    np.testing.assert_array_equal(leaf, flat_src[path])
    copied += 1
  assert copied > 10
  fresh = jax.tree_util.tree_leaves(state.params['decode_head'])
  for a, b in zip(jax.tree_util.tree_leaves(loaded.params['decode_head']), fresh):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow  # two demo runs and three passes over 200 images (~3.5 min); the eval itself: test_in_training_eval_...
def test_demo_on_two_devices_resumes_and_logs_the_miou_of_whole_image_inference(tmp_path):
  """The segmentation task on a 2-device mesh: a run stopped after 2 steps resumes to 4; the padded,
  masked eval counts each of the 200 validation images once, and its mIoU / aAcc equal a numpy
  confusion matrix of every image through infer_whole, and what `lgvit.evaluate` reports."""
  workdir, data_dir = tmp_path / 'w', tmp_path / 'tfds'
  args = ['--config=configs/upernet.py:backbone=swin_t,demo', f'--config.data.data_dir={data_dir}',
          '--config.checkpoint_every_steps=2', '--config.eval_every_epochs=100']
  two_devices = dict(XLA_FLAGS='--xla_force_host_platform_device_count=2')
  first = run_main(*args, '--config.num_train_steps=2', workdir=workdir, **two_devices)
  assert '2 devices on 1 process(es)' in first.stdout
  second = run_main(*args, '--config.num_train_steps=4', workdir=workdir, **two_devices)
  assert 'Resuming' in second.stdout and 'from step 2' in second.stdout and 'mIoU' in second.stdout
  rows = [json.loads(l) for l in open(workdir / 'metrics.jsonl')]
  evals = [r for r in rows if 'eval_mIoU' in r]
  assert [r['step'] for r in evals] == [2, 4] and all(r['eval_count'] == 200 for r in evals)
  logged = evals[-1]
  assert 'eval_IoU/background' in logged and 'eval_IoU/7' in logged

  # Independently, on one device: every validation image through infer_whole, a numpy confusion
  # matrix, mmseg's mIoU. The two programs differ (device count, XLA flags), so a few pixels' argmax
  # may flip: 1e-4 is ~80 pixels of the 819,200, far below one image counted twice or left out.
  from lgvit import checkpoint as ckpt
  from lgvit.data import pipeline
  from lgvit.modeling import build_model, normalize
  import tensorflow_datasets as tfds
  c = upernet.get_config('backbone=swin_t,demo')
  model = build_model(c)
  variables = ckpt.load_variables(str(workdir))
  apply = jax.jit(lambda x: model.apply(variables, x, train=False))  # the helpers take normalised images
  cm = np.zeros((11, 11), np.int64)
  for ex in tfds.as_numpy(pipeline.get_builder('lgvit_digits_seg', str(data_dir)).as_dataset(split='validation').batch(50)):
    logits = segmentation.infer_whole(apply, normalize(jnp.asarray(ex['image'])))
    pred, truth = np.asarray(jnp.argmax(logits, -1)).ravel(), ex['annotation'][..., 0].astype(np.int64).ravel()
    cm += np.bincount(truth * 11 + pred, minlength=121).reshape(11, 11)
  assert cm.sum() == 200 * 64 * 64
  inter, union = np.diag(cm), cm.sum(0) + cm.sum(1) - np.diag(cm)
  expected = np.nanmean(np.where(union > 0, inter / np.maximum(union, 1), np.nan))
  assert abs(logged['eval_mIoU'] - expected) < 1e-4
  assert abs(logged['eval_aAcc'] - inter.sum() / cm.sum()) < 1e-4

  # python -m lgvit.evaluate: mmseg's per-image whole mode gives the same numbers here (canvas = image).
  from lgvit import evaluate
  out = tmp_path / 'eval.json'
  assert evaluate.main(['--workdir', str(workdir), '--segment-mode', 'whole', '--out', str(out)]) == 0
  (scores,) = json.loads(out.read_text())['evals'].values()
  assert scores['count'] == 200 and abs(scores['mIoU'] - expected) < 1e-4


def test_train_crop_padding_is_the_mean_colour_whatever_the_uint8_batch_holds(ade20k):
  """mmseg pads after Normalize: the train forward sees 0 (the mean) outside each crop's ``content``."""
  from lgvit.data import pipeline
  from lgvit.modeling import build_model, init_variables, normalize
  data_dir, _ = ade20k
  c = _config(data_dir)
  builder = pipeline.get_builder('lgvit_ade20k', data_dir)
  (batch,) = _train_batches(c, builder)
  assert batch['content'].shape == (2, 2) and (batch['content'] <= 32).all()

  demo = upernet.get_config('backbone=swin_t,demo')
  model = build_model(demo)
  variables = random_variables(model, jnp.zeros((1, 64, 64, 3)))  # no compiled init
  forward = jax.jit(tasks.of_config(demo).train_forward(model, tasks.of_config(demo).settings(demo)), static_argnums=5)
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
  content = np.array([[40, 64], [64, 24]], np.int32)
  inside = (np.arange(64)[None, :, None] < content[:, 0, None, None]) & (np.arange(64)[None, None, :] < content[:, 1, None, None])
  labels = np.where(inside, rng.integers(0, 11, (2, 64, 64)), 255).astype(np.uint8)
  mean = np.round(np.asarray([123.675, 116.28, 103.53])).astype(np.uint8)

  def loss(fill, with_content=True):
    x = np.where(inside[..., None], image, fill).astype(np.uint8)
    fed = {'label': labels, 'valid': np.ones(2, np.int32), **({'content': content} if with_content else {})}
    rngs = {'dropout': jax.random.PRNGKey(0), 'drop_path': jax.random.PRNGKey(1), 'gumbel': jax.random.PRNGKey(2)}
    return float(forward(variables['params'], variables['batch_stats'], normalize(jnp.asarray(x)), fed, rngs, None)[0])

  black, white = loss(0), loss(255)
  assert black == pytest.approx(white, rel=1e-7)  # whatever fills the padding, it is the mean colour
  assert abs(black - loss(mean, with_content=False)) < 1e-4  # ~ padding with the uint8-rounded mean
  # Without the content mask the fill reaches the network (black padding is what the pipeline did before).
  assert abs(loss(0, with_content=False) - loss(255, with_content=False)) > 100 * abs(black - white) + 1e-5
