"""Swin baselines: parameter counts of the official code, and shifted-window attention against a
pairwise numpy definition that never builds Swin's mask."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_salg import _np_dense, _np_ln, _np_mlp, _randomized

from lgvit.models import create_model, swin
from lgvit.models.layers import count_params


def test_swin_st_param_count_by_hand():
  dims, heads = (48, 96, 192, 384), (2, 3, 6, 12)
  n = 4 * 4 * 3 * 48 + 48 + 2 * 48  # patch embedding conv + LayerNorm
  for i, (d, h) in enumerate(zip(dims, heads)):
    if i:
      n += 8 * dims[i - 1] + 8 * dims[i - 1]**2
    n += 2 * (12 * d * d + 13 * d + 169 * h)
  n += 2 * 384 + 384 * 1000 + 1000
  shapes = jax.eval_shape(lambda: create_model('swin_st').init(jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3))))
  assert count_params(shapes['params']) == n


def shifted_window_block_numpy(params, x, heads, window, shift):
  """Token i attends to token j iff both fall in the same window of the cyclically shifted map and
  are neighbours in the original map too (no wrap-around between them)."""
  b, h, w, c = x.shape
  u, v = np.meshgrid(np.arange(h), np.arange(w), indexing='ij')
  u, v = u.ravel(), v.ravel()
  ur, vr = (u - shift) % h, (v - shift) % w  # coordinates after rolling by -shift
  same_window = (ur[:, None] // window == ur[None] // window) & (vr[:, None] // window == vr[None] // window)
  contiguous = ((u[:, None] - u[None]) == (ur[:, None] - ur[None])) & ((v[:, None] - v[None]) == (vr[:, None] - vr[None]))
  allowed = same_window & contiguous
  table = params['attn']['rel_pos']['relative_position_bias_table']
  rel = (ur[:, None] - ur[None] + window - 1) * (2 * window - 1) + (vr[:, None] - vr[None] + window - 1)
  bias = np.where(allowed, 0.0, -np.inf)[None] + table[np.where(allowed, rel, 0)].transpose(2, 0, 1)
  out = np.zeros_like(x)
  for bi in range(b):
    seq = x[bi].reshape(h * w, c)
    y = _np_ln(seq, params['norm1'])
    p = params['attn']['attn']
    qkv = _np_dense(y, p['qkv']).reshape(h * w, 3, heads, c // heads).transpose(1, 2, 0, 3)
    logits = qkv[0] @ qkv[1].transpose(0, 2, 1) * (c // heads)**-0.5 + bias
    wts = np.exp(logits - logits.max(-1, keepdims=True))
    wts /= wts.sum(-1, keepdims=True)
    seq = seq + _np_dense((wts @ qkv[2]).transpose(1, 0, 2).reshape(h * w, c), p['proj'])
    seq = seq + _np_mlp(_np_ln(seq, params['norm2']), params['mlp'])
    out[bi] = seq.reshape(h, w, c)
  return out


@pytest.mark.parametrize('shift', [0, 2])
def test_shifted_window_block_matches_pairwise_definition(shift):
  heads, window, c = 2, 4, 8
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 12, c))
  block = swin.SwinBlock(heads, window=window, shift=shift, mlp_ratio=2.0)
  params = _randomized(block.init(jax.random.PRNGKey(1), x)['params'], jax.random.PRNGKey(2))
  with jax.default_matmul_precision('highest'):
    ours = np.asarray(block.apply({'params': params}, x))
  np_params = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
  ref = shifted_window_block_numpy(np_params, np.asarray(x, np.float64), heads, window, shift)
  np.testing.assert_allclose(ours, ref, rtol=2e-4, atol=2e-4)


def test_small_maps_are_one_unshifted_window():
  assert swin.stage_window(56, 56, 7) == (7, 3)
  assert swin.stage_window(7, 7, 7) == (7, 0)  # Swin-T stage 4 at 224
  assert swin.stage_window(2, 4, 4) == (2, 0)


def test_tiny_forward_and_features():
  model = create_model('swin_st', num_classes=3, embed_dim=16, num_heads=(1, 1, 2, 2), window=4, depths=(2, 1, 1, 1))
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32, 3))
  variables = jax.jit(model.init)(jax.random.PRNGKey(1), x)
  logits = jax.jit(model.apply)(variables, x)
  assert logits.shape == (2, 3) and np.isfinite(np.asarray(logits)).all()
  feats = jax.eval_shape(model.clone(features_only=True).apply, variables, x)
  assert [f.shape for f in feats] == [(2, 8, 8, 16), (2, 4, 4, 32), (2, 2, 2, 64), (2, 1, 1, 128)]
