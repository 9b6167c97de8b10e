"""Multi-scale features: ``create_model(name, features_only=True)`` for every family.

Each family's small (demo-sized) model must return its stage outputs at its registered
``feature_strides`` (4/8/16/32; LESA: 4/8/16/16) for non-square inputs, and those tensors must be
exactly what the full model computes at the end of each stage (read independently with
``capture_intermediates``).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lgvit.models import create_model, list_models, model_info
from conftest import FAMILY_MODELS, random_variables, small_kwargs

NON_SQUARE = (32, 64)


def stage_outputs(family, model, captured):
  """The last module output of every stage of the full model, as (B, H, W, C) maps."""
  def out(name):
    return np.asarray(captured[name]['__call__'][0])

  if family in ('resnet', 'lesa', 'cotnet'):
    return [out(f'layer{s + 1}_{d - 1}') for s, d in enumerate(model.stage_depths)]
  if family == 'nommer':
    d = model.depths
    s1, s2 = out(f'stage1_block{d[0] - 1}'), out(f'stage2_block{d[1] - 1}')
    s3, s4 = out(f'stage3_block{d[2] - 1}'), out(f'stage4_block{d[3] - 1}')[:, 1:]  # drop the class token
    b, h, w = s2.shape[:3]
    return [s1, s2, s3.reshape(b, h // 2, w // 2, -1), s4.reshape(b, h // 4, w // 4, -1)]
  if family == 'salg':
    d = model.depths
    s4 = out(f'stage4_block{d[3] - 1}')
    s3 = out('stage3')
    return [out('stage1'), out('stage2'), s3, s4.reshape(s3.shape[0], s3.shape[1] // 2, s3.shape[2] // 2, -1)]
  if family == 'swin':
    return [out(f'stage{s + 1}_{d - 1}') for s, d in enumerate(model.depths)]
  raise NotImplementedError(family)


@pytest.mark.parametrize('family', sorted(FAMILY_MODELS))
def test_features_are_the_stage_outputs_at_their_strides(family):
  name = FAMILY_MODELS[family]
  (h, w), strides = NON_SQUARE, model_info(name).feature_strides
  assert model_info(name).family == family
  kwargs = small_kwargs(name)
  full = create_model(name, num_classes=10, **kwargs)
  feats = create_model(name, num_classes=10, features_only=True, **kwargs)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, h, w, 3))
  variables = random_variables(full, x)

  @jax.jit
  def both(variables, x):  # one compilation for the two forwards
    _, state = full.apply(variables, x, train=False, capture_intermediates=True, mutable=['intermediates'])
    return feats.apply(variables, x, train=False), state

  stages, state = both(variables, x)
  assert isinstance(stages, (list, tuple)) and len(stages) == len(strides)
  assert [f.shape[1:3] for f in stages] == [(h // s, w // s) for s in strides]
  expected = stage_outputs(family, full, state['intermediates'])
  for got, want in zip(stages, expected):
    assert got.shape == want.shape
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('family', sorted(FAMILY_MODELS))
def test_features_of_the_paper_size_model(family):
  """The full-size variant at its registered input size: shapes only (jax.eval_shape, no compute)."""
  name = FAMILY_MODELS[family]
  strides = model_info(name).feature_strides
  size = model_info(name).input_size
  model = create_model(name, features_only=True)
  x = jnp.zeros((1, size, size, 3))
  shapes = jax.eval_shape(lambda: model.init_with_output(jax.random.PRNGKey(0), x, train=False)[0])
  assert [s.shape[1:3] for s in shapes] == [(size // st, size // st) for st in strides]
  channels = [s.shape[-1] for s in shapes]
  assert channels == sorted(channels) and len(set(channels)) >= 3, channels  # widths grow with depth


def test_every_registered_family_is_covered():
  families = {model_info(n).family for n in list_models(task='classification')}
  assert families == set(FAMILY_MODELS), f'add a features_only case for {sorted(families - set(FAMILY_MODELS))}'
