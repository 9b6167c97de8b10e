"""CoTNet family: official parameter counts, fixtures of the official code, brute-force references."""
import itertools
import os
import subprocess
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO, fixture_json, fixture_npz, init_shapes, subprocess_env

from lgvit.convert import ConversionError, StateDictConverter, from_torch
from lgvit.convert.cotnet import convert_cot_layer
from lgvit.models import create_model, layers
from lgvit.models.cotnet import CoTLayer, CoTSpatial, local_aggregation, local_aggregation_patches
from lgvit.models.layers import blur_pool


def nhwc(a):
  return np.transpose(np.asarray(a), (0, 2, 3, 1))


def assert_matches_fixture(ours, ref, meta, what):
  """The fixtures' suggested float32 tolerance: rtol 1e-4, atol 1e-4 * max|ref| (max|ref| from the json)."""
  atol = 1e-4 * meta['tolerance']['float32_vs_float64'][what]['max_abs_ref']
  np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), rtol=1e-4, atol=atol, err_msg=what)


# ---------------------------------------------------------------------------------------------
# Acceptance 1: parameter counts of the paper's ablation tables.
# ---------------------------------------------------------------------------------------------

# The official count of every variant is ModelInfo.params, checked for all models in test_models.py.


@pytest.mark.parametrize('kwargs,paper_millions', [
    (dict(context='static'), 17.1),  # Table 5
    (dict(context='dynamic'), 20.3),
    (dict(context='linear'), 20.3),
    (dict(cot_stages=(False, False, False, True)), 23.5),  # Table 6
    (dict(cot_stages=(False, False, True, True)), 22.4),
    (dict(cot_stages=(False, True, True, True)), 22.3),
])
def test_ablation_param_counts_match_paper(kwargs, paper_millions):
  n = layers.count_params(init_shapes(create_model('cotnet50', **kwargs), 64)['params'])
  assert round(n / 1e6, 1) == paper_millions


def test_no_cot_stage_is_resnet50():
  n = layers.count_params(init_shapes(create_model('cotnet50', cot_stages=(False,) * 4), 64)['params'])
  assert n == layers.count_params(init_shapes(create_model('resnet50'), 64)['params']) == 25_557_032


def test_cot_layer_param_counts_match_spec():
  # spec §1.7 (CoT) and the CoXt list.
  for card, dim, want in [(1, 64, 26_744), (1, 512, 1_661_888), (2, 96, 37_332), (2, 768, 2_314_656)]:
    x = jnp.zeros((2, 4, 4, dim))
    shapes = jax.eval_shape(lambda: CoTLayer(card).init(jax.random.PRNGKey(0), x, train=False))  # noqa: B023
    assert layers.count_params(shapes['params']) == want


# ---------------------------------------------------------------------------------------------
# Acceptance 3: the local aggregation against a brute-force loop, forward and backward.
# ---------------------------------------------------------------------------------------------


def aggregation_products(shape, k, groups):
  """The official kernel's index arithmetic, literally: for every output (n, y, x, ch), each in-map tap
  (yy, xx) and the weight channel ``tap`` that scales it: out[n, y, x, ch] += a[n, y, x, tap] * v[n, yy, xx, ch]."""
  b, h, w, c = shape
  cg = c // groups
  heads = cg // 8
  for n, y, x, ch in itertools.product(range(b), range(h), range(w), range(c)):
    g, cc = divmod(ch, cg)
    head = g * heads + cc % heads
    for dy, dx in itertools.product(range(k), range(k)):
      yy, xx = y + dy - (k - 1) // 2, x + dx - (k - 1) // 2
      if 0 <= yy < h and 0 <= xx < w:
        yield n, y, x, ch, yy, xx, head * k * k + dy * k + dx


def aggregation_bruteforce(v, a, k, groups):
  """float64 loops over every output and tap."""
  out = np.zeros(v.shape)
  for n, y, x, ch, yy, xx, tap in aggregation_products(v.shape, k, groups):
    out[n, y, x, ch] += a[n, y, x, tap] * v[n, yy, xx, ch]
  return out


def aggregation_vjp_bruteforce(v, a, cot, k, groups):
  """d<out, cot>/dv and /da by the same loops (each product's two partial derivatives)."""
  dv, da = np.zeros(v.shape), np.zeros(a.shape)
  for n, y, x, ch, yy, xx, tap in aggregation_products(v.shape, k, groups):
    da[n, y, x, tap] += cot[n, y, x, ch] * v[n, yy, xx, ch]
    dv[n, yy, xx, ch] += cot[n, y, x, ch] * a[n, y, x, tap]
  return dv, da


AGG_CASES = [(1, 3, 24), (2, 3, 32), (1, 5, 16)]  # (groups, k, C): odd maps, 3 heads, CoXt halves, 5x5


@pytest.mark.parametrize('groups,k,c', AGG_CASES)
def test_local_aggregation_matches_bruteforce(groups, k, c):
  rng = np.random.default_rng(groups * 10 + k)
  v = rng.standard_normal((2, 5, 7, c)).astype(np.float32)
  a = rng.standard_normal((2, 5, 7, k * k * c // 8)).astype(np.float32)
  ref = aggregation_bruteforce(v.astype(np.float64), a.astype(np.float64), k, groups)
  for fn in (local_aggregation, local_aggregation_patches):
    np.testing.assert_allclose(fn(v, a, kernel_size=k, groups=groups), ref, rtol=1e-5, atol=1e-5)


def check_aggregation_gradient(fn, groups, k, c):
  rng = np.random.default_rng(groups * 10 + k + 1)
  v = rng.standard_normal((2, 5, 7, c)).astype(np.float32)
  a = rng.standard_normal((2, 5, 7, k * k * c // 8)).astype(np.float32)
  cot = rng.standard_normal((2, 5, 7, c)).astype(np.float32)
  want_dv, want_da = aggregation_vjp_bruteforce(v, a, cot, k, groups)
  loss = lambda v, a: jnp.sum(fn(v, a, kernel_size=k, groups=groups) * cot)
  dv, da = jax.jit(jax.grad(loss, argnums=(0, 1)))(v, a)
  np.testing.assert_allclose(dv, want_dv, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(da, want_da, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('groups,k,c', AGG_CASES)
def test_local_aggregation_gradient_matches_bruteforce(groups, k, c):
  check_aggregation_gradient(local_aggregation, groups, k, c)  # the models' custom VJP


def test_unfold_form_gradient_matches_bruteforce():
  # Plain autodiff of the unfold form. A child process with XLA:CPU's Eigen kernels: jaxlib 0.10.2's
  # YNNPACK fusion of this backward (the transpose of a constant one-hot convolution) segfaults on
  # CPUs without AVX-512 (seen on an AMD EPYC Zen 3), and a crash would take the test worker down.
  script = ('from lgvit import cpu_kernels; cpu_kernels.use()\n'
            'import test_cotnet as t\n'
            'for case in t.AGG_CASES:\n'
            '  t.check_aggregation_gradient(t.local_aggregation_patches, *case)\n'
            'print("checked", len(t.AGG_CASES))')
  env = subprocess_env(LGVIT_XLA_CPU_KERNELS='eigen', JAX_PLATFORMS='cpu',
                       PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / 'tests')]))
  proc = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0 and f'checked {len(AGG_CASES)}' in proc.stdout, proc.stderr[-3000:]


def test_local_aggregation_rejects_mismatched_weights():
  with pytest.raises(ValueError, match='do not fit'):
    local_aggregation(jnp.zeros((1, 4, 4, 16)), jnp.zeros((1, 4, 4, 9)))


# ---------------------------------------------------------------------------------------------
# Pooling, brute force (layers.avg_pool's PyTorch rules, the CoT blocks' settings among them: test_layers.py).
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize('size', [(7, 5), (4, 3), (2, 2), (8, 6)])
def test_blur_pool_matches_bruteforce(size):
  x = np.random.default_rng(1).standard_normal((2,) + size + (3,))
  h, w = size
  reflect = lambda i, n: -i if i < 0 else (2 * (n - 1) - i if i >= n else i)
  taps = np.array([1.0, 2.0, 1.0])
  ho, wo = (h - 1) // 2 + 1, (w - 1) // 2 + 1
  want = np.zeros((2, ho, wo, 3))
  for i, j, dy, dx in itertools.product(range(ho), range(wo), range(3), range(3)):
    want[:, i, j] += taps[dy] * taps[dx] / 16 * x[:, reflect(2 * i + dy - 1, h), reflect(2 * j + dx - 1, w)]
  np.testing.assert_allclose(blur_pool(jnp.asarray(x, jnp.float32)), want, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Acceptance 2: the official code's outputs (single layers and whole networks).
# ---------------------------------------------------------------------------------------------


def layer_variables(name):
  z = fixture_npz('cotnet', name)
  conv = StateDictConverter({'conv2.' + k[3:]: v for k, v in z.items() if k.startswith('sd/')})
  convert_cot_layer(conv, 'conv2', ())
  assert conv.used == set(conv.sd)
  return z, flax.traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in conv.out.items()})


@pytest.mark.parametrize('name,cardinality', [('cot_layer_c32', 1), ('coxt_layer_c64', 2)])
def test_cot_layer_matches_official(name, cardinality):
  z, variables = layer_variables(name)
  meta = fixture_json('cotnet', name)
  with jax.default_matmul_precision('highest'):
    out, state = CoTLayer(cardinality).apply(variables, nhwc(z['input']), train=False, capture_intermediates=True,
                                             mutable=['intermediates'])
  inter = state['intermediates']
  captured = lambda module: inter[module]['__call__'][0]
  assert_matches_fixture(out, nhwc(z['output']), meta, 'output')
  assert_matches_fixture(captured('key_embed'), nhwc(z['k']), meta, 'k')
  assert_matches_fixture(captured('embed_norm'), nhwc(z['attn_weights_gn']), meta, 'attn_weights_gn')
  assert_matches_fixture(captured('value'), nhwc(z['v']), meta, 'v')
  assert_matches_fixture(jax.nn.silu(captured('dynamic_bn')), nhwc(z['k2_dynamic']), meta, 'k2_dynamic')
  assert_matches_fixture(captured('fusion_fc2'), nhwc(z['fusion_logits']), meta, 'fusion_logits')
  # The fixture stores CoXt's aggregation as (2B, C/2, H, W), row 2b + h = channel half h of sample b.
  agg = local_aggregation(captured('value'), captured('embed_norm'), groups=cardinality)
  b, h, w, c = agg.shape
  ref = z['aggregated'].reshape(b, cardinality, c // cardinality, h, w).transpose(0, 3, 4, 1, 2).reshape(b, h, w, c)
  assert_matches_fixture(agg, ref, meta, 'aggregated')
  # Introspection: the sown fusion weights are the softmax over each (K2, K1) logit pair.
  logits = z['fusion_logits'][:, :, 0, 0].reshape(b, c, 2)
  want = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  np.testing.assert_allclose(inter['fusion_weights'][0], want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('context', ['static', 'dynamic', 'linear'])
def test_ablation_contexts_reuse_the_full_layer_pieces(context):
  """Table 5: static = K1, dynamic = K2, linear = K1 + K2, with the official layer's weights."""
  z, variables = layer_variables('cot_layer_c32')
  keep = {'static': ('key_embed',), 'dynamic': ('key_embed', 'embed_reduce', 'embed_expand', 'embed_norm', 'value',
                                                'dynamic_bn')}
  keep['linear'] = keep['dynamic']
  sub = {col: {k: v for k, v in tree.items() if k in keep[context]} for col, tree in variables.items()}
  out = CoTLayer(context=context).apply(sub, nhwc(z['input']), train=False)
  k1, k2 = nhwc(z['k']), nhwc(z['k2_dynamic'])
  want = {'static': k1, 'dynamic': k2, 'linear': k1 + k2}[context]
  np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
  shapes = jax.eval_shape(lambda: CoTLayer(context=context).init(jax.random.PRNGKey(0), nhwc(z['input']), train=False))
  assert set(shapes['params']) == set(keep[context])


NETWORKS = [
    ('cotnet_tiny', 'cotnet50', dict(base_width=16)),
    ('cotnext_tiny', 'cotnext50_2x48d', dict(base_width=8)),
    ('se_cotnetd50style_tiny', 'se_cotnetd50', dict(base_width=16, stem_width=16)),
    ('se_cotnetd152style_tiny', 'se_cotnetd152', dict(base_width=16, stem_width=16)),
]


@pytest.mark.parametrize('fixture,model_name,kwargs', NETWORKS)
def test_network_matches_official(fixture, model_name, kwargs):
  z = fixture_npz('cotnet', fixture)
  meta = fixture_json('cotnet', fixture)
  state_dict = {k[3:]: v for k, v in z.items() if k.startswith('sd/')}
  kwargs = dict(num_classes=10, stage_depths=(1, 1, 1, 1), **kwargs)
  variables = from_torch(model_name, state_dict, image_size=64, **kwargs)
  model = create_model(model_name, **kwargs)
  assert layers.count_params(variables['params']) == meta['num_params']
  with jax.default_matmul_precision('highest'):
    logits, state = jax.jit(lambda v, x: model.apply(v, x, train=False, capture_intermediates=True,
                                                     mutable=['intermediates']))(variables, nhwc(z['input']))
  inter = state['intermediates']
  assert_matches_fixture(logits, z['logits'], meta, 'logits')
  if model.stem == 'plain':  # the fixture's stem is after the max-pool
    stem = layers.max_pool(inter['stem']['__call__'][0], 3, 2, 1)
  else:
    stem = inter['stem3']['__call__'][0]
  assert_matches_fixture(stem, nhwc(z['stem']), meta, 'stem')
  for s in range(4):
    assert_matches_fixture(inter[f'layer{s + 1}_0']['__call__'][0], nhwc(z[f'stage{s + 1}']), meta, f'stage{s + 1}')
  assert_matches_fixture(jnp.mean(inter['layer4_0']['__call__'][0], axis=(1, 2)), z['features'], meta, 'features')


def test_converter_reports_missing_and_unexpected_keys():
  z = fixture_npz('cotnet', 'cotnet_tiny')
  state_dict = {k[3:]: v for k, v in z.items() if k.startswith('sd/')}
  state_dict['layer2.0.conv2.extra.weight'] = np.zeros(3, np.float32)
  del state_dict['layer2.0.conv2.se.3.bias']
  with pytest.raises(ConversionError) as err:
    from_torch('cotnet50', state_dict, num_classes=10, stage_depths=(1, 1, 1, 1), base_width=16)
  assert 'layer2_0/conv2/fusion_fc2/bias' in str(err.value)
  assert 'layer2.0.conv2.extra.weight' in str(err.value)


# ---------------------------------------------------------------------------------------------
# Architecture switches, init and training-mode behaviour.
# ---------------------------------------------------------------------------------------------


def test_block_kinds():
  hybrid = create_model('se_cotnetd101').make_spatial
  assert [hybrid.kind(2, b) for b in range(5)] == ['cot', 'split_attn', 'cot', 'split_attn', 'cot']
  assert {hybrid.kind(s, b) for s in (0, 1) for b in range(8)} == {'split_attn'}
  assert {hybrid.kind(3, b) for b in range(3)} == {'cot'}
  replaced = CoTSpatial(cot_stages=(False, True, True, True))
  assert [replaced.kind(s, 0) for s in range(4)] == ['conv', 'cot', 'cot', 'cot']
  with pytest.raises(ValueError, match='context'):
    CoTSpatial(context='softmax')


def tiny(name, **kw):
  # CoXt widths must be multiples of 16: base width 64 instead of CoTNeXt's 48.
  kw = dict(num_classes=10, stage_depths=(1, 1, 1, 1), stage_planes=(16, 32, 64, 128), stem_width=16,
            **({'base_width': 64} if 'cotnext' in name else {}), **kw)
  return create_model(name, **kw)


def jit_init(model, x):
  return jax.jit(lambda x: model.init(jax.random.PRNGKey(0), x, train=False))(x)


def test_init_follows_official():
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 6, 6, 128))
  params = jax.jit(lambda x: CoTLayer().init(jax.random.PRNGKey(0), x, train=False))(x)['params']
  np.testing.assert_array_equal(params['embed_norm']['scale'], 1.0)
  for name in ('fusion_fc2', 'embed_expand'):  # 1x1 convs with bias: kaiming normal (fan_out) ...
    kernel = np.asarray(params[name]['kernel'])
    np.testing.assert_allclose(kernel.std(), np.sqrt(2.0 / kernel.shape[-1]), rtol=0.1)
    bound = 1.0 / np.sqrt(kernel.shape[-2])  # ... and PyTorch's default bias U(+-1/sqrt(fan_in))
    assert 0.5 * bound < np.abs(params[name]['bias']).max() <= bound
  kernel = np.asarray(params['key_embed']['conv']['kernel'])  # grouped: fan_out ignores the groups
  np.testing.assert_allclose(kernel.std(), np.sqrt(2.0 / (9 * kernel.shape[-1])), rtol=0.1)
  assert all(create_model(n).zero_init_last_bn for n in ('cotnet50', 'cotnext50_2x48d', 'se_cotnetd50'))


@pytest.mark.parametrize('cardinality', [1, 2])
def test_layer_train_mode_gradients_and_fusion_weights(cardinality):
  layer = CoTLayer(cardinality, strides=2)
  x = jax.random.normal(jax.random.PRNGKey(1), (3, 9, 7, 32))
  variables = jax.jit(lambda x: layer.init(jax.random.PRNGKey(0), x, train=False))(x)

  def loss(params):
    out, state = layer.apply({'params': params, 'batch_stats': variables['batch_stats']}, x, train=True,
                             mutable=['batch_stats', 'intermediates'])
    return jnp.sum(out**2), (out, state)

  grads, (out, state) = jax.jit(jax.grad(loss, has_aux=True))(variables['params'])
  assert out.shape == (3, 5, 4, 32)  # AvgPool2d(3, 2, 1) before the layer
  assert all(np.abs(g).max() > 0 and np.isfinite(g).all() for g in jax.tree_util.tree_leaves(grads))
  assert np.any(state['batch_stats']['fusion_bn']['mean'] != 0)
  weights = state['intermediates']['fusion_weights'][0]
  assert weights.shape == (3, 32, 2)
  np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-6)


@pytest.mark.slow
def test_network_train_step():
  """SE-CoTNetD-152 style: S and CoT blocks, BlurPool, avg-down shortcuts, odd input size."""
  model = tiny('se_cotnetd152')
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 33, 35, 3))
  variables = jit_init(model, x)
  # With bn3 at its zero init no gradient reaches the 3x3 replacements; open the residual branches.
  params = flax.traverse_util.flatten_dict(variables['params'])
  params = flax.traverse_util.unflatten_dict(
      {k: jnp.ones_like(v) if k[1:] == ('conv3', 'bn', 'scale') else v for k, v in params.items()})

  def loss(params):
    logits, state = model.apply({'params': params, 'batch_stats': variables['batch_stats']}, x, train=True,
                                mutable=['batch_stats'])
    return jnp.sum(logits**2), state

  grads, state = jax.jit(jax.grad(loss, has_aux=True))(params)
  assert all(np.abs(g).max() > 0 and np.isfinite(g).all() for g in jax.tree_util.tree_leaves(grads))
  assert np.any(state['batch_stats']['layer4_0']['conv2']['dynamic_bn']['mean'] != 0)


@pytest.mark.parametrize('cardinality', [1, 2])
def test_layer_keeps_the_compute_dtype(cardinality):
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 5, 32))
  layer = CoTLayer(cardinality)
  variables = jax.jit(lambda x: layer.init(jax.random.PRNGKey(0), x, train=False))(x)
  apply = jax.jit(lambda x: layer.apply(variables, x, train=False))
  out32, out16 = apply(x), apply(x.astype(jnp.bfloat16))
  assert out16.dtype == jnp.bfloat16
  np.testing.assert_allclose(out16.astype(jnp.float32), out32, rtol=0.05, atol=0.05 * np.abs(out32).max())


def test_batch_of_one_in_training_is_an_error():
  x = jnp.zeros((1, 4, 4, 16))
  variables = jax.eval_shape(lambda: CoTLayer().init(jax.random.PRNGKey(0), x, train=False))
  with pytest.raises(ValueError, match='more than one image'):
    jax.eval_shape(lambda v: CoTLayer().apply(v, x, train=True, mutable=['batch_stats']), variables)


def test_features_only_strides():
  model = tiny('se_cotnetd152', features_only=True)
  feats = jax.eval_shape(lambda: model.init_with_output(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))[0])
  assert [f.shape[1] for f in feats] == [16, 8, 4, 2]


CONFIGS = ['cotnet50', 'cotnet101', 'cotnext50_2x48d', 'cotnext101_2x48d', 'se_cotnetd50', 'se_cotnetd101',
           'se_cotnetd152', 'se_cotnetd152_320', 'se_resnetd50']


@pytest.mark.parametrize('variant', CONFIGS)
def test_configs_build_cot_models(variant):
  """CoT spatial blocks in the full and the demo model (their sizes: tests/test_configs.py and test_models.py)."""
  import importlib
  module = importlib.import_module(f'configs.{variant}')
  for c in (module.get_config(), module.get_config('demo')):
    assert type(create_model(c.model, num_classes=c.num_classes, **c.model_kwargs).make_spatial) is CoTSpatial


# ---------------------------------------------------------------------------------------------
# Table 6's SE-ResNetD-50 and the default (100-epoch) setup of Tables 3, 5 and 6.
# ---------------------------------------------------------------------------------------------


def resnet_rs50_params():
  """The official ``models/resnet_rs.py:resnet_rs50`` counted from its layer shapes: the SE-CoTNetD-50
  stem and strides, plain 3x3 convs, SE(reduction 4, biases, no BN) after bn3, strided 1x1 shortcuts."""
  n = 3 * 32 * 9 + 32 * 32 * 9 + 32 * 64 * 9 + 2 * (32 + 32 + 64)  # stem convs + BN
  c_in = 64
  for planes, depth in zip((64, 128, 256, 512), (3, 4, 6, 3)):
    w, out = planes, 4 * planes
    for b in range(depth):
      n += c_in * w + w * w * 9 + w * out + 2 * (w + w + out)  # conv1, conv2, conv3 + BN
      n += 2 * out * (out // 4) + out // 4 + out  # SE fc1, fc2 (+ biases)
      n += (c_in * out + 2 * out) if b == 0 else 0  # shortcut conv + BN
      c_in = out
  return n + 2048 * 1000 + 1000


def test_se_resnetd50_is_official_resnet_rs50():
  from lgvit.models import model_info
  from lgvit.models.cotnet import OutputSE
  model = create_model('se_resnetd50')
  assert {model.make_spatial.kind(s, b) for s in range(4) for b in range(6)} == {'conv'}  # plain 3x3 + BN + ReLU
  assert (model.stem, model.stem_width, model.stem_pool, model.downsample, tuple(model.stage_strides)) == (
      'deep', 32, False, 'conv', (2, 2, 2, 2))  # strided 1x1 shortcuts (avg_down=False)
  assert model.make_output_gate == OutputSE(reduction=4) and model.zero_init_last_bn
  params = init_shapes(model, 224)['params']
  assert layers.count_params(params) == resnet_rs50_params() == model_info('se_resnetd50').params == 35_654_920
  shapes = lambda tree: jax.tree_util.tree_map(lambda p: p.shape, tree)
  c_in = 64
  for s, (planes, depth) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3))):
    for b in range(depth):
      block = params[f'layer{s + 1}_{b}']
      assert shapes(block['se']) == {  # SE(reduction 4) on the 4 * planes outputs: hidden = planes, biases, no BN
          'fc1': {'kernel': (1, 1, 4 * planes, planes), 'bias': (planes,)},
          'fc2': {'kernel': (1, 1, planes, 4 * planes), 'bias': (4 * planes,)}}
      assert ('downsample' in block) == (b == 0)
      if b == 0:
        assert shapes(block['downsample']['conv']) == {'kernel': (1, 1, c_in, 4 * planes)}
      c_in = 4 * planes


def test_se_resnetd50_gates_bn3_before_the_residual_add():
  kw = dict(num_classes=10, stage_depths=(1, 1, 1, 1), stage_planes=(8, 8, 8, 8), stem_width=8)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 3))
  variables = jit_init(create_model('se_resnetd50', zero_init_last_bn=False, **kw), x)

  def gated(bias):  # fc2 = constant ``bias``: the gate is sigmoid(bias) everywhere
    return jax.tree_util.tree_map_with_path(
        lambda path, p: (jnp.zeros_like(p) if 'kernel' in str(path[-1]) else jnp.full_like(p, bias))
        if any('fc2' in str(k) for k in path) and any('se' == getattr(k, 'key', None) for k in path) else p,
        variables)

  def features(v, **overrides):
    return create_model('se_resnetd50', features_only=True, zero_init_last_bn=False, **kw, **overrides).apply(
        v, x, train=False)

  no_se = {'params': {k: {n: m for n, m in blk.items() if n != 'se'} if k.startswith('layer') else blk
                      for k, blk in variables['params'].items()}, 'batch_stats': variables['batch_stats']}
  open_gate = features(gated(30.0))
  for a, b in zip(open_gate, features(no_se, make_output_gate=None)):  # gate 1: the block without SE
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  # gate 0: each block is ReLU(shortcut), so the SE scales bn3's output, not the sum.
  closed = features(gated(-30.0))
  shortcut = jax.nn.relu(layers.ConvBN(32, 1, 2, act=None).apply(
      {'params': variables['params']['layer2_0']['downsample'],
       'batch_stats': variables['batch_stats']['layer2_0']['downsample']}, closed[0], train=False))
  np.testing.assert_allclose(closed[1], shortcut, rtol=1e-5, atol=1e-5)


TABLE3 = {  # variant -> paper top-1 without / with EMA ("*"); se_resnetd50 is Table 6 (no EMA row)
    'cotnet50': (79.2, 79.8), 'cotnext50_2x48d': (79.5, 80.2), 'se_cotnetd50': (79.8, 80.5),
    'cotnet101': (80.0, 80.9), 'cotnext101_2x48d': (80.3, 81.3), 'se_cotnetd101': (80.5, 81.4),
    'se_resnetd50': (79.1, None),
}
ROWS = [(v, ema) for v, top1 in TABLE3.items() for ema in (False, True) if top1[ema] is not None]


@pytest.mark.parametrize('variant,ema', ROWS)
def test_default_setup_rows_follow_the_paper(variant, ema):
  import math

  from configs import common, cotnet
  from lgvit import optim
  from lgvit.models import model_info
  assert cotnet.DEFAULT_SETUP[variant] == TABLE3[variant]
  arg = f'variant={variant},setup=default' + (',ema' if ema else '')
  c = cotnet.get_config(arg)
  assert (c.model, c.num_epochs, c.batch_size, c.data.image_size) == (variant, 100.0, 512, 224)
  assert (c.optim.optimizer, c.optim.momentum, c.optim.weight_decay) == ('sgd', 0.9, 1e-4)
  assert (c.aug.label_smoothing, c.aug.randaugment, c.aug.mixup_alpha, c.aug.cutmix_alpha,
          c.aug.random_erase_prob) == (0.1, '', 0.0, 0.0, 0.0)
  assert (tuple(c.aug.crop_scale), c.aug.hflip) == ((0.08, 1.0), True)
  assert (c.model_kwargs.drop_path_rate, c.model_kwargs.drop_rate) == (0.0, 0.0)
  assert (c.ema_decay, c.best_metric) == ((0.9999, 'ema_top1') if ema else (0.0, 'top1'))
  spe = common.IMAGENET_TRAIN_EXAMPLES // 512
  sched = optim.lr_schedule(c.schedule, c.batch_size, spe, 100 * spe)
  peak = 0.1 * 512 / 256
  assert float(sched(0)) == 0.0  # per step, linear from 0 to 0.1 B / 256 over 5 epochs, ...
  assert math.isclose(float(sched(5 * spe // 2)), peak / 2, rel_tol=1e-4)
  assert math.isclose(float(sched(5 * spe - 1)), peak, rel_tol=1e-3)
  cosine = 1e-5 + 0.5 * (peak - 1e-5) * (1 + math.cos(math.pi * 5 / 100))  # ... then timm's cosine over 100 epochs
  assert math.isclose(float(sched(5 * spe)), cosine, rel_tol=1e-5)
  assert math.isclose(float(sched(100 * spe - 1)), 1e-5, rel_tol=1e-2)  # down to the official min_lr
  assert model_info(variant).input_size == 224
  for mode in ('demo', 'demo_recipe'):
    demo = cotnet.get_config(f'{arg},{mode}')
    assert (demo.data.dataset, demo.data.image_size, demo.aug.label_smoothing) == ('lgvit_digits', 32, 0.1)
    assert demo.ema_decay == (0.99 if ema and mode == 'demo_recipe' else 0.0)
    with pytest.raises(AttributeError):
      demo.no_such_field = 1
    # The variant's own demo model (built and run in tests/test_models.py), without its drop rates.
    plain = cotnet.get_config(f'variant={variant},{mode}').model_kwargs.to_dict()
    assert demo.model_kwargs.to_dict() == {**plain, 'drop_path_rate': 0.0, 'drop_rate': 0.0}


def test_default_setup_arguments():
  import importlib

  from configs import cotnet
  assert cotnet.get_config('variant=se_resnetd50').to_dict() == cotnet.get_config(
      'variant=se_resnetd50,setup=default').to_dict()  # Table 6 is its only recipe
  assert cotnet.get_config('variant=cotnet50').num_epochs == 350.0  # advanced stays the default elsewhere
  thin = importlib.import_module('configs.cotnet50').get_config('setup=default,ema')
  assert thin.to_dict() == cotnet.get_config('variant=cotnet50,setup=default,ema').to_dict()
  for arg, message in [('variant=se_cotnetd152,setup=default', 'no row for se_cotnetd152'),
                       ('variant=se_resnetd50,setup=advanced', 'no advanced recipe for se_resnetd50'),
                       ('variant=se_resnetd50,ema', 'no EMA row for se_resnetd50'),
                       ('variant=cotnet50,ema', 'setup=default'),
                       ('variant=cotnet50,setup=long', "unknown CoTNet setup 'long'")]:
    with pytest.raises(ValueError, match=message):
      cotnet.get_config(arg)
