"""Input pipelines: determinism, exact resume by skipping, eval coverage with padding; what the labels mean."""
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import resnet50
from lgvit.data import classes, pipeline


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  c = resnet50.get_config('demo')
  c.unlock()
  c.data.data_dir = str(tmp_path_factory.mktemp('tfds'))
  c.batch_size = 8
  builder = pipeline.get_builder('lgvit_digits', c.data.data_dir)
  return c, builder


def _batches(c, builder, epoch, start, spe=5, proc=(0, 1)):
  ds = pipeline.train_dataset(c.data, c.aug, builder, batch_size=c.batch_size, seed=c.seed, epoch=epoch,
                              start_step=start, steps_per_epoch=spe, process_index=proc[0], process_count=proc[1])
  return list(pipeline.as_numpy(ds))


def test_digits_splits(setup):
  _, builder = setup
  assert pipeline.num_examples(builder, 'train') == 1437
  assert pipeline.num_examples(builder, 'validation') == 360
  assert pipeline.num_classes(builder) == 10


def test_train_stream_is_deterministic_and_resumable(setup):
  c, builder = setup
  full = _batches(c, builder, epoch=3, start=0)
  again = _batches(c, builder, epoch=3, start=0)
  resumed = _batches(c, builder, epoch=3, start=2)
  assert len(full) == 5 and len(resumed) == 3
  for a, b in zip(full, again):
    np.testing.assert_array_equal(a['image'], b['image'])
  for a, b in zip(full[2:], resumed):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])
  other_epoch = _batches(c, builder, epoch=4, start=0)
  assert not np.array_equal(full[0]['label'], other_epoch[0]['label'])
  assert full[0]['image'].dtype == np.uint8 and full[0]['image'].shape == (8, 32, 32, 3)


def test_global_stream_does_not_depend_on_process_count(setup):
  c, builder = setup
  c.data.shards = 2
  try:
    one = _batches(c, builder, epoch=1, start=1, spe=3)
    halves = [_batches(c, builder, epoch=1, start=1, spe=3, proc=(p, 2)) for p in range(2)]
  finally:
    c.data.shards = 0
  for s, batch in enumerate(one):
    np.testing.assert_array_equal(batch['image'], np.concatenate([h[s]['image'] for h in halves]))
    np.testing.assert_array_equal(batch['label'], np.concatenate([h[s]['label'] for h in halves]))


@pytest.mark.parametrize('procs', [1, 3])
def test_eval_covers_every_example_once(setup, procs):
  c, builder = setup
  seen, steps_each = [], set()
  for p in range(procs):
    ds, steps = pipeline.eval_dataset(c.data, builder, local_batch=50, process_index=p, process_count=procs)
    batches = list(pipeline.as_numpy(ds))
    assert len(batches) == steps
    steps_each.add(steps)
    for b in batches:
      seen.append(b['mask'].sum())
  assert len(steps_each) == 1  # every process runs the same number of eval steps
  assert sum(seen) == 360


def test_missing_dataset_error_says_how_to_prepare(tmp_path):
  with pytest.raises(pipeline.DatasetNotFoundError, match='tfds build imagenet2012 --manual_dir'):
    pipeline.get_builder('imagenet2012', str(tmp_path))


def test_imagenet_class_names_are_in_tfds_label_order():
  rows = classes.imagenet_synsets_and_lemmas()
  synsets = [s for s, _ in rows]
  assert len(rows) == 1000 and synsets == sorted(synsets) and len(set(synsets)) == 1000
  labels = os.path.join(os.path.dirname(tfds.__file__), 'datasets', 'imagenet2012', 'labels.txt')
  if os.path.exists(labels):
    with open(labels) as f:
      assert synsets == f.read().split()
  names = classes.imagenet_class_names()
  assert (names[0], names[207], names[281], names[999]) == ('tench', 'golden retriever', 'tabby', 'toilet tissue')


def test_class_names_per_dataset():
  assert classes.class_names('lgvit_digits', 10) == [str(i) for i in range(10)]
  assert classes.class_names('cifar10', 10)[3] == 'class 3'
  assert classes.class_names('imagenet2012', 1000)[281] == 'tabby'
  assert classes.class_names('scene_parse150', 150)[:3] == ['wall', 'building', 'sky']
  assert classes.class_names('lgvit_digits_seg', 11) == ['background'] + [str(d) for d in range(10)]


def test_imagenet_a_and_r_are_200_imagenet_labels():
  a, r = classes.imagenet_subset_labels('imagenet_a'), classes.imagenet_subset_labels('imagenet_r')
  for labels in (a, r):
    assert labels.shape == (200,) and labels.dtype == np.int32 and (np.diff(labels) > 0).all()
    assert 0 <= labels[0] and labels[-1] < 1000
  assert not np.array_equal(a, r)
  names = classes.imagenet_class_names()
  assert (names[a[0]], names[r[0]]) == ('stingray', 'goldfish')  # ImageNet labels 6 and 1
  with pytest.raises(ValueError, match='imagenet_a'):
    classes.imagenet_subset_labels('imagenet_v2')


def test_palette_for_cycles_ades_colour_map():
  _, colours = classes.ade20k_classes()
  palette = classes.palette_for(152)
  assert palette.shape == (152, 3) and palette.dtype == np.uint8
  np.testing.assert_array_equal(palette[:150], colours)
  np.testing.assert_array_equal(palette[150:], colours[:2])
