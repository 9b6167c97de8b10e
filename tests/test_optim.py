"""LR schedules and weight-decay masks against closed forms."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lgvit import optim, schema


def _cfg(**kw):
  """config.schedule of a base config with ``kw`` set."""
  schedule = schema.base_config('resnet50').schedule
  for k, v in kw.items():
    schedule[k] = v
  return schedule


def test_timm_cosine_with_warmup_per_step():
  c = _cfg(lr=5e-4, lr_base_batch=512, warmup_lr=5e-7, min_lr=5e-6, warmup_epochs=2.0, unit='step',
           warmup_prefix=False)
  spe, total = 10, 100
  sched = optim.lr_schedule(c, 1024, spe, total)
  base, warm, lo = 1e-3, 1e-6, 1e-5
  assert math.isclose(float(sched(0)), warm, rel_tol=1e-5)
  assert math.isclose(float(sched(10)), warm + 10 * (base - warm) / 20, rel_tol=1e-5)
  t = 50
  assert math.isclose(float(sched(t)), lo + 0.5 * (base - lo) * (1 + math.cos(math.pi * t / total)), rel_tol=1e-5)
  assert math.isclose(float(sched(total)), lo, rel_tol=1e-4)


def test_per_epoch_schedule_is_constant_within_an_epoch():
  c = _cfg(lr=0.1, lr_base_batch=256, warmup_lr=1e-4, min_lr=1e-5, warmup_epochs=5.0, unit='epoch',
           lr_scale_warmup_min=False)
  sched = optim.lr_schedule(c, 640, 100, 35000)
  assert float(sched(0)) == float(sched(99))
  base = 0.25
  assert math.isclose(float(sched(500)), 1e-5 + 0.5 * (base - 1e-5) * (1 + math.cos(math.pi * 5 / 350)), rel_tol=1e-5)


def test_warmup_prefix_cosine_to_zero():
  c = _cfg(lr=0.05, lr_base_batch=128, warmup_epochs=5.0, warmup_prefix=True, min_lr=0.0)
  sched = optim.lr_schedule(c, 128, 10, 950)
  assert math.isclose(float(sched(50)), 0.05, rel_tol=1e-6)
  assert math.isclose(float(sched(500)), 0.05 * 0.5 * (1 + math.cos(math.pi * 450 / 900)), rel_tol=1e-5)


def test_weight_decay_masks():
  params = {'conv': {'kernel': jnp.zeros((3, 3, 2, 2)), 'bias': jnp.zeros(2)}, 'bn': {'scale': jnp.zeros(2)},
            'pos_embedding': jnp.zeros((1, 2, 2, 3))}
  m = optim.weight_decay_mask(params, '1d_and_bias')
  assert m['conv']['kernel'] and m['pos_embedding']
  assert not m['conv']['bias'] and not m['bn']['scale']
  assert all(np.ravel(list(optim.weight_decay_mask(params, 'none')['conv'].values())))


def test_mmcv_poly_with_linear_warmup_ratio():
  """mmseg's UperNet schedule: poly power 1 to 0 over 160k, linear warm-up of 1500 iterations, ratio 1e-6."""
  c = _cfg(lr=6e-5, lr_base_batch=0, decay='poly', poly_power=1.0, warmup_steps=1500, warmup_style='mmcv',
           warmup_lr=6e-5 * 1e-6, min_lr=0.0)
  sched = optim.lr_schedule(c, 16, 1263, 160_000)
  poly = lambda t: 6e-5 * (1 - t / 160_000)
  assert math.isclose(float(sched(0)), poly(0) * 1e-6, rel_tol=1e-4)
  k = (1 - 750 / 1500) * (1 - 1e-6)  # mmcv: warmup_lr = regular_lr * (1 - k)
  assert math.isclose(float(sched(750)), poly(750) * (1 - k), rel_tol=1e-5)
  assert math.isclose(float(sched(1500)), poly(1500), rel_tol=1e-5)
  assert math.isclose(float(sched(80_000)), 3e-5, rel_tol=1e-5)
  assert float(sched(160_000)) == 0.0
  c.poly_power = 0.9  # read when the schedule is built
  assert math.isclose(float(optim.lr_schedule(c, 16, 1263, 160_000)(80_000)), 6e-5 * 0.5**0.9, rel_tol=1e-5)


def test_mmseg_swin_weight_decay_mask():
  params = {'backbone': {'stage1_0': {'norm1': {'scale': jnp.zeros(2), 'bias': jnp.zeros(2)},
                                      'attn': {'rel_pos': {'relative_position_bias_table': jnp.zeros((9, 2))},
                                               'attn': {'qkv': {'kernel': jnp.zeros((2, 6)), 'bias': jnp.zeros(6)}}}},
                         'pos_embedding': jnp.zeros((1, 2, 2, 2))},
            'norm0': {'scale': jnp.zeros(2)},
            'decode_head': {'fpn0': {'unit': {'conv': {'kernel': jnp.zeros((3, 3, 2, 2))}, 'bn': {'scale': jnp.zeros(2)}}}}}
  m = optim.weight_decay_mask(params, 'mmseg_swin')
  b = m['backbone']
  assert not b['stage1_0']['norm1']['scale'] and not b['stage1_0']['norm1']['bias'] and not m['norm0']['scale']
  assert not b['stage1_0']['attn']['rel_pos']['relative_position_bias_table'] and not b['pos_embedding']
  assert b['stage1_0']['attn']['attn']['qkv']['kernel'] and b['stage1_0']['attn']['attn']['qkv']['bias']
  assert m['decode_head']['fpn0']['unit']['conv']['kernel'] and m['decode_head']['fpn0']['unit']['bn']['scale']


def test_norms_weight_decay_mask_is_detectron2s():
  """detectron2's WEIGHT_DECAY_NORM=0: the scale and bias of every BatchNorm / LayerNorm / GroupNorm are not
  decayed, whatever their names; every other parameter, biases included, is."""
  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.BatchNorm(use_running_average=True, name='bn1')(nn.Conv(4, (3, 3), name='conv1')(x))
      x = nn.GroupNorm(num_groups=2, name='gn')(nn.Conv(4, (1, 1), name='fpn_lateral')(x))
      x = nn.LayerNorm(name='embed')(x)
      return nn.Dense(3, name='fc')(x)
  params = Net().init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 2)))['params']
  m = optim.weight_decay_mask(params, 'norms')
  for name in ('bn1', 'gn', 'embed'):
    assert m[name] == {'scale': False, 'bias': False}, name
  for name in ('conv1', 'fpn_lateral', 'fc'):
    assert m[name] == {'kernel': True, 'bias': True}, name


def test_warmup_in_steps_overrides_epochs_and_the_cosine_follows_it():
  """big_vision's transfer schedule: linear warm-up over warmup_steps, then cosine to 0 over the rest."""
  c = _cfg(lr=0.01, lr_base_batch=512, warmup_epochs=7.0, warmup_steps=50, warmup_prefix=True, min_lr=0.0,
           warmup_lr=0.0, unit='step')
  sched = optim.lr_schedule(c, 256, 9, 1000)
  base = 0.005  # scaled to the batch
  assert float(sched(0)) == 0.0
  assert math.isclose(float(sched(25)), base * 25 / 50, rel_tol=1e-6)
  assert math.isclose(float(sched(50)), base, rel_tol=1e-6)
  t = 400
  assert math.isclose(float(sched(t)), 0.5 * base * (1 + math.cos(math.pi * (t - 50) / 950)), rel_tol=1e-5)
  assert float(sched(1000)) < 1e-9
