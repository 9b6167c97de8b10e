"""The kernel switch: both paths of every two-path op, and of every fixture network, agree on CPU."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from conftest import random_variables, small_kwargs

from lgvit.models import create_model, kernels

PATHS = ('cpu', 'native')


def both_paths(fn, *args):
  """``fn(*args)`` traced under each kernel path.

  Each path gets a new function object to jit: ``jax.jit`` caches traces per function, so jitting
  ``fn`` itself twice would run the first path's program again.
  """
  out = {}
  for p in PATHS:
    with kernels.force(p):
      out[p] = jax.jit(lambda *a: fn(*a))(*args)
  return out['cpu'], out['native']


def assert_trees_close(a, b, rtol, atol_scale):
  """Leafwise ``|a - b| <= rtol |b| + atol_scale * max(max|b_leaf|, 0.01 max|b|)``.

  The atol follows each leaf's own scale, with a floor at the scale of the whole tree: some
  gradients are exactly zero in exact arithmetic (a bias right before a BatchNorm), so both paths
  return pure round-off there.
  """
  flat_a, tree_a = jax.tree_util.tree_flatten_with_path(a)
  flat_b, tree_b = jax.tree_util.tree_flatten(b)
  assert tree_a == tree_b
  flat_b = [np.asarray(y, np.float64) for y in flat_b]
  floor = 0.01 * max((np.abs(y).max() for y in flat_b), default=0.0)
  for (path, x), y in zip(flat_a, flat_b):
    np.testing.assert_allclose(np.asarray(x, np.float64), y, rtol=rtol,
                               atol=atol_scale * max(np.abs(y).max(), floor) + 1e-30,
                               err_msg=jax.tree_util.keystr(path))


# ---------------------------------------------------------------------------------------------
# The switch itself.
# ---------------------------------------------------------------------------------------------


def test_auto_follows_the_backend_and_force_nests(monkeypatch):
  monkeypatch.delenv(kernels.ENV_VAR, raising=False)
  assert kernels.path() == ('cpu' if jax.default_backend() == 'cpu' else 'native')
  with kernels.force('native'):
    assert kernels.path() == 'native'
    with kernels.force('cpu'):
      assert kernels.path() == 'cpu'
    assert kernels.path() == 'native'
  monkeypatch.setenv(kernels.ENV_VAR, 'native')
  assert kernels.path() == 'native'
  with kernels.force('auto'):  # the context wins over the environment
    assert kernels.path() == ('cpu' if jax.default_backend() == 'cpu' else 'native')


def test_unknown_paths_are_one_line_errors(monkeypatch):
  with pytest.raises(kernels.KernelChoiceError, match='use one of auto, cpu, native'):
    with kernels.force('gpu'):
      pass
  monkeypatch.setenv(kernels.ENV_VAR, 'tpu')
  with pytest.raises(kernels.KernelChoiceError, match='LGVIT_KERNELS'):
    kernels.path()


def test_the_paths_trace_different_programs():
  # Guards the tests below against comparing a path with itself.
  x, w = jnp.ones((1, 6, 6, 8)), jnp.ones((3, 3, 2, 8))
  hlo = {}
  for p in PATHS:
    with kernels.force(p):
      hlo[p] = jax.jit(lambda x, w: kernels.conv(x, w, (1, 1), ((1, 1), (1, 1)), 4)).lower(x, w).as_text()
  assert 'feature_group_count = 4' in hlo['native'] and 'feature_group_count = 4' not in hlo['cpu']


# ---------------------------------------------------------------------------------------------
# Every op with two paths: values and gradients.
# ---------------------------------------------------------------------------------------------


def _grads_of(fn, n_args):
  """(value, gradients of sum(sin(value) * probe)) of ``fn``: a generic non-linear loss."""

  def run(*args):
    out = fn(*args)
    probe = jnp.cos(jnp.arange(out.size, dtype=jnp.float32).reshape(out.shape))
    return out, jax.grad(lambda *a: jnp.sum(jnp.sin(fn(*a)) * probe), tuple(range(n_args)))(*args)

  return run


@pytest.mark.parametrize('k,cin,cout,groups,stride,pad', [
    (3, 8, 8, 1, 1, 1), (1, 8, 12, 1, 1, 0), (1, 8, 12, 1, 2, 0), (3, 8, 16, 4, 2, 1), (1, 16, 8, 8, 1, 0),
    (1, 16, 16, 4, 2, 1), (3, 6, 6, 6, 1, 1), (5, 4, 4, 4, 1, 2)])
def test_conv_paths_agree(k, cin, cout, groups, stride, pad):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 9, 7, cin)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(k, k, cin // groups, cout)), jnp.float32)
  conv = lambda x, w: kernels.conv(x, w, (stride, stride), ((pad, pad), (pad, pad)), groups, lax.Precision.HIGHEST)
  cpu, native = both_paths(_grads_of(conv, 2), x, w)
  assert_trees_close(cpu, native, 1e-5, 1e-5)


@pytest.mark.parametrize('shape', [(4, 5, 6, 3), (6, 16), (2, 3, 4, 5, 7)])
@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_batch_norm_paths_agree(shape, dtype):
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(2.0, 3.0, size=shape), dtype)
  scale, bias = (jnp.asarray(rng.normal(size=shape[-1:]), jnp.float32) for _ in range(2))
  probe = [jnp.asarray(rng.normal(size=s), jnp.float32) for s in (shape, shape[-1:], shape[-1:])]

  def run(x, scale, bias):
    bn = lambda x, s, b: kernels.batch_norm_train(x, s, b, 1e-5, dtype)
    # All three outputs weighed, so the cotangents of the returned statistics are checked too.
    loss = lambda *a: sum(jnp.sum(jnp.sin(o.astype(jnp.float32)) * p) for o, p in zip(bn(*a), probe))
    return bn(x, scale, bias), jax.grad(loss, (0, 1, 2))(x, scale, bias)

  cpu, native = both_paths(run, x, scale, bias)
  tol = 1e-5 if dtype == jnp.float32 else 1e-2  # a bf16 output is rounded after the shared float32 math
  assert_trees_close(cpu, native, tol, tol)


@pytest.mark.parametrize('bias_shape', [(4, 5, 5), (1, 4, 5, 5), (4, 1, 5), (5,)])
def test_broadcast_bias_paths_agree(bias_shape):
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 4, 5, 5))
  b = jax.random.normal(jax.random.PRNGKey(1), bias_shape)
  cpu, native = both_paths(_grads_of(kernels.add_broadcast_bias, 2), x, b)
  assert_trees_close(cpu, native, 1e-5, 1e-6)


@pytest.mark.parametrize('k,groups,share,heads', [(3, 1, 8, 2), (3, 2, 8, 1), (5, 1, 4, 3)])
def test_shifted_window_sum_paths_agree(k, groups, share, heads):
  rng = np.random.default_rng(2)
  value = jnp.asarray(rng.normal(size=(2, 6, 5, groups, share, heads)), jnp.float32)
  attn = jnp.asarray(rng.normal(size=(k * k, 2, 6, 5, groups, 1, heads)), jnp.float32)
  cpu, native = both_paths(_grads_of(lambda v, a: kernels.shifted_window_sum(v, a, k), 2), value, attn)
  assert_trees_close(cpu, native, 1e-5, 1e-6)


# ---------------------------------------------------------------------------------------------
# Whole networks: the architectures of the reference fixtures, and a small Swin and SALG.
# ---------------------------------------------------------------------------------------------

LESA_SMALL = dict(num_classes=10, stage_depths=(1, 1, 2, 1), base_width=16, expansion=1)
NETWORKS = {  # fixture (or family) -> (registered model, overrides, image (H, W))
    'nommer_micro_64': ('nommer_t', dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(2, 2, 4, 8), window=4,
                                         dct_blocks=(4, 2), cnn_reductions=(2, 4), num_classes=10), (64, 64)),
    'cotnet_tiny': ('cotnet50', dict(num_classes=10, stage_depths=(1, 1, 1, 1), base_width=16), (64, 48)),
    'cotnext_tiny': ('cotnext50_2x48d', dict(num_classes=10, stage_depths=(1, 1, 1, 1), base_width=8), (64, 48)),
    'se_cotnetd50style_tiny': ('se_cotnetd50', dict(num_classes=10, stage_depths=(1, 1, 1, 1), base_width=16,
                                                    stem_width=16), (64, 48)),
    'se_cotnetd152style_tiny': ('se_cotnetd152', dict(num_classes=10, stage_depths=(1, 1, 1, 1), base_width=16,
                                                      stem_width=16), (64, 48)),
    'lesa_small_112': ('lesa_resnet50', dict(LESA_SMALL, stage_strides=(1, 2, 2, 1)), (112, 112)),
    'lesa_small_128_s2': ('lesa_resnet50', dict(LESA_SMALL, stage_strides=(1, 2, 2, 2)), (128, 128)),
    'salg_demo': ('salg_st', dict(small_kwargs('salg_st'), num_classes=10), (32, 32)),
    'swin_demo': ('swin_st', dict(small_kwargs('swin_st'), num_classes=10), (32, 32)),
}


# Two networks run by default: NomMer and CoXt hold every two-path op between them (the op tests
# above cover each op on its own). The others cost 15-30 s each on 2 cores: `pytest -m slow`.
IN_DEFAULT_SUITE = ('nommer_micro_64', 'cotnext_tiny')
# LLVM's optimisation level changes neither path's HLO, only how long XLA:CPU takes to compile it.
FAST_COMPILE = {'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}


@pytest.mark.parametrize('network', [n if n in IN_DEFAULT_SUITE else pytest.param(n, marks=pytest.mark.slow)
                                     for n in sorted(NETWORKS)])
def test_network_paths_agree(network):
  """Eval logits, train-mode logits, updated BatchNorm statistics and parameter gradients."""
  name, overrides, (h, w) = NETWORKS[network]
  model = create_model(name, **overrides)
  x = jnp.asarray(np.random.default_rng(3).normal(size=(2, h, w, 3)), jnp.float32)
  variables = random_variables(model, x, scale=0.2)
  params, state = variables['params'], {k: v for k, v in variables.items() if k != 'params'}
  rngs = {s: jax.random.PRNGKey(i) for i, s in enumerate(('dropout', 'drop_path', 'gumbel'))}

  def run(params, x):
    eval_logits = model.apply({'params': params, **state}, x, train=False)

    def loss(params):
      logits, new_state = model.apply({'params': params, **state}, x, train=True, rngs=rngs,
                                      mutable=list(state))
      probe = jnp.cos(jnp.arange(logits.size, dtype=jnp.float32).reshape(logits.shape))
      return jnp.sum(logits * probe), (logits, new_state)

    (_, (train_logits, new_state)), grads = jax.value_and_grad(loss, has_aux=True)(params)
    return eval_logits, train_logits, new_state, grads

  out = {}
  for p in PATHS:
    with kernels.force(p), jax.default_matmul_precision('highest'):
      out[p] = jax.jit(lambda *a: run(*a)).lower(params, x).compile(FAST_COMPILE)(params, x)
  # Gradients pass through ~20 layers of float32 round-off, and BatchNorms over 2 pooled vectors
  # (the SE and fusion MLPs) amplify it. Measured against float64 (no drop-path): each path's worst
  # gradient is 2e-4 to 1.4e-3 off, relative to max(|leaf|, 1% of the largest gradient); the CPU
  # form is the noisier one behind those BatchNorms, XLA:CPU's grouped conv the noisier in NomMer.
  for cpu, native in zip(out['cpu'], out['native']):
    assert_trees_close(cpu, native, 1e-4, 3e-3)
