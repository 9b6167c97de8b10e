"""NomMer: parameter counts, official-fixture parity, the train-mode nominator, sizes, ablations, 384 fine-tuning."""
import importlib
import json
import math

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.fft
import conftest
from conftest import fixture_json, fixture_npz, init_shapes

import nommer_numpy_ref
from lgvit.checkpoint import adapt_variables
from lgvit.convert import ConversionError, from_torch
from lgvit.errors import InvalidInputSizeError
from lgvit.models import create_model, model_info
from lgvit.models import layers, nommer
from lgvit.models.layers import count_params

# A 32x32-capable micro NomMer: stage maps 8/4/2/1, window 4, DCT blocks 4 and 2.
MICRO = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(2, 2, 2, 4), window=4, dct_blocks=(4, 2),
             cnn_reductions=(2, 2), num_classes=5, drop_path_rate=0.0)


def flat(tree):
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree))


def random_variables(model, size, seed=0):
  """Random weights in the style of the fixtures (no XLA compile, unlike ``model.init``)."""
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name, shape = path[-1], leaf.shape
    if path[0] == 'batch_stats':
      return rng.uniform(0.5, 1.5, shape) if name == 'var' else 0.2 * rng.standard_normal(shape)
    if name == 'kernel':
      return rng.standard_normal(shape) / np.sqrt(np.prod(shape[:-1]))
    if name == 'scale':
      return 1.0 + 0.1 * rng.standard_normal(shape)
    if name in ('pos_embedding', 'cls_token'):
      return rng.standard_normal(shape)
    return 0.05 * rng.standard_normal(shape)  # biases, relative position tables

  shapes = flat(init_shapes(model, size))
  return flax.traverse_util.unflatten_dict(
      {k: jnp.asarray(draw(k, v), jnp.float32) for k, v in sorted(shapes.items())})


# ---------------------------------------------------------------------------------------------
# Parameter counts (official code: trainable parameters; the DCT bases are not parameters).
# ---------------------------------------------------------------------------------------------


def test_384_variant_only_grows_position_tables():
  small, large = init_shapes(create_model('nommer_t'), 224), init_shapes(create_model('nommer_t_384'), 384)
  n_s_blocks_heads = 2 * 2 + 2 * 2  # stages 1-2: 2 blocks x 2 heads each
  growth = (23**2 - 13**2) * n_s_blocks_heads + (24**2 - 14**2) * 384
  assert count_params(large['params']) - count_params(small['params']) == growth
  assert flat(large['params'])[('pos_embedding',)].shape == (1, 24, 24, 384)


# ---------------------------------------------------------------------------------------------
# The DCT against scipy.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize('block', [8, 4, 2, 5])
def test_blockwise_dct_matches_scipy(block):
  rng = np.random.default_rng(block)
  x = rng.standard_normal((2, 2 * block, 3 * block, 3))
  a = nommer.kept_frequencies(block)
  got = np.asarray(nommer.blockwise_dct(jnp.asarray(x, jnp.float32), block))
  blocks = x.reshape(2, 2, block, 3, block, 3)
  full = scipy.fft.dctn(blocks, type=2, norm='ortho', axes=(2, 4))  # (b, p, v, q, u, c)
  want = full[:, :, :a, :, :a, :].transpose(0, 1, 3, 5, 2, 4).reshape(2, 2, 3, 3 * a * a)  # channel c*a*a + v*a + u
  np.testing.assert_allclose(got, want, atol=1e-5)
  # The inverse reconstructs exactly the low-pass projection of every block.
  masked = np.zeros_like(full)
  masked[:, :, :a, :, :a, :] = full[:, :, :a, :, :a, :]
  low_pass = scipy.fft.idctn(masked, type=2, norm='ortho', axes=(2, 4)).reshape(x.shape)
  np.testing.assert_allclose(np.asarray(nommer.blockwise_idct(jnp.asarray(got), block)), low_pass, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Official fixtures: converter + eval forward.
# ---------------------------------------------------------------------------------------------


def fixture_overrides(meta):
  kw = meta['model']['constructor_kwargs']
  return dict(embed_dim=kw['emd_dim'], depths=tuple(kw['depths']), num_heads=tuple(kw['num_heads']),
              window=kw['win_size'], dct_blocks=tuple(kw['pool_size']), cnn_reductions=tuple(kw['cnn_expansion']),
              num_classes=kw['num_class'])


def state_dict(z):
  return {k[3:]: v for k, v in z.items() if k.startswith('sd/')}


@pytest.mark.parametrize('fixture', ['nommer_micro_64', 'nommer_c16_224'])
def test_official_fixture(fixture):
  z, meta = fixture_npz('nommer', fixture), fixture_json('nommer', fixture)
  overrides = fixture_overrides(meta)
  variables = from_torch('nommer_t', state_dict(z), **overrides)  # image size read off pos_embedding
  model = create_model('nommer_t', **overrides)
  x = jnp.asarray(z['input'].transpose(0, 2, 3, 1))
  forward = jax.jit(lambda v, x: model.apply(v, x, train=False, capture_intermediates=True, mutable=['intermediates']))
  with jax.default_matmul_precision('highest'):
    logits, state = forward(variables, x)
  inter = flat(state['intermediates'])
  out = lambda *path: np.asarray(inter[path + ('__call__',)][0])
  nchw = lambda a: a.transpose(0, 3, 1, 2)
  tokens = lambda a: a.reshape(a.shape[0], -1, a.shape[-1])
  depths = overrides['depths']
  got = {
      'logits': np.asarray(logits),
      'stem': nchw(out('stem')),
      'stage1': out(f'stage1_block{depths[0] - 1}'),
      'merge1': out('merge1'),
      'stage2': out(f'stage2_block{depths[1] - 1}'),
      'merge2': out('merge2'),
      'stage3': out(f'stage3_block{depths[2] - 1}'),
      'merge3': tokens(out('merge3')),
      'stage4': out(f'stage4_block{depths[3] - 1}'),
  }
  nominations = {}
  for s in (1, 2):
    for i in range(depths[s - 1]):
      tag, block = f's{s}b{i}', f'stage{s}_block{i}'
      got[f'branch_cnn/{tag}'] = nchw(out(block, 'context', 'cnn'))
      got[f'branch_local/{tag}'] = out(block, 'context', 'local')
      got[f'branch_cgca/{tag}'] = nchw(out(block, 'context', 'global'))
      got[f'nom_logits/{tag}'] = out(block, 'context', 'nominator', 'fc')
      got[f'ctx_out/{tag}'] = out(block, 'context')
      nominations[tag] = np.asarray(inter[(block, 'context', 'nomination')][0])
  documented = [k for k in meta['arrays'] if k not in ('input', 'logits_f64')]
  assert sorted(documented) == sorted(got), 'every documented array is compared'
  for key in documented:
    np.testing.assert_allclose(got[key], z[key], atol=1e-4, rtol=1e-4, err_msg=key)
  np.testing.assert_allclose(got['logits'], z['logits_f64'], atol=1e-4, rtol=1e-4)
  for tag, chosen in nominations.items():
    np.testing.assert_array_equal(chosen, z[f'nom_logits/{tag}'].argmax(-1), err_msg=tag)
    assert len(np.unique(chosen)) == 3  # the fixture exercises every branch


def test_converter_reports_bad_state_dicts():
  z, meta = fixture_npz('nommer', 'nommer_micro_64'), fixture_json('nommer', 'nommer_micro_64')
  overrides, sd = fixture_overrides(meta), state_dict(z)
  # A `module.` prefix (DDP) is stripped.
  prefixed = from_torch('nommer_t', {f'module.{k}': v for k, v in sd.items()}, **overrides)
  plain = from_torch('nommer_t', sd, **overrides)
  for k, v in flat(plain).items():
    np.testing.assert_array_equal(v, flat(prefixed)[k])
  # The Dec-2021 code had extra fc1/fc2/fc3 layers.
  with pytest.raises(ConversionError, match=r'unexpected PyTorch keys \(2\): fc1\.bias, fc1\.weight'):
    from_torch('nommer_t', dict(sd, **{'fc1.weight': np.zeros((16, 16)), 'fc1.bias': np.zeros(16)}), **overrides)
  dropped = ('merge2.norm.bias', 'pos_embedding', 'transformer1.layers.0.0.fn.attentionG.dct_conv_8x8.weight')
  with pytest.raises(ConversionError, match=r'missing PyTorch keys \(3\): merge2\.norm\.bias, pos_embedding, '
                     r'transformer1\.layers\.0\.0\.fn\.attentionG\.dct_conv_8x8\.weight'):
    from_torch('nommer_t', {k: v for k, v in sd.items() if k not in dropped}, **overrides)
  with pytest.raises(ConversionError, match='relative_position_bias_table'):
    from_torch('nommer_t', sd, **dict(overrides, window=2))
  with pytest.raises(ConversionError, match='DCT'):
    from_torch('nommer_t', sd, **dict(overrides, dct_blocks=(2, 2)))


def test_convert_cli_writes_a_loadable_checkpoint(tmp_path):
  from lgvit import checkpoint
  from lgvit.convert import __main__ as cli
  meta = fixture_json('nommer', 'nommer_micro_64')
  kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in fixture_overrides(meta).items() if k != 'num_classes'}
  npz = conftest.SHARED / 'fixtures' / 'nommer' / 'nommer_micro_64.npz'
  assert cli.main(['--model', 'nommer_t', '--checkpoint', str(npz), '--out', str(tmp_path / 'out'),
                   '--model_kwargs', json.dumps(kwargs)]) == 0
  loaded = flat(checkpoint.load_variables(str(tmp_path / 'out')))
  want = flat(from_torch('nommer_t', state_dict(fixture_npz('nommer', 'nommer_micro_64')), **fixture_overrides(meta)))
  assert sorted(loaded) == sorted(want)
  for k, v in want.items():
    np.testing.assert_array_equal(loaded[k], v)


# ---------------------------------------------------------------------------------------------
# The nominator in training: ST hard Gumbel-softmax.
# ---------------------------------------------------------------------------------------------


def injecting(noise):
  """Replaces Nominator.gumbel_noise by fixed arrays keyed by the nominator's module path."""

  def interceptor(next_fun, args, kwargs, context):
    if context.method_name == 'gumbel_noise':
      return jnp.asarray(noise[context.module.path], jnp.float32)
    return next_fun(*args, **kwargs)

  return nn.intercept_methods(interceptor)


@pytest.mark.parametrize('temperature', [1.0, 0.5])
def test_nominator_straight_through_gradient(temperature):
  rng = np.random.default_rng(0)
  s = rng.standard_normal((4, 5, 8)).astype(np.float32)
  g = rng.gumbel(size=(4, 5, 3))
  c = rng.standard_normal((4, 5, 3))
  nom = nommer.Nominator(3, temperature)
  params = nom.init(jax.random.PRNGKey(0), jnp.asarray(s), train=False)
  params = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(jax.random.PRNGKey(1), p.shape), params)

  def objective(params, s):
    with injecting({(): g}):
      weights, _ = nom.apply(params, s, train=True)
    return jnp.sum(weights * c), weights

  (_, weights), (grad_p, grad_s) = jax.value_and_grad(objective, argnums=(0, 1), has_aux=True)(params, jnp.asarray(s))
  kernel, bias = (np.asarray(params['params']['fc'][k], np.float64) for k in ('kernel', 'bias'))
  z = s @ kernel + bias
  p = np.exp((z + g) / temperature)
  p /= p.sum(-1, keepdims=True)
  np.testing.assert_allclose(np.asarray(weights), np.eye(3)[(z + g).argmax(-1)], atol=1e-6)  # exact one-hot forward
  dz = p * (c - (p * c).sum(-1, keepdims=True)) / temperature  # d/dz sum_k c_k p_k
  np.testing.assert_allclose(np.asarray(grad_p['params']['fc']['kernel']), np.einsum('abi,abk->ik', s, dz), rtol=1e-4,
                             atol=1e-6)
  np.testing.assert_allclose(np.asarray(grad_p['params']['fc']['bias']), dz.sum((0, 1)), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(np.asarray(grad_s), dz @ kernel.T, rtol=1e-4, atol=1e-6)
  assert np.abs(dz).max() > 1e-3


def test_gumbel_noise_distribution():
  g = np.asarray(nommer.gumbel_noise(jax.random.PRNGKey(0), (200_000,)), np.float64)
  assert abs(g.mean() - np.euler_gamma) < 0.01
  assert abs(g.var() - np.pi**2 / 6) < 0.03


def test_train_mode_draws_noise_from_the_gumbel_stream():
  model = create_model('nommer_t', **MICRO)
  with pytest.raises(Exception, match='gumbel'):
    jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, 32, 32, 3)), train=True, mutable=['batch_stats']),
                   init_shapes(model, 32))
  nom = nommer.Nominator(3)
  s = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 16))
  params = nom.init(jax.random.PRNGKey(1), s, train=False)  # fc ~ N(0, 0.02): the noise decides
  choose = jax.jit(lambda key: jnp.argmax(nom.apply(params, s, train=True, rngs={'gumbel': key})[0], axis=-1))
  a, b, c = (np.asarray(choose(jax.random.PRNGKey(k))) for k in (5, 5, 6))
  np.testing.assert_array_equal(a, b)
  assert (a != c).mean() > 0.4  # about 2/3 of the tokens change with the noise


def test_train_step_matches_float64_numpy_rederivation():
  """Loss, every parameter gradient and the BN running stats vs an fp64 numpy model with the same noise."""
  model = create_model('nommer_t', **MICRO)
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 32, 32, 3))
  labels = np.array([1, 3])
  variables = random_variables(model, 32, seed=1)
  params = variables['params']
  batch_stats = variables['batch_stats']
  noise = {('stage1_block0', 'context', 'nominator'): rng.gumbel(size=(2, 8, 8, 3)),
           ('stage2_block0', 'context', 'nominator'): rng.gumbel(size=(2, 4, 4, 3))}

  def loss_fn(params):
    with injecting(noise):
      logits, updates = model.apply({'params': params, 'batch_stats': batch_stats}, jnp.asarray(x, jnp.float32),
                                    train=True, mutable=['batch_stats'])
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), updates

  with jax.default_matmul_precision('highest'):
    (loss, updates), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)

  cfg = dict(MICRO, temperature=1.0)
  ref_noise = {path[0]: n for path, n in noise.items()}
  p64, bs64 = (jax.tree.map(lambda a: np.asarray(a, np.float64), t) for t in (params, batch_stats))
  ref_loss, frozen, ref_stats = nommer_numpy_ref.loss(p64, bs64, x, labels, cfg, ref_noise)
  np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-5)

  got_stats = flat(updates['batch_stats'])
  assert len(ref_stats) * 2 == len(got_stats)
  for name, stats in ref_stats.items():
    for k in ('mean', 'var'):
      np.testing.assert_allclose(got_stats[tuple(name.split('/')) + (k,)], stats[k], rtol=1e-4, atol=1e-5)

  # Directional central differences of the fp64 surrogate, one random unit direction per leaf. A small
  # step keeps ReLU / max-pool kinks out of the stencil; fp64 rounding stays ~1e-10.
  flat_p, flat_g = flat(p64), flat(grads)
  eps = 1e-6

  def directional(path, direction):
    shifted = lambda sign: flax.traverse_util.unflatten_dict({**flat_p, path: flat_p[path] + sign * eps * direction})
    return (nommer_numpy_ref.loss(shifted(1), bs64, x, labels, cfg, ref_noise, frozen)[0] -
            nommer_numpy_ref.loss(shifted(-1), bs64, x, labels, cfg, ref_noise, frozen)[0]) / (2 * eps)

  for path in sorted(flat_p):
    direction = rng.standard_normal(flat_p[path].shape)
    direction /= np.linalg.norm(direction)
    want = directional(path, direction)
    grad = np.asarray(flat_g[path], np.float64)
    got = float(np.sum(grad * direction))
    # float32 backprop: observed errors are <= 6e-7 of the leaf's gradient norm.
    assert abs(got - want) <= 1e-5 * np.linalg.norm(grad) + 1e-9, ('/'.join(path), got, want)

  # The straight-through estimator reaches the nominators: every bias entry, coordinate by coordinate.
  for block in ('stage1_block0', 'stage2_block0'):
    path = (block, 'context', 'nominator', 'fc', 'bias')
    got = np.asarray(flat_g[path], np.float64)
    assert np.abs(got).min() > 1e-6
    want = [directional(path, np.eye(3)[k]) for k in range(3)]
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-9)
    assert np.abs(np.asarray(flat_g[path[:-1] + ('kernel',)])).max() > 1e-6


# ---------------------------------------------------------------------------------------------
# Input sizes.
# ---------------------------------------------------------------------------------------------


# The registered variants' errors (224 or 448; 192 or 288 at 384): tests/test_models.py.


def test_valid_size_period_and_no_size_below_the_smallest():
  assert nommer.valid_size_period(7, (8, 4)) == 224 and nommer.valid_size_period(12, (8, 4)) == 96
  with pytest.raises(InvalidInputSizeError, match=r'multiple of 32; nearest valid size: 32\.'):
    init_shapes(create_model('nommer_t', **MICRO), 16)


@pytest.mark.parametrize('name,size', [('nommer_t', 224), ('nommer_t_384', 384)])
def test_nominations_cover_the_stage1_map_at_full_size(name, size):
  x = jnp.zeros((1, size, size, 3))
  _, state = jax.eval_shape(
      lambda: create_model(name).init_with_output(jax.random.PRNGKey(0), x, train=False, mutable=True))
  assert state['intermediates']['stage1_block0']['context']['nomination'][0].shape == (1, size // 4, size // 4)


def test_variables_remember_their_input_size():
  model = create_model('nommer_t', **MICRO)
  variables = init_shapes(model, 32)
  assert variables['params']['pos_embedding'].shape == (1, 2, 2, 64)
  with pytest.raises(InvalidInputSizeError, match=r'made for 32x32.*got 64x64.*init_from'):
    jax.eval_shape(lambda v: model.apply(v, jnp.zeros((1, 64, 64, 3)), train=False), variables)


def test_features_and_pooled_output():
  x = jnp.zeros((2, 64, 64, 3))
  feats = jax.eval_shape(lambda: create_model('nommer_t', **MICRO, features_only=True).init_with_output(
      jax.random.PRNGKey(0), x, train=False)[0])
  assert [f.shape for f in feats] == [(2, 16, 16, 16), (2, 8, 8, 32), (2, 4, 4, 64), (2, 2, 2, 128)]
  pooled = jax.eval_shape(lambda: create_model('nommer_t', **dict(MICRO, num_classes=0)).init_with_output(
      jax.random.PRNGKey(0), x, train=False)[0])
  assert pooled.shape == (2, 128)


def test_bfloat16_compute_keeps_float32_params():
  model = create_model('nommer_t', **MICRO, dtype=jnp.bfloat16)
  variables = init_shapes(model, 32)
  assert {v.dtype for v in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  rngs = {'gumbel': jax.random.PRNGKey(0)}
  logits, _ = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, 32, 32, 3)), train=True, rngs=rngs,
                                                   mutable=['batch_stats']), variables)
  assert logits.shape == (2, 5) and logits.dtype == jnp.bfloat16


# ---------------------------------------------------------------------------------------------
# Table 4 ablations.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize('ablation', sorted(nommer.ABLATIONS))
def test_ablation_structure(ablation):
  switches = nommer.ABLATIONS[ablation]
  context = flat(init_shapes(create_model('nommer_t', **MICRO, **switches), 32)['params'])
  modules = {k[2] for k in context if k[0] == 'stage1_block0' and k[1] == 'context'}
  want = {'local'} | ({'cnn'} if switches['use_cnn'] else set())
  want |= {'global'} if switches['global_context'] != 'none' else set()
  want |= {'nominator'} if switches['fusion'] == 'nominate' else set()
  assert modules == want


@pytest.mark.parametrize('ablation', ['wo_gumbel', 'wo_gumbel_dct'])
def test_sum_fusion_adds_the_candidates(ablation):
  layer = nommer.SynergisticContext(num_heads=2, window=4, dct_block=4, cnn_width=8, **nommer.ABLATIONS[ablation])
  y = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 16))

  @jax.jit
  def forward(key):
    variables = layer.init(key, y, train=False)
    return layer.apply(variables, y, train=False, capture_intermediates=True, mutable=['intermediates'])

  _, state = forward(jax.random.PRNGKey(1))
  inter = flat(state['intermediates'])
  out = lambda *p: np.asarray(inter[p + ('__call__',)][0])
  np.testing.assert_allclose(out(), out('cnn') + out('local') + out('global'), atol=1e-5)
  glob = out('global')  # both global contexts are smooth inside each 4x4 block
  if ablation == 'wo_gumbel_dct':  # pooled: constant per block
    blocks = glob.reshape(2, 2, 4, 2, 4, -1)
    np.testing.assert_allclose(blocks, np.broadcast_to(blocks[:, :, :1, :, :1], blocks.shape), atol=1e-6)
  else:  # DCT: no energy above the kept frequencies
    coef = scipy.fft.dctn(glob.reshape(2, 2, 4, 2, 4, -1), norm='ortho', axes=(2, 4))
    assert np.abs(coef[:, :, 2:]).max() < 1e-4 and np.abs(coef[:, :, :, :, 2:]).max() < 1e-4
  assert not any(k[-1] == 'nomination' for k in inter)


# ---------------------------------------------------------------------------------------------
# 384: window 12, and fine-tuning from a 224 checkpoint.
# ---------------------------------------------------------------------------------------------

TINY = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(2, 2, 4, 8), cnn_reductions=(2, 2), num_classes=10)
RULES = model_info('nommer_t_384').resize_rules


def test_resizing_reproduces_values_at_the_original_size():
  rng = np.random.default_rng(0)
  pos = rng.standard_normal((1, 14, 14, 6)).astype(np.float32)
  np.testing.assert_allclose(layers.resize_pos_embedding(pos, pos.shape), pos, atol=1e-6)
  const = np.full((1, 14, 14, 2), 0.7, np.float32)
  np.testing.assert_allclose(layers.resize_pos_embedding(const, (1, 24, 24, 2)), 0.7, atol=1e-6)
  variables = random_variables(create_model('nommer_t', **TINY), 224)
  same = flat(adapt_variables(variables, variables, resize_rules=RULES))
  for k, v in flat(variables).items():
    np.testing.assert_array_equal(same[k], v)
  # init_from into the 384 model: at window 12 the zero-offset entry of each table keeps its value.
  grown = flat(adapt_variables(variables, init_shapes(create_model('nommer_t_384', **TINY), 384), resize_rules=RULES))
  key = ('params', 'stage1_block0', 'context', 'local', 'rel_pos', 'relative_position_bias_table')
  old = np.asarray(flat(variables)[key]).reshape(13, 13, -1)
  np.testing.assert_allclose(np.asarray(grown[key]).reshape(23, 23, -1)[11, 11], old[6, 6], atol=1e-6)
  pos224 = flat(variables)[('params', 'pos_embedding')]
  want = layers.resize_pos_embedding(pos224, (1, 24, 24, pos224.shape[3]))
  np.testing.assert_allclose(grown[('params', 'pos_embedding')], want, atol=1e-6)


def test_finetune_step_at_384_from_224_checkpoint():
  model = create_model('nommer_t_384', **TINY)
  variables = adapt_variables(random_variables(create_model('nommer_t', **TINY), 224), init_shapes(model, 384),
                              resize_rules=RULES)
  params = variables['params']
  x = jax.random.normal(jax.random.PRNGKey(1), (1, 384, 384, 3))
  labels = jnp.array([3])
  rngs = {k: jax.random.PRNGKey(i) for i, k in enumerate(('dropout', 'drop_path', 'gumbel'))}

  @jax.jit
  def step(params, batch_stats):
    def loss_fn(p):
      logits, upd = model.apply({'params': p, 'batch_stats': batch_stats}, x, train=True, rngs=rngs,
                                mutable=['batch_stats'])
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), upd['batch_stats']

    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    new_params = jax.tree.map(lambda p, g: p - 1e-3 * g, params, grads)
    return loss, grads, model.apply({'params': new_params, 'batch_stats': new_stats}, x, train=False)

  loss, grads, eval_logits = step(params, variables['batch_stats'])
  assert np.isfinite(float(loss))
  assert np.abs(np.asarray(grads['pos_embedding'])).max() > 0
  assert np.abs(np.asarray(grads['stage2_block0']['context']['local']['rel_pos']['relative_position_bias_table'])).max() > 0
  assert eval_logits.shape == (1, 10) and np.isfinite(np.asarray(eval_logits)).all()


# ---------------------------------------------------------------------------------------------
# Configs.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize('variant,drop_path', [('t', 0.1), ('s', 0.3), ('b', 0.5)])
def test_configs_follow_the_paper(variant, drop_path):
  """The recipes; that every config builds its model (the demos at their size) is tests/test_configs.py's
  and tests/test_models.py's."""
  c224 = importlib.import_module(f'configs.nommer_{variant}').get_config()
  assert (c224.model, c224.data.image_size, c224.num_epochs) == (f'nommer_{variant}', 224, 300.0)
  assert c224.model_kwargs.drop_path_rate == drop_path
  assert math.isclose(c224.schedule.lr * c224.batch_size / c224.schedule.lr_base_batch, 1e-3)  # paper: 1e-3 at batch 1024
  c384 = importlib.import_module(f'configs.nommer_{variant}_384').get_config()
  assert (c384.model, c384.data.image_size, c384.num_epochs, c384.batch_size) == (f'nommer_{variant}_384', 384, 30.0,
                                                                                 512)
  assert c384.init_from and math.isclose(c384.schedule.lr, 1e-5) and c384.optim.weight_decay == 1e-8
