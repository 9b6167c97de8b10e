"""LESA: the layer against a float64 NumPy brute force, the converted official fixtures (eval, float64,
stride 2, train mode), parameter counts, input-size handling and the fusion-gate introspection; the
Tables 1/2 unary/binary weights against brute-force loops; SA-WRN50 and the Attention Augmentation
baseline (the AA layer against a NumPy formulation of Bello et al.)."""
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import fixture_json, fixture_npz, random_variables

from lgvit import checkpoint
from lgvit.convert import ConversionError, from_torch
from lgvit.convert.lesa import image_size_from_checkpoint
from lgvit.errors import InvalidInputSizeError
from lgvit.models import create_model, model_info
from lgvit.models.layers import count_params
from lgvit.models.lesa import (LESA, AttentionAugmentedConv, BinaryTerm, aa_depths, fusion_weight_shares,
                               relative_embeddings, unary_binary_shares, unary_binary_shares_per_layer)

FIXTURES = {  # name -> (stage strides, the LESA layer whose internals are stored, its stride)
    'lesa_small_112': ((1, 2, 2, 1), 'layer3.1.conv2', 1),
    'lesa_small_128_s2': ((1, 2, 2, 2), 'layer4.0.conv2', 2),
}
SMALL = dict(num_classes=10, stage_depths=(1, 1, 2, 1), base_width=16, expansion=1)
LESA_BN_PATHS = {  # official BN name inside a LESA module -> lgvit path inside the layer
    'bn_qkv': ('binary', 'qkv_bn'),
    'bn_similarity': ('binary', 'similarity_bn'),
    'bn_output': ('binary', 'output_bn'),
    'bn_x': ('unary', 'bn'),
    'reasoning.2': ('fusion', 'bn1'),
    'projection.1': ('fusion', 'bn2'),
}


def nhwc(a):
  return jnp.asarray(np.transpose(a, (0, 2, 3, 1)))


def nchw(a):
  return np.transpose(np.asarray(a), (0, 3, 1, 2))


def flax_path(torch_layer):  # 'layer3.1.conv2' -> ('layer3_1', 'conv2')
  stage, block, name = torch_layer.split('.')
  return f'{stage}_{block}', name


@pytest.fixture(scope='module', params=list(FIXTURES))
def converted(request):
  """A fixture file converted, and the eval forward of the whole model (logits, stages, intermediates)."""
  name = request.param
  strides, layer, layer_stride = FIXTURES[name]
  kwargs = dict(SMALL, stage_strides=strides)
  z = fixture_npz('lesa', name)
  state_dict = {k[len('sd/'):]: v for k, v in z.items() if k.startswith('sd/')}
  variables = from_torch('lesa_resnet50', state_dict, **kwargs)
  model = create_model('lesa_resnet50', **kwargs)
  features = create_model('lesa_resnet50', features_only=True, **kwargs)
  x = nhwc(z['input'])
  with jax.default_matmul_precision('highest'):
    logits, state = jax.jit(lambda v, x: model.apply(v, x, train=False, mutable=['intermediates']))(variables, x)
    stages = jax.jit(lambda v, x: features.apply(v, x, train=False))(variables, x)
  return dict(name=name, z=z, meta=fixture_json('lesa', name), kwargs=kwargs, variables=variables, layer=layer,
              layer_stride=layer_stride, sd=state_dict, logits=logits, stages=stages,
              intermediates=state['intermediates'])


# ------------------------------------------------------------------------------------------------
# The binary term against a literal float64 transcription of the spec.
# ------------------------------------------------------------------------------------------------


def relative_index(length):
  return np.arange(length)[:, None] - np.arange(length)[None, :] + length - 1


@pytest.mark.parametrize('length', [1, 2, 5, 49])
def test_relative_embeddings_match_index_table(length):
  table = np.random.default_rng(length).normal(size=(3, 2 * length - 1)).astype(np.float32)
  expanded = np.asarray(relative_embeddings(jnp.asarray(table), length))
  np.testing.assert_array_equal(expanded, table[:, relative_index(length)])


def numpy_binary_term(x, p, bs, groups):
  """B as docs/official_code.md (LESA) describes it, with explicit loops over heads and positions (eval-mode BN)."""
  n, h, w, c = x.shape
  length, d_qk = h * w, c // (2 * groups)

  def bn(v, name, axis):
    shape = [1] * v.ndim
    shape[axis] = -1
    scale = p[name]['scale'] / np.sqrt(bs[name]['var'] + 1e-5)
    return (v - bs[name]['mean'].reshape(shape)) * scale.reshape(shape) + p[name]['bias'].reshape(shape)

  tokens = x.reshape(n, length, c)
  qkv = bn(tokens @ p['qkv']['kernel'], 'qkv_bn', 2)  # (n, L, 2C), channel g*(2C/G) + t
  rel = p['relative']
  sim = np.zeros((n, 3 * groups, length, length))
  for g in range(groups):
    head = qkv[:, :, g * 2 * c // groups:(g + 1) * 2 * c // groups]
    q, k = head[..., :d_qk], head[..., d_qk:2 * d_qk]
    for i in range(length):
      for j in range(length):
        sim[:, g, i, j] = (q[:, i] * k[:, j]).sum(-1)
        sim[:, groups + g, i, j] = q[:, i] @ rel[:d_qk, i - j + length - 1]
        sim[:, 2 * groups + g, i, j] = k[:, j] @ rel[d_qk:2 * d_qk, j - i + length - 1]
  sim = bn(sim, 'similarity_bn', 1)
  logits = sim[:, :groups] + sim[:, groups:2 * groups] + sim[:, 2 * groups:]
  attn = np.exp(logits - logits.max(-1, keepdims=True))
  attn /= attn.sum(-1, keepdims=True)
  pair = np.zeros((n, length, c, 2))
  d_v = c // groups
  for g in range(groups):
    v = qkv[:, :, g * 2 * c // groups + 2 * d_qk:(g + 1) * 2 * c // groups]
    for i in range(length):
      pair[:, i, g * d_v:(g + 1) * d_v, 0] = np.einsum('nj,njc->nc', attn[:, g, i], v)
      emb_v = rel[2 * d_qk:, i - np.arange(length) + length - 1]  # (d_v, L) over keys j
      pair[:, i, g * d_v:(g + 1) * d_v, 1] = attn[:, g, i] @ emb_v.T
  out = bn(pair.reshape(n, length, 2 * c), 'output_bn', 2).reshape(n, length, c, 2).sum(-1)
  return out.reshape(n, h, w, c), attn


@pytest.mark.parametrize('hw', [(3, 5), (4, 4)])
def test_binary_term_matches_numpy_brute_force(hw):
  """Also on a non-square map: offsets are taken in the raster index of the actual width."""
  rng = np.random.default_rng(0)
  c, groups = 32, 4
  x = rng.normal(size=(2, *hw, c))
  module = BinaryTerm(groups)
  with jax.enable_x64(True):
    variables = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64),
                                       module.init(jax.random.PRNGKey(0), jnp.asarray(x), train=False))
    # Non-trivial BN statistics and affine parameters, so a channel-layout slip cannot hide.
    variables = jax.tree_util.tree_map(lambda a: a + rng.uniform(0.1, 0.5, a.shape), variables)
    out, state = module.apply(variables, jnp.asarray(x), train=False, mutable=['intermediates'])
  want, want_attn = numpy_binary_term(x, variables['params'], variables['batch_stats'], groups)
  np.testing.assert_allclose(np.asarray(out), want, atol=1e-10, rtol=0)
  np.testing.assert_allclose(np.asarray(state['intermediates']['attention'][0]), want_attn, atol=1e-12, rtol=0)


# ------------------------------------------------------------------------------------------------
# Official fixtures through the converter.
# ------------------------------------------------------------------------------------------------


def test_fixture_logits_and_stages(converted):
  z, tol = converted['z'], converted['meta']['suggested_tolerance']['float32_port']
  np.testing.assert_allclose(np.asarray(converted['logits']), z['logits'], atol=tol['logits_atol'], rtol=0)
  assert len(converted['stages']) == 4
  for i, stage in enumerate(converted['stages']):
    np.testing.assert_allclose(nchw(stage), z[f'stage{i + 1}'], atol=tol['stage3_stage4_atol'], rtol=0)


def _layer_variables(converted, dtype=np.float32):
  block, name = flax_path(converted['layer'])
  return {col: jax.tree_util.tree_map(lambda a: np.asarray(a, dtype), tree[block][name])
          for col, tree in converted['variables'].items()}


def _check_layer_internals(converted, suffix, atol, dtype):
  z, layer = converted['z'], converted['layer']
  x = nhwc(z[f'dbg/{layer}/input'].astype(dtype))
  out, state = LESA(strides=converted['layer_stride']).apply(_layer_variables(converted, dtype), x,
                                                              mutable=['intermediates'])
  got = state['intermediates']
  pairs = {'output': out, 'unary': got['unary_term'][0], 'binary': got['binary_term'][0], 'gate': got['gate'][0]}
  for key, value in pairs.items():
    np.testing.assert_allclose(nchw(value), z[f'dbg/{layer}/{key}{suffix}'], atol=atol, rtol=0, err_msg=key)
  if not suffix:  # the attention is stored from the float32 run only
    np.testing.assert_allclose(np.asarray(got['binary']['attention'][0]), z[f'dbg/{layer}/attn'], atol=atol, rtol=0)


def test_fixture_layer_internals(converted):
  tol = converted['meta']['suggested_tolerance']['float32_port']['lesa_layer_in_isolation_atol']
  with jax.default_matmul_precision('highest'):
    _check_layer_internals(converted, '', tol, np.float32)


def test_fixture_layer_internals_float64(converted):
  tol = converted['meta']['suggested_tolerance']['float64_port']['atol_vs_f64_arrays']
  with jax.enable_x64(True):
    _check_layer_internals(converted, '_f64', tol, np.float64)


def test_fixture_trainmode_logits_and_running_stats(converted):
  z = converted['z']
  if 'trainmode/logits' not in z:
    pytest.skip(f"{converted['name']} stores no train-mode forward")
  model = create_model('lesa_resnet50', **converted['kwargs'])
  train_forward = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']))
  with jax.default_matmul_precision('highest'):
    logits, updated = train_forward(converted['variables'], nhwc(z['input']))
  np.testing.assert_allclose(np.asarray(logits), z['trainmode/logits'], atol=1e-4, rtol=0)
  block, name = flax_path(converted['layer'])
  stats = updated['batch_stats'][block][name]
  for torch_bn, path in LESA_BN_PATHS.items():
    for torch_stat, ours in (('running_mean', 'mean'), ('running_var', 'var')):
      want = z[f'trainmode/running_after/{converted["layer"]}.{torch_bn}.{torch_stat}']
      np.testing.assert_allclose(np.asarray(stats[path[0]][path[1]][ours]), want, atol=1e-5, rtol=1e-5,
                                 err_msg=f'{torch_bn}.{torch_stat}')


def test_converter_reads_image_size_and_rejects_other_variants(converted):
  assert image_size_from_checkpoint(converted['sd']) == converted['z']['input'].shape[-1]
  # A LESA checkpoint has fusion weights that static LESA lacks: reported, not silently dropped.
  with pytest.raises(ConversionError, match=r'unexpected PyTorch keys.*reasoning'):
    from_torch('static_lesa_resnet50', converted['sd'], **converted['kwargs'])
  with pytest.raises(ConversionError, match=r'relative: checkpoint \(16, \d+\) vs model \(16, \d+\)'):
    from_torch('lesa_resnet50', converted['sd'], image_size=160, **converted['kwargs'])
  incomplete = {k: v for k, v in converted['sd'].items() if k != 'layer4.0.conv2.relative'}
  with pytest.raises(ConversionError, match=r'missing PyTorch keys \(1\): layer4\.0\.conv2\.relative'):
    from_torch('lesa_resnet50', incomplete, **converted['kwargs'])


def official_state_dict(width_per_group, rng):
  """A full-size LESA ResNet-50 state_dict named and shaped as in docs/official_code.md (LESA state-dict names),
  saved from nn.DataParallel (``module.`` prefix)."""
  sd = {}

  def bn(key, ch):
    for stat in ('weight', 'bias', 'running_mean', 'running_var'):
      sd[f'{key}.{stat}'] = rng.normal(size=(ch,)).astype(np.float32)
    sd[f'{key}.num_batches_tracked'] = np.array(7, np.int64)

  def w(key, *shape):
    sd[key] = rng.normal(size=shape).astype(np.float32)

  w('conv1.weight', 64, 3, 7, 7)
  bn('bn1', 64)
  cin, length = 64, 14 * 14
  for s, (depth, planes) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512))):
    c, out = planes * width_per_group // 64, planes * 4
    for b in range(depth):
      k = f'layer{s + 1}.{b}'
      w(f'{k}.conv1.weight', c, cin, 1, 1)
      bn(f'{k}.bn1', c)
      if s >= 2 and (s, b) != (2, 0):
        w(f'{k}.conv2.relative', 2 * c // 8, 2 * length - 1)
        sd[f'{k}.conv2.flatten_index'] = relative_index(length).reshape(-1).astype(np.int64)
        w(f'{k}.conv2.qkv_transform.weight', 2 * c, c, 1)
        bn(f'{k}.conv2.bn_qkv', 2 * c)
        bn(f'{k}.conv2.bn_similarity', 24)
        bn(f'{k}.conv2.bn_output', 2 * c)
        w(f'{k}.conv2.x_transform.0.weight', c, c // 8, 3, 3)
        w(f'{k}.conv2.x_transform.1.weight', c, c, 1, 1)
        bn(f'{k}.conv2.bn_x', c)
        w(f'{k}.conv2.reasoning.1.weight', c, 2 * c, 1, 1)
        bn(f'{k}.conv2.reasoning.2', c)
        w(f'{k}.conv2.projection.0.weight', c, c, 1, 1)
        bn(f'{k}.conv2.projection.1', c)
      else:
        w(f'{k}.conv2.weight', c, c, 3, 3)
        bn(f'{k}.bn2', c)
      w(f'{k}.conv3.weight', out, c, 1, 1)
      bn(f'{k}.bn3', out)
      if b == 0:
        w(f'{k}.downsample.0.weight', out, cin, 1, 1)
        bn(f'{k}.downsample.1', out)
      cin = out
  w('fc.weight', 1000, 2048)
  w('fc.bias', 1000)
  return {f'module.{k}': v for k, v in sd.items()}


@pytest.mark.parametrize('model_name, width_per_group', [('lesa_resnet50', 64), ('lesa_wrn50', 128)])
def test_converter_takes_full_size_official_checkpoints(model_name, width_per_group):
  sd = official_state_dict(width_per_group, np.random.default_rng(0))
  if model_name == 'lesa_resnet50':  # the spec's inventory of the official state_dict
    assert len(sd) == 568 and sum(k.endswith('flatten_index') for k in sd) == 8
    assert sum(k.endswith('num_batches_tracked') for k in sd) == 93
  variables = from_torch(model_name, sd)  # image size read off the tables: 224
  params = variables['params']
  layer = params['layer4_1']['conv2']
  torch_key = 'module.layer4.1.conv2'
  np.testing.assert_array_equal(layer['binary']['relative'], sd[f'{torch_key}.relative'])
  np.testing.assert_array_equal(layer['binary']['qkv']['kernel'], sd[f'{torch_key}.qkv_transform.weight'][:, :, 0].T)
  np.testing.assert_array_equal(layer['unary']['conv3x3']['kernel'],
                                sd[f'{torch_key}.x_transform.0.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(layer['fusion']['fc1']['kernel'][0, 0],
                                sd[f'{torch_key}.reasoning.1.weight'][:, :, 0, 0].T)
  np.testing.assert_array_equal(variables['batch_stats']['layer4_1']['conv2']['binary']['similarity_bn']['var'],
                                sd[f'{torch_key}.bn_similarity.running_var'])
  assert count_params(params) == model_info(model_name).params


# ------------------------------------------------------------------------------------------------
# Input sizes.
# ------------------------------------------------------------------------------------------------


def test_weights_at_another_size_fail_clearly(converted):
  model = create_model('lesa_resnet50', **converted['kwargs'])
  side = converted['z']['input'].shape[-1] // 16  # the stage-3 map the tables were built for

  def output_shape(height, width):
    x = jax.ShapeDtypeStruct((1, height, width, 3), jnp.float32)
    return jax.eval_shape(lambda v, x: model.apply(v, x, train=False), converted['variables'], x).shape

  with pytest.raises(InvalidInputSizeError) as err:
    output_shape(16 * (side + 1), 16 * (side + 1))
  message = str(err.value)
  new = side + 1
  for part in ("layer3_1/conv2/binary: parameter 'relative'", f'(16, {2 * side * side - 1})', f'{side}x{side}',
               f'L={side * side}', f'images of {16 * side - 15}-{16 * side} px', f'{new}x{new}', f'L={new * new}',
               f'images of {16 * new - 15}-{16 * new} px', f'(16, {2 * new * new - 1})', 'init_skip=relative'):
    assert part in message, (part, message)
  # Any input that gives the same map is fine, square or not.
  assert output_shape(16 * side - 15, 16 * side - 12) == (1, 10)


def test_any_input_size_trains_and_init_skip_reinitialises_tables():
  model = create_model('lesa_resnet50', **SMALL)
  x = jnp.ones((2, 48, 80, 3))  # non-square: 3x5 maps in stages 3 and 4

  def init_and_train_forward(x):
    variables = model.init(jax.random.PRNGKey(0), x, train=False)
    return variables, model.apply(variables, x, train=True, mutable=['batch_stats'])[0]

  variables, logits = jax.jit(init_and_train_forward)(x)
  assert variables['params']['layer3_1']['conv2']['binary']['relative'].shape == (16, 29)
  assert logits.shape == (2, 10) and bool(jnp.all(jnp.isfinite(logits)))
  # Fine-tuning at another size: the training loop keeps fresh tables when told to skip them.
  target = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(1), jnp.ones((1, 64, 64, 3)), train=False))
  with pytest.raises(checkpoint.CheckpointError, match='relative'):
    checkpoint.adapt_variables(variables, target)
  adapted = checkpoint.adapt_variables(variables, target, skip='relative')
  flat = flax.traverse_util.flatten_dict(adapted)
  assert flat[('params', 'layer4_0', 'conv2', 'binary', 'relative')].shape == (32, 31)


def test_stride_needs_an_even_map():
  x = jnp.zeros((1, 7, 7, 32))
  with pytest.raises(InvalidInputSizeError, match='not divisible by its stride 2.*multiple of 32 px'):
    LESA(strides=2, input_stride=16).init(jax.random.PRNGKey(0), x)


# ------------------------------------------------------------------------------------------------
# Variants, parameter counts and introspection.
# ------------------------------------------------------------------------------------------------


def test_lesa_r50_layout():
  model = create_model('lesa_resnet50')
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)), train=False))
  params = variables['params']
  lesa_blocks = sorted(b for b in params if b.startswith('layer') and 'binary' in params[b]['conv2'])
  assert lesa_blocks == ['layer3_1', 'layer3_2', 'layer3_3', 'layer3_4', 'layer3_5', 'layer4_0', 'layer4_1',
                         'layer4_2']
  assert params['layer3_1']['conv2']['binary']['relative'].shape == (64, 391)
  assert params['layer4_0']['conv2']['binary']['relative'].shape == (128, 391)
  assert params['layer3_1']['conv2']['unary']['conv3x3']['kernel'].shape == (3, 3, 32, 256)  # groups 8
  features = create_model('lesa_resnet50', features_only=True)
  shapes = jax.eval_shape(lambda v: features.apply(v, jnp.zeros((1, 224, 224, 3))), variables)
  assert [s.shape[1] for s in shapes] == [56, 28, 14, 14]  # stride-1 last stage


def test_static_and_sa_fusions():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 4, 32))
  for variant in ('static', 'sa'):
    module = LESA(variant=variant)
    variables = module.init(jax.random.PRNGKey(1), x)
    out, state = module.apply(variables, x, mutable=['intermediates'])
    got = state['intermediates']
    want = got['binary_term'][0] + (got['unary_term'][0] if variant == 'static' else 0)
    np.testing.assert_allclose(np.asarray(out), np.asarray(want), atol=1e-6)
    assert 'gate' not in got
  assert 'unary' not in LESA(variant='sa').init(jax.random.PRNGKey(1), x)['params']


def test_bfloat16_compute_follows_the_input():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 4, 32))
  module = LESA()
  variables = module.init(jax.random.PRNGKey(1), x)
  full = module.apply(variables, x)
  half, state = module.apply(variables, x.astype(jnp.bfloat16), mutable=['intermediates'])
  assert half.dtype == jnp.bfloat16 and state['intermediates']['binary']['attention'][0].dtype == jnp.bfloat16
  assert jax.tree_util.tree_leaves(variables['params'])[0].dtype == jnp.float32
  error = jnp.abs(half.astype(jnp.float32) - full).max() / jnp.abs(full).max()
  assert error < 0.05, error


def test_gate_and_table2_shares(converted):
  inter = converted['intermediates']
  per_layer = []
  for block, name in (('layer3_1', 'conv2'), ('layer4_0', 'conv2')):
    layer = inter[block][name]
    gate = np.asarray(layer['gate'][0], np.float64)
    assert gate.min() > 0 and gate.max() < 1
    unary, binary = float(layer['unary_share'][0]), float(layer['binary_share'][0])
    np.testing.assert_allclose([unary, binary], [np.mean(1 / (1 + gate)), np.mean(gate / (1 + gate))], rtol=1e-5)
    per_layer.append((unary, binary))
  np.testing.assert_allclose(fusion_weight_shares(inter), np.mean(per_layer, axis=0), rtol=1e-6)
  if converted['name'] == 'lesa_small_112':  # the stored gate, seen from the whole model
    np.testing.assert_allclose(nchw(inter['layer3_1']['conv2']['gate'][0]), converted['z']['dbg/layer3.1.conv2/gate'],
                               atol=1e-4)


# ------------------------------------------------------------------------------------------------
# SA-WRN50 and Attention Augmentation (Tables 2 and 6).
# ------------------------------------------------------------------------------------------------


def test_sa_wrn50_and_aa_resnet50_counts_and_layout():
  counts = {}
  for name in ('sa_wrn50', 'aa_resnet50'):
    model = create_model(name)
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)), train=False))
    counts[name] = count_params(variables['params'])  # the output at full size: tests/test_models.py
    params = variables['params']
    if name == 'sa_wrn50':  # WRN widths, binary term only, on LESA's eight layers
      assert params['layer3_1']['conv2']['binary']['relative'].shape == (128, 391)
      assert params['layer4_0']['conv2']['binary']['qkv']['kernel'].shape == (1024, 2048)
      assert 'unary' not in params['layer4_2']['conv2'] and 'fusion' not in params['layer4_2']['conv2']
    else:  # kappa 0.2, upsilon 0.1, 8 heads: dk/dv = 48/24 at C=256, 96/48 at C=512; 14x14 maps
      aa = [b for b in params if b.startswith('layer') and 'qkv' in params[b]['conv2']]
      assert aa == ['layer3_1', 'layer3_2', 'layer3_3', 'layer3_4', 'layer3_5', 'layer4_0', 'layer4_1', 'layer4_2']
      layer3, layer4 = params['layer3_1']['conv2'], params['layer4_0']['conv2']
      assert layer3['conv']['kernel'].shape == (3, 3, 256, 232) and layer3['qkv']['kernel'].shape == (1, 1, 256, 120)
      assert layer3['proj']['kernel'].shape == (1, 1, 24, 24) and layer3['key_rel_w'].shape == (27, 6)
      assert layer4['qkv']['kernel'].shape == (1, 1, 512, 240) and layer4['key_rel_h'].shape == (27, 12)
      assert set(params['layer3_0']['conv2']) == {'conv', 'bn'}  # stage 3's first (stride-2) block: a plain conv
  assert counts == {'sa_wrn50': 38_272_808, 'aa_resnet50': 25_152_596}
  # Paper: SA-WRN50 37.7M (Tab. 2) counts without the relative tables, as its LESA-WRN50 60.6M does.
  relative = sum(2 * c // 8 * 391 for c in (512,) * 5 + (1024,) * 3)
  assert relative == 550_528 and round((counts['sa_wrn50'] - relative) / 1e5) / 10 == 37.7
  assert round(counts['aa_resnet50'] / 1e4) / 100 == 25.15  # Tab. 6


def numpy_aa_conv(x, p, bs, heads, dk, dv):
  """Bello et al.'s augmented conv written out: explicit 3x3 conv, per-head loops over query and key
  positions with the 2-D relative logits q_i.(k_j + r^W[w_j - w_i] + r^H[h_j - h_i]) / sqrt(dk/heads)."""
  n, h, w, c = x.shape
  dkh, dvh = dk // heads, dv // heads
  kernel = p['conv']['kernel']  # (3, 3, C, C - dv)
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  conv = np.zeros((n, h, w, c - dv))
  for i in range(h):
    for j in range(w):
      for a in range(3):
        for b in range(3):
          conv[:, i, j] += padded[:, i + a, j + b] @ kernel[a, b]
  qkv = x @ p['qkv']['kernel'][0, 0]
  q, k, v = qkv[..., :dk], qkv[..., dk:2 * dk], qkv[..., 2 * dk:]
  attn = np.zeros((n, h, w, dv))
  for g in range(heads):
    qg, kg, vg = (t[..., g * d:(g + 1) * d] for t, d in ((q, dkh), (k, dkh), (v, dvh)))
    for i in range(h * w):
      hi, wi = divmod(i, w)
      logits = np.zeros((n, h * w))
      for j in range(h * w):
        hj, wj = divmod(j, w)
        key = kg[:, hj, wj] + p['key_rel_w'][wj - wi + w - 1] + p['key_rel_h'][hj - hi + h - 1]
        logits[:, j] = (qg[:, hi, wi] * key).sum(-1) / np.sqrt(dkh)
      weights = np.exp(logits - logits.max(-1, keepdims=True))
      weights /= weights.sum(-1, keepdims=True)
      attn[:, hi, wi, g * dvh:(g + 1) * dvh] = np.einsum('nj,njc->nc', weights, vg.reshape(n, h * w, dvh))
  out = np.concatenate([conv, attn @ p['proj']['kernel'][0, 0]], axis=-1)
  scale = p['bn']['scale'] / np.sqrt(bs['bn']['var'] + 1e-5)
  return (out - bs['bn']['mean']) * scale + p['bn']['bias']


@pytest.mark.parametrize('hw', [(3, 5), (4, 4)])
def test_aa_conv_matches_numpy(hw):
  """Non-square too, so a swap of the height and width tables (or offsets) cannot hide."""
  rng = np.random.default_rng(1)
  c, heads = 40, 2
  module = AttentionAugmentedConv(heads, key_ratio=0.4, value_ratio=0.2)  # dk 16, dv 8: 2 heads of 8 / 4
  assert aa_depths(c, 0.4, 0.2, heads) == (16, 8)
  x = rng.normal(size=(2, *hw, c))
  with jax.enable_x64(True):
    variables = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64),
                                       module.init(jax.random.PRNGKey(0), jnp.asarray(x), train=False))
    variables = jax.tree_util.tree_map(lambda a: a + rng.uniform(0.1, 0.5, a.shape), variables)
    out = module.apply(variables, jnp.asarray(x), train=False)
  assert variables['params']['key_rel_w'].shape == (2 * hw[1] - 1, 8)
  assert variables['params']['key_rel_h'].shape == (2 * hw[0] - 1, 8)
  want = numpy_aa_conv(x, variables['params'], variables['batch_stats'], heads, 16, 8)
  # The conv channels exactly; the attention ones to float32 round-off: the shared
  # layers.dot_product_attention takes its softmax in float32 (a wrong offset or table is O(1) off).
  np.testing.assert_allclose(np.asarray(out)[..., :c - 8], want[..., :c - 8], atol=1e-10, rtol=0)
  np.testing.assert_allclose(np.asarray(out), want, atol=2e-5, rtol=0)


def test_aa_depths_and_sizes():
  assert aa_depths(256, 0.2, 0.1, 8) == (48, 24) and aa_depths(512, 0.2, 0.1, 8) == (96, 48)
  with pytest.raises(ValueError, match='dv=0'):
    aa_depths(64, 0.2, 0.1, 8)
  module = AttentionAugmentedConv(2, strides=2, input_stride=16)
  x = jnp.zeros((1, 4, 6, 40))
  variables = module.init(jax.random.PRNGKey(0), x)
  assert module.apply(variables, x).shape == (1, 2, 3, 40)  # attention on the pooled 2x3 map
  assert variables['params']['key_rel_w'].shape == (5, 4)
  with pytest.raises(InvalidInputSizeError, match='not divisible by its stride 2.*multiple of 32 px'):
    module.init(jax.random.PRNGKey(0), jnp.zeros((1, 5, 6, 40)))
  with pytest.raises(InvalidInputSizeError, match="'key_rel_w' has shape \\(5, 4\\).*4x4 map"):
    module.apply(variables, jnp.zeros((1, 8, 8, 40)))


# ------------------------------------------------------------------------------------------------
# The Tables 1/2 "Weights (%)": unary and binary shares against a brute force.
# ------------------------------------------------------------------------------------------------


def brute_force_shares(variant, inter):
  """Per layer: SA, the mean over images, heads and query positions of the attention a query puts on
  itself (loops); LESA, the means of 1/(1+omega) and omega/(1+omega) over every gate entry."""
  per_layer = []
  for block in sorted(inter, key=lambda b: tuple(int(t) for t in b[len('layer'):].split('_'))):
    layer = inter[block].get('conv2', {})
    if variant == 'sa' and 'binary' in layer:
      attn = np.asarray(layer['binary']['attention'][0], np.float64)
      n, heads, length, _ = attn.shape
      np.testing.assert_allclose(attn.sum(-1), 1.0, rtol=1e-5)  # unary + binary = 1 at every query
      total = 0.0
      for b in range(n):
        for g in range(heads):
          for i in range(length):
            total += attn[b, g, i, i]
      unary = total / (n * heads * length)
      per_layer.append((unary, 1.0 - unary))
    elif variant == 'lesa' and 'gate' in layer:
      gate = np.asarray(layer['gate'][0], np.float64).ravel()
      per_layer.append((sum(1 / (1 + g) for g in gate) / gate.size, sum(g / (1 + g) for g in gate) / gate.size))
  return per_layer


@pytest.mark.parametrize('name', ['sa_resnet50', 'lesa_resnet50'])
def test_unary_binary_shares_match_brute_force(name):
  model = create_model(name, **SMALL)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 64, 64, 3))  # 4x4 maps in stages 3 and 4
  variables = random_variables(model, x, scale=0.5)
  _, state = jax.jit(lambda v, x: model.apply(v, x, train=False, mutable=['intermediates']))(variables, x)
  inter = state['intermediates']
  want = brute_force_shares(model.make_spatial.variant, inter)
  assert len(want) == 2  # layer3_1 and layer4_0
  per_layer = unary_binary_shares_per_layer(model, inter)
  assert list(per_layer) == ['layer3_1/conv2', 'layer4_0/conv2']
  np.testing.assert_allclose(list(per_layer.values()), want, rtol=1e-5)
  np.testing.assert_allclose(unary_binary_shares(model, inter), np.mean(want, axis=0), rtol=1e-5)
  assert abs(sum(unary_binary_shares(model, inter)) - 1) < 1e-6
  if name == 'sa_resnet50':  # a random SA spreads its attention: the diagonal is far from all-or-nothing
    assert 0.01 < unary_binary_shares(model, inter)[0] < 0.9
  else:
    np.testing.assert_allclose(unary_binary_shares('lesa', inter), fusion_weight_shares(inter), rtol=1e-6)


def test_sa_share_is_the_diagonal_of_the_numpy_attention():
  """One SA layer: the shares from the numpy transcription's attention (independent of the model's)."""
  rng = np.random.default_rng(3)
  x = rng.normal(size=(2, 3, 4, 32))
  module = LESA(groups=4, variant='sa')
  with jax.enable_x64(True):
    variables = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64),
                                       module.init(jax.random.PRNGKey(0), jnp.asarray(x)))
    variables = jax.tree_util.tree_map(lambda a: a + rng.uniform(0.1, 0.5, a.shape), variables)
    _, state = module.apply(variables, jnp.asarray(x), mutable=['intermediates'])
  params = variables['params']['binary']
  stats = variables['batch_stats']['binary']
  _, attn = numpy_binary_term(x, params, stats, 4)
  unary = np.mean([attn[b, g, i, i] for b in range(2) for g in range(4) for i in range(12)])
  assert unary_binary_shares_per_layer('sa', state['intermediates']) == {'': pytest.approx((unary, 1 - unary),
                                                                                           rel=1e-9)}


def test_static_and_aa_shares():
  model = create_model('static_lesa_resnet50', **SMALL)
  x = jnp.zeros((1, 64, 64, 3))
  variables = random_variables(model, x)
  _, state = model.apply(variables, x, train=False, mutable=['intermediates'])
  assert unary_binary_shares(model, state['intermediates']) == (0.5, 0.5)  # equal weights: omega = 1
  with pytest.raises(ValueError, match='defines no unary/binary weights'):
    unary_binary_shares(create_model('aa_resnet50'), {})
  with pytest.raises(ValueError, match='not a LESA-family model'):
    unary_binary_shares(create_model('resnet50'), {})
