"""configs/transfer.py: its arguments and recipe, the head it re-initialises, and a run on TFDS cifar10."""
import re

import flax
import jax
import numpy as np
import pytest

from configs import transfer
from conftest import FAMILY_MODELS, RESNET_TINY, random_variables, save_variables_dir, small_kwargs
from lgvit import checkpoint, modeling, train
from lgvit.models import create_model, list_models, model_info


@pytest.mark.parametrize('dataset', sorted(transfer.DATASETS))
def test_known_datasets_take_big_vision_splits_lengths_and_recipe(dataset):
  train_split, held_out, _, classes, _, steps, warmup = transfer.DATASETS[dataset]
  c = transfer.get_config(f'model=nommer_t,dataset={dataset}')
  assert (c.data.dataset, c.data.train_split, c.data.eval_split, c.num_classes) == (dataset, train_split, held_out,
                                                                                     classes)
  assert (c.num_train_steps, c.schedule.warmup_steps, c.batch_size) == (steps, warmup, 512)
  assert c.data.image_size == model_info('nommer_t').input_size and c.data.crop_pct == 1.0
  assert (c.optim.optimizer, c.optim.momentum, c.optim.nesterov, c.optim.weight_decay, c.optim.grad_clip_norm) == \
      ('sgd', 0.9, False, 0.0, 1.0)
  assert (c.schedule.lr, c.schedule.lr_base_batch, c.schedule.decay) == (0.01, 512, 'cosine')
  assert c.aug.mixup_alpha == c.aug.cutmix_alpha == c.aug.label_smoothing == 0.0 and c.ema_decay == 0.0
  assert c.init_skip == transfer.HEAD
  assert tuple(c.evals) == ()  # the ImageNet suite of base_config would need five datasets the user lacks
  with pytest.raises(AttributeError):
    c.no_such_field = 1  # locked like every config


def test_arguments_and_unknown_datasets():
  c = transfer.get_config('model=swin_t,dataset=food101,res=384,steps=50,lr=0.03,train=train[:10%],eval=validation')
  assert c.num_classes == 101  # read from the TFDS builder's declared features (no data needed)
  assert (c.data.train_split, c.data.eval_split, c.data.image_size, c.num_train_steps) == ('train[:10%]', 'validation',
                                                                                           384, 50)
  assert c.schedule.lr == 0.03 and c.schedule.warmup_steps == transfer.OTHER_DATASET[3]
  assert transfer.get_config('model=resnet50,dataset=some_private_set,num_classes=7').num_classes == 7
  demo = transfer.get_config('model=resnet50,dataset=cifar10,demo')
  assert (demo.data.image_size, demo.batch_size, demo.num_train_steps) == (32, 64, 200)


#: argument string -> what its one-line error says.
BAD_ARGUMENTS = {
    'dataset=cifar10': 'needs model=NAME',
    'model=resnet50,dataset=not_a_tfds_name': 'give it as num_classes=N',
    'model=resnet50,init_from=/no/such/dir': 'init_from=/no/such/dir: .* is not a directory',
    'model=resnet50,size=3': "unknown config argument 'size'",
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
  assert c.model == 'resnet50' and c.model_kwargs.to_dict() == RESNET_TINY and c.init_from == src
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
  for k in (('fc', 'kernel'), ('fc', 'bias')):
    np.testing.assert_array_equal(trained[k], fresh[k])  # a new head, as the model initialises it
