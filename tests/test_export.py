"""Export round trips: orbax params-only checkpoint, flat npz, and a jax.export function with a symbolic batch."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import resnet50
from lgvit import checkpoint, export, modeling, train
from lgvit.models import create_model
from conftest import FAMILY_MODELS, small_kwargs

@pytest.mark.parametrize('family', sorted(FAMILY_MODELS))
def test_serialized_inference_matches_apply(family):
  name = FAMILY_MODELS[family]
  model = create_model(name, num_classes=7, **small_kwargs(name))
  variables = modeling.init_variables(model, 32, 0)
  images = np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3)).astype(np.float32)
  # Jitted: op by op, the demo transformers' forward takes ~30 s on 2 cores.
  apply = jax.jit(lambda v, x: model.apply(v, modeling.normalize(x), train=False))
  expected = apply(variables, images)
  exported = jax.export.deserialize(bytearray(export.serialize(model, variables, 32)))
  batch_dim = exported.in_avals[0].shape[0]
  assert not isinstance(batch_dim, int) and str(batch_dim) == 'b'  # serialized for any batch size
  # One call (each new batch size compiles the module again; test_export_cli_from_a_training_workdir
  # calls a ResNet export at two batch sizes).
  np.testing.assert_allclose(exported.call(images), expected, rtol=1e-5, atol=1e-5)
  flat = export.flatten(variables)
  back = export.unflatten(flat)
  np.testing.assert_allclose(apply(back, images), expected, rtol=1e-6)


def test_export_cli_from_a_training_workdir(tmp_path):
  c = resnet50.get_config('demo')
  c.unlock()
  c.data.data_dir = str(tmp_path / 'tfds')
  c.num_train_steps, c.log_every_steps, c.checkpoint_every_steps = 2, 1, 2
  c.ema_decay = 0.5
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(c, workdir, async_checkpoints=False)
  out = str(tmp_path / 'export')
  assert export.main(['--workdir', workdir, '--out', out]) == 0
  from_ckpt = checkpoint.load_variables(out + '/variables')
  with np.load(out + '/variables.npz') as z:
    from_npz = export.unflatten({k: z[k] for k in z.files})
  ema = checkpoint.load_variables(workdir, prefer_ema=True)
  chex.assert_trees_all_equal(from_ckpt, from_npz, ema)
  model = modeling.build_model(c)
  images = np.random.default_rng(1).integers(0, 255, (3, 32, 32, 3)).astype(np.uint8)
  with open(out + '/model.jax', 'rb') as f:
    fn = export.deserialize(f.read())
  expected = model.apply(from_npz, modeling.normalize(jnp.asarray(images)), train=False)
  np.testing.assert_allclose(fn(images.astype(np.float32)), expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(fn(images[:1].astype(np.float32)), expected[:1], rtol=1e-5, atol=1e-5)  # any batch
