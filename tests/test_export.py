"""Export round trips: orbax params-only checkpoint, flat npz, a jax.export function and a TF SavedModel, each
with a symbolic batch."""
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import resnet50
from lgvit import checkpoint, export, exporting, modeling, train
from lgvit.models import create_model
from conftest import FAMILY_MODELS, random_variables, small_kwargs

@pytest.mark.parametrize('family', sorted(FAMILY_MODELS))
def test_serialized_inference_matches_apply(family):
  name = FAMILY_MODELS[family]
  model = create_model(name, num_classes=7, **small_kwargs(name))
  variables = random_variables(model, jnp.zeros((1, 32, 32, 3)), seed=3)  # no compiled init
  images = np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3)).astype(np.float32)
  # Jitted: op by op, the demo transformers' forward takes ~30 s on 2 cores.
  apply = jax.jit(lambda v, x: model.apply(v, modeling.normalize(x), train=False))
  expected = apply(variables, images)
  exported = jax.export.deserialize(bytearray(exporting.serialize(model, variables, 32)))
  batch_dim = exported.in_avals[0].shape[0]
  assert not isinstance(batch_dim, int) and str(batch_dim) == 'b'  # serialized for any batch size
  # One call (each new batch size compiles the module again; test_export_cli_from_a_training_workdir
  # calls a ResNet export at two batch sizes).
  np.testing.assert_allclose(exported.call(images), expected, rtol=1e-5, atol=1e-5)
  flat = exporting.flatten(variables)
  back = exporting.unflatten(flat)
  np.testing.assert_allclose(apply(back, images), expected, rtol=1e-6)


def test_export_cli_from_a_training_workdir(digits_dir, tmp_path):
  c = resnet50.get_config('demo')
  c.unlock()
  c.data.data_dir = digits_dir
  c.num_train_steps, c.log_every_steps, c.checkpoint_every_steps = 2, 1, 2
  c.ema_decay = 0.5
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(c, workdir, async_checkpoints=False)
  out = str(tmp_path / 'export')
  assert export.main(['--workdir', workdir, '--out', out]) == 0
  from_ckpt = checkpoint.load_variables(out + '/variables')
  with np.load(out + '/variables.npz') as z:
    from_npz = exporting.unflatten({k: z[k] for k in z.files})
  ema = checkpoint.load_variables(workdir, prefer_ema=True)
  chex.assert_trees_all_equal(from_ckpt, from_npz, ema)
  model = modeling.build_model(c)
  images = np.random.default_rng(1).integers(0, 255, (3, 32, 32, 3)).astype(np.uint8)
  with open(out + '/model.jax', 'rb') as f:
    fn = exporting.deserialize(f.read())
  expected = model.apply(from_npz, modeling.normalize(jnp.asarray(images)), train=False)
  np.testing.assert_allclose(fn(images.astype(np.float32)), expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(fn(images[:1].astype(np.float32)), expected[:1], rtol=1e-5, atol=1e-5)  # any batch
  assert not os.path.exists(out + '/savedmodel')  # the default format writes what it always wrote

  # --format savedmodel: the same weights, served by TensorFlow, at batch sizes 3 and 2.
  out_tf = str(tmp_path / 'export_tf')
  assert export.main(['--workdir', workdir, '--out', out_tf, '--format', 'savedmodel']) == 0
  assert not os.path.exists(out_tf + '/model.jax')
  chex.assert_trees_all_equal(checkpoint.load_variables(out_tf + '/variables'), ema)
  _check_savedmodel(out_tf + '/savedmodel', images, np.asarray(expected))


def _check_savedmodel(path, images, expected):
  """Loads ``path`` with tf.saved_model.load and compares both signatures with ``expected`` logits."""
  import tensorflow as tf
  loaded = tf.saved_model.load(path)
  assert set(loaded.signatures) == set(exporting.SIGNATURES) and 'serving_default' in loaded.signatures
  for name, dtype in exporting.SIGNATURES.items():
    spec = loaded.signatures[name].structured_input_signature[1]['images']
    assert spec.shape.as_list() == [None, *images.shape[1:]] and spec.dtype.name == dtype  # symbolic batch
  # Each (signature, batch size) compiles the model once more: three calls show both signatures and two sizes.
  for name, batch in (('serving_default', len(images)), ('serving_default', len(images) - 1),
                      ('serving_uint8', len(images) - 1)):
    batch_images = tf.constant(images[:batch].astype(exporting.SIGNATURES[name]))
    logits = loaded.signatures[name](images=batch_images)['logits'].numpy()
    np.testing.assert_allclose(logits, expected[:batch], rtol=1e-4, atol=1e-4, err_msg=f'{name} batch {batch}')


@pytest.mark.parametrize('family', [pytest.param(f, marks=() if f == 'nommer' else pytest.mark.slow)
                                    for f in sorted(FAMILY_MODELS)])
def test_savedmodel_matches_apply(family, tmp_path):
  name = FAMILY_MODELS[family]
  model = create_model(name, num_classes=5, **small_kwargs(name))
  images = np.random.default_rng(2).integers(0, 256, (3, 32, 32, 3)).astype(np.uint8)
  variables = random_variables(model, images.astype(np.float32), seed=1)  # no compiled init (30 s for NomMer)
  expected = jax.jit(lambda v, x: model.apply(v, modeling.normalize(x), train=False))(variables, images)
  exporting.save_savedmodel(model, variables, 32, str(tmp_path / 'savedmodel'))
  _check_savedmodel(str(tmp_path / 'savedmodel'), images, np.asarray(expected))


def test_bad_format_and_platforms_are_one_line_errors(tmp_path, capsys):
  assert export.main(['--workdir', str(tmp_path), '--out', str(tmp_path / 'o'), '--platforms', 'cpu,gpu']) == 2
  assert 'subset of cpu, cuda, rocm, tpu' in capsys.readouterr().err
  with pytest.raises(SystemExit):
    export.main(['--workdir', str(tmp_path), '--out', str(tmp_path / 'o'), '--format', 'onnx'])


def test_platforms_lower_for_each_and_run_here_only_if_cpu_is_one():
  model = create_model('resnet50', num_classes=3, **small_kwargs('resnet50'))
  images = np.random.default_rng(4).integers(0, 255, (2, 32, 32, 3)).astype(np.float32)
  variables = random_variables(model, images)
  both = jax.export.deserialize(bytearray(exporting.serialize(model, variables, 32, platforms=['cpu', 'cuda'])))
  assert both.platforms == ('cpu', 'cuda')
  expected = model.apply(variables, modeling.normalize(jnp.asarray(images)), train=False)
  np.testing.assert_allclose(both.call(images), expected, rtol=1e-5, atol=1e-5)
  tpu_only = jax.export.deserialize(bytearray(exporting.serialize(model, variables, 32, platforms=['tpu'])))
  assert tpu_only.platforms == ('tpu',)
  with pytest.raises(ValueError, match='tpu'):  # lowered for a TPU (native kernels): refused on this CPU
    tpu_only.call(images)
