"""Shared layers against independent references (numpy brute force, lax's own grouped convs)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from lgvit.models import kernels, layers


def _lax_grouped(x, k, strides, padding, groups):
  return lax.conv_general_dilated(x, k, strides, padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                  feature_group_count=groups, precision=lax.Precision.HIGHEST)


@pytest.mark.parametrize('path', ['cpu', 'native'])
@pytest.mark.parametrize('k', [2, (2, 3)])
def test_upsample_conv_transpose_is_flax_conv_transpose(path, k):
  """Same parameters, values and gradients as flax's nn.ConvTranspose(k, strides=k, 'VALID'), and each
  output block is a numpy brute force of the painted input pixel (the kernel tap order)."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(3, 5, 4, 6)), jnp.float32)
  kh, kw = (k, k) if isinstance(k, int) else k
  ours = layers.UpsampleConvTranspose(7, k, bias_init=jax.nn.initializers.normal(1.0))
  flax_op = nn.ConvTranspose(7, (kh, kw), strides=(kh, kw), padding='VALID', precision=lax.Precision.HIGHEST)
  variables = ours.init(jax.random.PRNGKey(0), x)
  assert jax.tree_util.tree_map(jnp.shape, variables) == jax.tree_util.tree_map(
      jnp.shape, flax_op.init(jax.random.PRNGKey(0), x))

  def loss(module, v, x):
    return jnp.sum(jnp.sin(module.apply(v, x)))

  with kernels.force(path), jax.default_matmul_precision('highest'):
    out = ours.apply(variables, x)
    grads = jax.grad(lambda v, x: loss(ours, v, x), argnums=(0, 1))(variables, x)
  np.testing.assert_allclose(out, flax_op.apply(variables, x), rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(grads),
                  jax.tree_util.tree_leaves(jax.grad(lambda v, x: loss(flax_op, v, x), argnums=(0, 1))(variables, x))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  kernel, bias = (np.asarray(variables['params'][n], np.float64) for n in ('kernel', 'bias'))
  xn = np.asarray(x, np.float64)
  for i, j, a, b in [(0, 0, 0, 0), (4, 3, kh - 1, kw - 1), (2, 1, 1, 0)]:
    want = xn[:, i, j] @ kernel[kh - 1 - a, kw - 1 - b] + bias
    np.testing.assert_allclose(out[:, kh * i + a, kw * j + b], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('k,cin,cout,groups,stride,pad', [
    (3, 8, 8, 4, 1, 1), (3, 8, 16, 2, 2, 1), (1, 16, 8, 8, 1, 0), (1, 16, 16, 4, 2, 0), (3, 6, 6, 6, 1, 1),
    (5, 4, 4, 4, 1, 2), (3, 6, 12, 3, 2, 1), (1, 8, 12, 1, 1, 0), (1, 8, 12, 1, 2, 0), (3, 4, 8, 1, 2, 1)])
def test_grouped_conv_matches_feature_group_count(k, cin, cout, groups, stride, pad):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 9, 7, cin)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(k, k, cin // groups, cout)), jnp.float32)
  padding = ((pad, pad), (pad, pad))
  with kernels.force('cpu'):  # the rewrite; the native path is this very lax call
    ours = kernels.conv(x, w, (stride, stride), padding, groups, lax.Precision.HIGHEST)
    # Gradients too: the point of the rewrite is the backward pass.
    g1 = jax.grad(lambda w: jnp.sum(jnp.sin(kernels.conv(x, w, (stride, stride), padding, groups))))(w)
  ref = _lax_grouped(x, w, (stride, stride), padding, groups)
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
  g2 = jax.grad(lambda w: jnp.sum(jnp.sin(_lax_grouped(x, w, (stride, stride), padding, groups))))(w)
  np.testing.assert_allclose(g1, g2, rtol=1e-4, atol=1e-4)


def test_batchnorm_matches_torch_semantics():
  rng = np.random.default_rng(1)
  x = rng.normal(2.0, 3.0, size=(4, 5, 6, 3)).astype(np.float32)
  bn = layers.BatchNorm()
  v = bn.init(jax.random.PRNGKey(0), x, train=False)
  y, upd = bn.apply(v, x, train=True, mutable=['batch_stats'])
  flat = x.reshape(-1, 3).astype(np.float64)
  np.testing.assert_allclose(y, (x - flat.mean(0)) / np.sqrt(flat.var(0) + 1e-5), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(upd['batch_stats']['mean'], 0.1 * flat.mean(0), rtol=1e-5)
  np.testing.assert_allclose(upd['batch_stats']['var'], 0.9 + 0.1 * flat.var(0, ddof=1), rtol=1e-5)
  y_eval = bn.apply({**v, **upd}, x, train=False)
  m, s = upd['batch_stats']['mean'], upd['batch_stats']['var']
  np.testing.assert_allclose(y_eval, (x - m) / np.sqrt(s + 1e-5), rtol=1e-4, atol=1e-4)


def _batchnorm_autodiff_reference(x, scale, bias, eps=1e-5):
  mean = jnp.mean(x, axis=(0, 1, 2))
  var = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2))
  return (x - mean) * lax.rsqrt(var + eps) * scale + bias, mean, var


def test_batchnorm_custom_gradient_matches_autodiff():
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(1.0, 2.0, size=(3, 4, 5, 6)), jnp.float32)
  scale = jnp.asarray(rng.normal(size=6), jnp.float32)
  bias = jnp.asarray(rng.normal(size=6), jnp.float32)
  probe = [jnp.asarray(rng.normal(size=s), jnp.float32) for s in (x.shape, (6,), (6,))]

  def loss(fn):
    # Weighs all three outputs, so the mean/var cotangents are checked too.
    return lambda x, s, b: sum(jnp.sum(jnp.sin(o) * p) for o, p in zip(fn(x, s, b), probe))

  ours = jax.grad(loss(lambda x, s, b: kernels._batch_norm_train_cpu(x, s, b, 1e-5, jnp.float32)), (0, 1, 2))
  ref = jax.grad(loss(_batchnorm_autodiff_reference), (0, 1, 2))
  for a, b in zip(ours(x, scale, bias), ref(x, scale, bias)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_channel_sums_are_as_accurate_as_a_tree_reduction():
  # A single matvec over all 100k rows drifts ~1e-5 from the exact sum: enough for a few training
  # steps to depend on how many devices share the batch (tests/test_train.py::test_two_processes...).
  x = np.random.default_rng(3).normal(3.0, 1.0, size=(8, 112, 112, 4)).astype(np.float32)
  exact = x.astype(np.float64).sum((0, 1, 2))
  ours = np.asarray(jax.jit(kernels.channel_sums)(x), np.float64)
  np.testing.assert_allclose(ours, exact, rtol=1e-6)
  for shape in [(5, 3, 7, 2), (4, 1, 1, 3), (6, 2)]:  # awkward divisors, 1x1 maps, plain (N, C)
    y = np.random.default_rng(4).normal(size=shape).astype(np.float32)
    np.testing.assert_allclose(kernels.channel_sums(y), y.sum(tuple(range(y.ndim - 1))), rtol=1e-5, atol=1e-5)


def _torch_avg_pool_ref(x, k, s, p, ceil_mode, count_include_pad):
  """Direct transcription of PyTorch's AvgPool2d index rules."""
  n, h, w, c = x.shape

  def out_size(size):
    num = size + 2 * p - k
    o = (-(-num // s) if ceil_mode else num // s) + 1
    if ceil_mode and (o - 1) * s >= size + p:
      o -= 1
    return o

  oh, ow = out_size(h), out_size(w)
  out = np.zeros((n, oh, ow, c))
  for i in range(oh):
    for j in range(ow):
      hs, ws = i * s - p, j * s - p
      he, we = min(hs + k, h + p), min(ws + k, w + p)
      pool = (he - hs) * (we - ws)
      hs2, ws2, he2, we2 = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
      div = pool if count_include_pad else (he2 - hs2) * (we2 - ws2)
      out[:, i, j] = x[:, hs2:he2, ws2:we2].sum(axis=(1, 2)) / div
  return out


@pytest.mark.parametrize('size', [(7, 5), (8, 8), (5, 6), (4, 3), (6, 9)])
@pytest.mark.parametrize('k,s,p,ceil,incl', [
    (3, 2, 1, False, True),  # CoT blocks: AvgPool2d(3, 2, 1) before the layer
    (2, 2, 0, True, False),  # SE-CoTNetD shortcut: AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False)
    (3, 2, 1, True, True),
    (2, 2, 0, False, True),
    (3, 2, 1, True, False),
])
def test_avg_pool_matches_pytorch_rules(size, k, s, p, ceil, incl):
  x = np.random.default_rng(2).normal(size=(2,) + size + (3,)).astype(np.float32)
  ours = layers.avg_pool(jnp.asarray(x), k, s, p, ceil_mode=ceil, count_include_pad=incl)
  np.testing.assert_allclose(ours, _torch_avg_pool_ref(x, k, s, p, ceil, incl), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('bias_shape', [(4, 5, 5), (1, 4, 5, 5), (4, 1, 5), (2, 3, 4, 5, 5), (5,)])
def test_add_broadcast_bias_gradients_equal_plain_add(bias_shape):
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 4, 5, 5))
  b = jax.random.normal(jax.random.PRNGKey(1), bias_shape)
  w = jax.random.normal(jax.random.PRNGKey(2), x.shape)
  with kernels.force('cpu'):
    ours = jax.grad(lambda x, b: jnp.sum(jnp.sin(kernels.add_broadcast_bias(x, b)) * w), (0, 1))(x, b)
    tangent = jax.jvp(kernels.add_broadcast_bias, (x, b), (w, b))[1]
  plain = jax.grad(lambda x, b: jnp.sum(jnp.sin(x + b) * w), (0, 1))(x, b)
  for a, c in zip(ours, plain):
    np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(tangent, w + b, rtol=1e-6)


def test_window_partition_roundtrip_and_order():
  x = jnp.arange(2 * 4 * 6 * 3, dtype=jnp.float32).reshape(2, 4, 6, 3)
  win = layers.window_partition(x, 2)
  assert win.shape == (2, 6, 4, 3)
  np.testing.assert_array_equal(win[0, 1, :, 0], np.asarray(x)[0, 0:2, 2:4, 0].reshape(-1))
  np.testing.assert_array_equal(layers.window_reverse(win, 2, 4, 6), x)


def test_relative_position_index_formula():
  idx = layers.relative_position_index(3)
  coords = [(i, j) for i in range(3) for j in range(3)]
  for a, (yi, xi) in enumerate(coords):
    for b, (yj, xj) in enumerate(coords):
      assert idx[a, b] == (yi - yj + 2) * 5 + (xi - xj + 2)


def test_relative_table_resize_identity_and_shape():
  table = np.random.default_rng(3).normal(size=(13 * 13, 3)).astype(np.float32)
  np.testing.assert_array_equal(layers.resize_relative_position_table(table, (13 * 13, 3)), table)
  assert layers.resize_relative_position_table(table, (23 * 23, 3)).shape == (23 * 23, 3)
  with pytest.raises(ValueError, match='heads differ'):
    layers.resize_relative_position_table(table, (23 * 23, 4))


def test_shifted_window_mask_blocks_wrapped_regions():
  mask = layers.shifted_window_mask(4, 4, 2, 1)
  assert mask.shape == (4, 4, 4)
  assert mask[0].all()  # the top-left window never wraps
  assert not mask[-1].all()  # the bottom-right one mixes wrapped regions


def test_drop_path_rates_linear():
  rates = layers.drop_path_rates(0.3, [1, 2, 1])
  np.testing.assert_allclose(sum(rates, []), np.linspace(0, 0.3, 4))
