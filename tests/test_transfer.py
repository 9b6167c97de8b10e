"""configs/transfer.py: its arguments and recipe, the head it re-initialises, and a run on TFDS cifar10."""
import re

import flax
import jax
import numpy as np
import pytest

from configs import transfer
from conftest import FAMILY_MODELS, RESNET_TINY, random_variables, save_variables_dir, small_kwargs
from lgvit import checkpoint, modeling, schema, train
from lgvit.data import transforms
from lgvit.models import create_model, list_models, model_info


@pytest.mark.parametrize('dataset', sorted(transfer.DATASETS))
def test_known_datasets_take_big_vision_splits_lengths_and_recipe(dataset):
  d = transfer.DATASETS[dataset]
  c = transfer.get_config(f'model=nommer_t,dataset={dataset}')
  assert (c.data.dataset, c.data.train_split, c.data.eval_split, c.num_classes) == (dataset, d.train, d.held_out,
                                                                                     d.classes)
  assert (c.num_train_steps, c.schedule.warmup_steps, c.batch_size) == (d.steps, d.warmup, 512)
  assert (c.optim.optimizer, c.optim.momentum, c.optim.nesterov, c.optim.weight_decay, c.optim.grad_clip_norm) == \
      ('sgd', 0.9, False, 0.0, 1.0)
  assert (c.schedule.lr, c.schedule.lr_base_batch, c.schedule.decay) == (0.01, 512, 'cosine')
  assert c.aug.mixup_alpha == c.aug.cutmix_alpha == c.aug.label_smoothing == 0.0 and c.ema_decay == 0.0
  assert c.init_skip == transfer.HEAD
  # Only the target's own held-out split: base_config's ImageNet suite would need five datasets the user lacks.
  assert tuple(c.evals) == ('main',) and (c.evals.main.dataset, c.evals.main.split) == ('', '')
  with pytest.raises(AttributeError):
    c.no_such_field = 1  # locked like every config


# ---------------------------------------------------------------------------------------------
# big_vision's transfer recipe (issue 32): resolution, crops, the zero head, drop path, lengths.
# ---------------------------------------------------------------------------------------------


def test_resolution_is_big_visions_384_with_eval_resize_448():
  """big_vision trains at l_res=384 and evaluates resize_small(h_res=448) | central_crop(384), whatever the
  backbone's own input size; other sizes keep the 448/384 ratio."""
  c = transfer.get_config('model=nommer_t,dataset=cifar10')
  assert c.data.image_size == 384 != model_info('nommer_t').input_size
  assert transforms.resized_shape(384, 384, c.data.image_size, c.data.crop_pct) == (448, 448)
  assert transforms.resized_shape(300, 400, c.data.image_size, c.data.crop_pct) == (448, 597)
  small = transfer.get_config('model=resnet50,dataset=cifar10,res=96')
  assert transforms.resized_shape(96, 96, small.data.image_size, small.data.crop_pct) == (112, 112)


def _png(array):
  import tensorflow as tf
  return tf.io.encode_png(array).numpy()


def _resized(image, h, w):
  """The reference resize: lgvit's bilinear antialiased kernel (docs/transfer.md), rounded to uint8."""
  import tensorflow as tf
  out = tf.image.resize(tf.constant(image), (h, w), method='bilinear', antialias=True)
  return np.asarray(tf.cast(tf.clip_by_value(tf.round(out), 0, 255), tf.uint8))


def test_eval_is_resize_small_then_central_crop():
  """big_vision's eval ``resize_small(h_res) | central_crop(l_res)``: the shorter side to 448/384 of the size
  (37 at 32), the aspect kept, then the centre; not the whole image (crop_pct 1.0)."""
  from lgvit.data import pipeline
  c = transfer.get_config('model=resnet50,dataset=cifar10,demo')
  image = np.random.default_rng(0).integers(0, 256, (40, 50, 3), np.uint8)
  crop = pipeline.eval_image(_png(image), c.data.image_size, c.data.crop_pct, c.data.interpolation)
  resized = _resized(image, 37, 46)  # 50 * 37 / 40 = 46.25
  np.testing.assert_array_equal(crop, resized[2:34, 7:39])


@pytest.mark.parametrize('dataset,crop', [('cifar10', 'resmall_crop'), ('cifar100', 'resmall_crop'),
                                          ('imagenet2012', 'inception_crop'), ('oxford_iiit_pet', 'inception_crop'),
                                          ('oxford_flowers102', 'inception_crop'), ('lgvit_digits', 'resmall_crop'),
                                          ('food101', 'resmall_crop')])
def test_train_crop_is_big_visions_per_dataset(dataset, crop):
  """resize_small | random_crop by default, inception crop where big_vision's docstring picked it."""
  extra = ',train_examples=75750' if dataset == 'food101' else ''
  assert transfer.get_config(f'model=resnet50,dataset={dataset}{extra}').aug.crop == crop
  for chosen in ('inception_crop', 'resmall_crop'):
    assert transfer.get_config(f'model=resnet50,dataset={dataset},crop={chosen}{extra}').aug.crop == chosen
  with pytest.raises(ValueError, match='unknown crop'):
    transfer.get_config(f'model=resnet50,dataset={dataset},crop=center{extra}')


def test_resmall_crop_is_a_random_window_of_the_resize_small_image(tiny_cifar10):
  """Training with crop='resmall_crop': every image is an image_size window, at a random place, of the image
  resized as the eval resizes it (big_vision ``resize_small(h_res) | random_crop(l_res)``)."""
  import tensorflow as tf
  import tensorflow_datasets as tfds
  from lgvit.data import pipeline
  c = transfer.get_config('model=resnet50,dataset=cifar10,demo')
  c.unlock()
  c.data.update(data_dir=tiny_cifar10, image_size=24, cache_train=False)  # 24 / (384 / 448) -> 28
  c.aug.hflip = False
  builder = pipeline.get_builder('cifar10', tiny_cifar10)
  kw = dict(seed=0, epoch=0, start_step=0, steps_per_epoch=2, shard_batch=8, shard=0, shard_count=1)
  records, _ = pipeline.shard_records(c.data, builder, **kw)
  sources = [tf.io.decode_image(e['image'], channels=3).numpy() for _, e in records]
  crops = np.concatenate([b['image'] for b in tfds.as_numpy(pipeline.shard_dataset(c.data, c.aug, builder, **kw))])
  assert crops.shape == (16, 24, 24, 3) and len(sources) == 16
  offsets = set()
  for source, crop in zip(sources, crops):
    resized = _resized(source, 28, 28)
    at = [(y, x) for y in range(5) for x in range(5) if np.array_equal(resized[y:y + 24, x:x + 24], crop)]
    assert at, 'not a window of the resized image'
    offsets.update(at)
  assert len(offsets) > 3  # random places, not the centre


def test_new_head_starts_at_zero():
  """big_vision resets the head "to init (of zeros)": transfer sets init_zeros to the head, apart from
  init_skip (a wider init_skip keeps its extra leaves fresh); other configs zero nothing."""
  c = transfer.get_config('model=resnet50,dataset=cifar10')
  assert c.init_zeros == c.init_skip == transfer.HEAD
  assert schema.base_config('resnet50').init_zeros == ''
  target = {'params': {'fc': {'kernel': np.ones((4, 3), np.float32), 'bias': np.ones(3, np.float32)},
                       'conv': {'relative': np.ones(2, np.float32), 'kernel': np.ones(2, np.float32)}}}
  loaded = {'params': {'fc': {'kernel': np.full((4, 9), 5.0), 'bias': np.full(9, 5.0)},
                       'conv': {'relative': np.full(7, 5.0), 'kernel': np.zeros(2)}}}
  adapted = checkpoint.adapt_variables(loaded, target, transfer.HEAD + '|relative', zeros=transfer.HEAD)
  assert not adapted['params']['fc']['kernel'].any() and not adapted['params']['fc']['bias'].any()
  assert adapted['params']['fc']['kernel'].dtype == np.float32 and adapted['params']['fc']['kernel'].shape == (4, 3)
  assert adapted['params']['conv']['relative'].all()  # skipped, not zeroed: the model's own values
  assert not adapted['params']['conv']['kernel'].any()  # loaded
  fresh = checkpoint.adapt_variables(loaded, target, transfer.HEAD + '|relative')
  assert fresh['params']['fc']['kernel'].all()


def test_backbone_drop_path_is_off(tmp_path):
  """big_vision's and BiT's transfers train without stochastic depth or dropout: a backbone's drop path
  (NomMer-T registers 0.1; a training run's model_kwargs carry its own) is switched off."""
  c = transfer.get_config('model=nommer_t,dataset=cifar10')
  assert model_info('nommer_t').defaults['drop_path_rate'] == 0.1
  assert c.model_kwargs.drop_path_rate == 0.0 and modeling.build_model(c).drop_path_rate == 0.0
  kwargs = {**RESNET_TINY, 'drop_path_rate': 0.2, 'drop_rate': 0.25}
  src = save_variables_dir(tmp_path / 'src', 'resnet50', kwargs, {'params': {'w': np.zeros(2)}}, num_classes=1000)
  from_run = transfer.get_config(f'dataset=cifar10,init_from={src}')
  assert (from_run.model_kwargs.drop_path_rate, from_run.model_kwargs.drop_rate) == (0.0, 0.0)
  assert tuple(from_run.model_kwargs.stage_planes) == RESNET_TINY['stage_planes']


def test_check_config_knows_the_recipe_only_fields():
  from configs import resnet
  from lgvit.errors import ConfigError
  train.check_config(resnet.get_config('demo'))  # aug.crop at its default
  c = transfer.get_config('model=resnet50,dataset=cifar10,demo')
  train.check_config(c)
  c.aug.crop = 'central_crop'
  with pytest.raises(ConfigError, match='aug.crop must be one of'):
    train.check_config(c)


@pytest.mark.parametrize('examples,steps,warmup', [(918, 500, 100), (19_999, 500, 100), (20_000, 10_000, 500),
                                                   (499_999, 10_000, 500), (500_000, 20_000, 500)])
def test_unknown_datasets_follow_the_bit_hyper_rule(examples, steps, warmup):
  """BiT-HyperRule (big_transfer bit_hyperrule.get_schedule): 500 steps below 20k examples, 10k below 500k,
  else 20k, with 100 / 500 / 500 warm-up steps."""
  c = transfer.get_config(f'model=resnet50,dataset=some_private_set,num_classes=7,train_examples={examples}')
  assert (c.num_train_steps, c.schedule.warmup_steps) == (steps, warmup)
  assert c.eval_every_epochs == pytest.approx(steps * 512 / examples / 10)


def test_bit_hyper_rule_gives_big_visions_table():
  for name, d in transfer.DATASETS.items():
    if name != 'lgvit_digits':  # a CPU-sized length, lgvit's own
      assert transfer.bit_schedule(d.examples) == (d.steps, d.warmup), name


def test_unknown_dataset_size_is_read_from_tfds(tiny_cifar10):
  assert transfer._train_examples_from_tfds('cifar10', 'train[:50%]', tiny_cifar10) == 30
  with pytest.raises(ValueError, match='train_examples=N'):
    transfer._train_examples_from_tfds('cifar10', 'train', tiny_cifar10 + '/nothing_here')


def test_arguments_and_unknown_datasets():
  c = transfer.get_config('model=swin_t,dataset=food101,res=224,steps=50,lr=0.03,train=train[:10%],eval=validation,'
                          'train_examples=7575')
  assert c.num_classes == 101  # read from the TFDS builder's declared features (no data needed)
  assert (c.data.train_split, c.data.eval_split, c.data.image_size, c.num_train_steps) == ('train[:10%]', 'validation',
                                                                                           224, 50)
  assert c.schedule.lr == 0.03 and c.schedule.warmup_steps == 100  # BiT: 7,575 examples is the small tier
  assert transfer.get_config('model=resnet50,dataset=some_private_set,num_classes=7,train_examples=10').num_classes == 7
  demo = transfer.get_config('model=resnet50,dataset=cifar10,demo')
  assert (demo.data.image_size, demo.batch_size, demo.num_train_steps) == (32, 64, 200)
  assert transfer.get_config('model=resnet50,dataset=cifar10,data_dir=/data/tfds').data.data_dir == '/data/tfds'


#: argument string -> what its one-line error says.
BAD_ARGUMENTS = {
    'dataset=cifar10': 'needs model=NAME',
    'model=resnet50,dataset=not_a_tfds_name': 'give it as num_classes=N',
    'model=resnet50,init_from=/no/such/dir': 'init_from=/no/such/dir: .* is not a directory',
    'model=resnet50,size=3': "unknown config argument 'size'",
    'model=resnet50,dataset=some_private_set,num_classes=7,data_dir=/no/such/dir': 'give train_examples=N',
    'model=resnet50,dataset=cifar10,train_examples=100': 'train_examples is for datasets outside the table',
    'model=resnet50,dataset=cifar10,crop=central_crop': "unknown crop 'central_crop'",
}


@pytest.mark.parametrize('arg', sorted(BAD_ARGUMENTS))
def test_bad_arguments_are_clear_errors(arg):
  with pytest.raises(ValueError, match=BAD_ARGUMENTS[arg]):
    transfer.get_config(arg)


@pytest.mark.parametrize('family', sorted(FAMILY_MODELS))
def test_head_pattern_matches_exactly_the_leaves_that_depend_on_the_class_count(family):
  name = FAMILY_MODELS[family]

  def shapes(num_classes):
    model = create_model(name, num_classes=num_classes, **small_kwargs(name))
    tree = jax.eval_shape(lambda: modeling.init_variables(model, 32, 0))
    return {'/'.join(k): v.shape for k, v in flax.traverse_util.flatten_dict(tree).items()}

  a, b = shapes(10), shapes(37)
  depends = {k for k in a if a[k] != b[k]}
  assert depends and {k for k in a if re.search(transfer.HEAD, k)} == depends


def test_every_registered_model_has_a_transfer_config():
  for name in list_models():
    assert transfer.get_config(f'model={name},dataset=cifar10').model == name


def test_architecture_comes_from_init_from(tmp_path):
  src = save_variables_dir(tmp_path / 'src', 'resnet50', RESNET_TINY, {'params': {'w': np.zeros(2)}}, num_classes=1000)
  c = transfer.get_config(f'dataset=oxford_iiit_pet,init_from={src},demo')
  assert c.model == 'resnet50' and c.model_kwargs.to_dict() == {**RESNET_TINY, 'drop_path_rate': 0.0}
  assert c.init_from == src
  assert transfer.get_config(f'model=resnet101,init_from={src}').model == 'resnet101'  # a variant of the family


# ---------------------------------------------------------------------------------------------
# End to end: TFDS's own cifar10 builder prepared from synthetic CIFAR binaries.
# ---------------------------------------------------------------------------------------------


def _write_cifar10_binaries(root, rng, per_file: int = 12, test: int = 10):
  """``cifar-10-batches-bin/`` as the CIFAR site serves it: per record 1 label byte + 3x32x32 planes."""
  folder = root / 'cifar-10-batches-bin'
  folder.mkdir(parents=True)
  (folder / 'batches.meta.txt').write_text('\n'.join(f'class{i}' for i in range(10)) + '\n')

  def records(n):
    labels = rng.integers(0, 10, (n, 1), dtype=np.uint8)
    return np.concatenate([labels, rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)], axis=1).tobytes()

  for i in range(1, 6):
    (folder / f'data_batch_{i}.bin').write_bytes(records(per_file))
  (folder / 'test_batch.bin').write_bytes(records(test))
  return root


@pytest.fixture(scope='module')
def tiny_cifar10(tmp_path_factory):
  import tensorflow_datasets as tfds
  root = tmp_path_factory.mktemp('cifar')
  extracted = _write_cifar10_binaries(root / 'download', np.random.default_rng(0))
  builder = tfds.builder('cifar10', data_dir=str(root / 'tfds'))
  with pytest.MonkeyPatch.context() as patch:  # what TFDS's DatasetBuilderTestCase does with its dummy data
    patch.setattr(tfds.download.DownloadManager, 'download_and_extract', lambda self, url: extracted)
    builder.download_and_prepare()
  assert builder.info.splits['train'].num_examples == 60
  return str(root / 'tfds')


def test_transfer_loads_the_backbone_and_trains_a_new_head_on_cifar10(tiny_cifar10, tmp_path):
  # The backbone: a converted-checkpoint dir of an ImageNet-headed (1000 classes) ResNet.
  backbone = create_model('resnet50', num_classes=1000, **RESNET_TINY)
  source = random_variables(backbone, np.zeros((1, 32, 32, 3), np.float32), seed=3, scale=0.1)
  src = save_variables_dir(tmp_path / 'src', 'resnet50', RESNET_TINY, source, num_classes=1000)
  c = transfer.get_config(f'dataset=cifar10,init_from={src},demo')
  c.unlock()
  c.data.data_dir = tiny_cifar10
  c.batch_size, c.eval_batch_size, c.num_train_steps = 8, 8, 2
  c.schedule.lr = 0.0  # the weights after training are exactly those it started from
  result = train.train_and_evaluate(c, str(tmp_path / 'run'), async_checkpoints=False)
  assert result['status'] == train.FINISHED and result['step'] == 2 and 0.0 <= result['eval_top1'] <= 1.0

  trained = flax.traverse_util.flatten_dict(checkpoint.load_variables(str(tmp_path / 'run'))['params'])
  loaded = flax.traverse_util.flatten_dict(source['params'])
  fresh = flax.traverse_util.flatten_dict(
      modeling.init_variables(modeling.build_model(c), c.data.image_size, c.seed)['params'])
  width = loaded['fc', 'kernel'].shape[0]
  assert trained['fc', 'kernel'].shape == (width, 10) and loaded['fc', 'kernel'].shape == (width, 1000)
  backbone_keys = [k for k in trained if k[0] != 'fc']
  assert len(backbone_keys) == len(loaded) - 2
  for k in backbone_keys:
    np.testing.assert_array_equal(trained[k], loaded[k], err_msg='/'.join(k))
    assert not np.array_equal(trained[k], fresh[k]) or np.all(loaded[k] == fresh[k])
  assert np.any(fresh['fc', 'kernel'])
  for k in (('fc', 'kernel'), ('fc', 'bias')):
    np.testing.assert_array_equal(trained[k], np.zeros_like(fresh[k]))  # the new head starts at zero (big_vision)
