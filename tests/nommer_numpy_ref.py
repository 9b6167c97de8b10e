"""An independent float64 numpy re-derivation of NomMer's train-mode forward and loss.

Written from ``docs/official_code.md`` (NomMer) (not from lgvit/models/nommer.py): windows by explicit
loops, the relative-position bias by its formula, the DCT as separable 1-D transforms, BatchNorm
on batch statistics. It reads the lgvit parameter tree (names are the interface, not the maths).

Gradients come from central differences of :func:`loss`. The straight-through nominator is the
surrogate ``m = hard0 + p(theta) - p0``: the one-hot choice ``hard0`` and the softmax ``p0`` are
frozen at the base point (``frozen`` returned by the first call), which is exactly what
``one_hot - stop_gradient(p) + p`` differentiates.
"""
from __future__ import annotations

import numpy as np
from scipy.special import erf

EPS = 1e-5


def conv(x, kernel, stride=1, pad=0, groups=1, bias=None):
  """NHWC conv with an HWIO kernel (in/groups inputs per output), PyTorch zero padding."""
  kh, kw, cin_g, cout = kernel.shape
  xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  b, hp, wp, cin = xp.shape
  ho, wo = (hp - kh) // stride + 1, (wp - kw) // stride + 1
  cout_g = cout // groups
  out = np.zeros((b, ho, wo, cout))
  for g in range(groups):
    xs = xp[..., g * cin_g:(g + 1) * cin_g]
    for i in range(kh):
      for j in range(kw):
        patch = xs[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride, :]
        out[..., g * cout_g:(g + 1) * cout_g] += patch @ kernel[i, j, :, g * cout_g:(g + 1) * cout_g]
  return out if bias is None else out + bias


def batch_norm(x, p, stats, new_stats, name):
  """Train-mode BN: normalise with the biased batch variance, record the unbiased one."""
  axes = tuple(range(x.ndim - 1))
  mean = x.mean(axes)
  var = ((x - mean)**2).mean(axes)
  n = x.size // x.shape[-1]
  new_stats[name] = {'mean': 0.9 * stats['mean'] + 0.1 * mean, 'var': 0.9 * stats['var'] + 0.1 * var * n / (n - 1)}
  return (x - mean) / np.sqrt(var + EPS) * p['scale'] + p['bias']


def layer_norm(x, p):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean)**2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + EPS) * p['scale'] + p['bias']


def dense(x, p):
  return x @ p['kernel'] + (p['bias'] if 'bias' in p else 0.0)


def gelu(x):
  return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def softmax(z):
  z = z - z.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


def mhsa(tokens, qkv, proj, heads, bias=None):
  """tokens (..., n, d); qkv output is [q | k | v], each head-major; bias (heads, n, n)."""
  d = tokens.shape[-1]
  hd = d // heads
  full = dense(tokens, qkv)
  outs = []
  for h in range(heads):
    q = full[..., h * hd:(h + 1) * hd]
    k = full[..., d + h * hd:d + (h + 1) * hd]
    v = full[..., 2 * d + h * hd:2 * d + (h + 1) * hd]
    logits = q @ np.swapaxes(k, -1, -2) / np.sqrt(hd)
    if bias is not None:
      logits = logits + bias[h]
    outs.append(softmax(logits) @ v)
  return dense(np.concatenate(outs, -1), proj)


def relative_bias(table, w):
  heads = table.shape[1]
  bias = np.zeros((heads, w * w, w * w))
  for i in range(w * w):
    for j in range(w * w):
      (yi, xi), (yj, xj) = divmod(i, w), divmod(j, w)
      bias[:, i, j] = table[(yi - yj + w - 1) * (2 * w - 1) + (xi - xj + w - 1)]
  return bias


def window_attention(y, p, heads, w):
  b, h, wd, d = y.shape
  bias = relative_bias(p['rel_pos']['relative_position_bias_table'], w)
  out = np.zeros_like(y)
  for r in range(h // w):
    for c in range(wd // w):
      tokens = y[:, r * w:(r + 1) * w, c * w:(c + 1) * w, :].reshape(b, w * w, d)
      out[:, r * w:(r + 1) * w, c * w:(c + 1) * w, :] = mhsa(tokens, p['attn']['qkv'], p['attn']['proj'], heads,
                                                             bias).reshape(b, w, w, d)
  return out


def dct_matrix(n):
  """Rows: the kept 1-D orthonormal DCT-II basis vectors, (ceil(n/2), n)."""
  a = (n + 1) // 2
  m = np.zeros((a, n))
  for v in range(a):
    scale = np.sqrt(1.0 / n) if v == 0 else np.sqrt(2.0 / n)
    m[v] = scale * np.cos(np.pi * (2 * np.arange(n) + 1) * v / (2 * n))
  return m


def cgca(y, p, heads, n, stats, new_stats, name):
  b, h, w, d = y.shape
  m = dct_matrix(n)
  a = m.shape[0]
  blocks = y.reshape(b, h // n, n, w // n, n, d)
  coef = np.einsum('vr,bprqsc,us->bpqcvu', m, blocks, m)  # per block: M X M^T
  z = conv(coef.reshape(b, h // n, w // n, d * a * a), p['compress']['kernel'], groups=8)
  z = batch_norm(z, p['bn'], stats['bn'], new_stats, name + '/bn')
  pq = z.shape[1:3]
  z = mhsa(z.reshape(b, -1, d), p['attn']['to_qkv'], p['attn']['to_out'], heads).reshape(b, *pq, d)
  z = conv(z, p['expand']['kernel'], groups=8).reshape(b, *pq, d, a, a)
  return np.einsum('vr,bpqcvu,us->bprqsc', m, z, m).reshape(b, h, w, d)


def bottleneck(y, p, stats, new_stats, name):
  z = y
  for k, (kernel, pad) in enumerate([(1, 0), (3, 1), (1, 0)], start=1):
    unit = p[f'conv{k}']
    z = conv(z, unit['conv']['kernel'], pad=pad)
    z = batch_norm(z, unit['bn'], stats[f'conv{k}']['bn'], new_stats, f'{name}/conv{k}/bn')
    if k < 3:
      z = np.maximum(z, 0.0)
  return np.maximum(z + y, 0.0)


def s_block(x, p, stats, cfg, stage, noise, frozen, record, new_stats, name):
  y = layer_norm(x, p['norm1'])
  c, cs = p['context'], stats['context']
  branches = [
      bottleneck(y, c['cnn'], cs['cnn'], new_stats, name + '/context/cnn'),
      window_attention(y, c['local'], cfg['num_heads'][stage], cfg['window']),
      cgca(y, c['global'], cfg['num_heads'][stage], cfg['dct_blocks'][stage], cs['global'], new_stats,
           name + '/context/global'),
  ]
  logits = dense(branches[0] + branches[1] + branches[2], c['nominator']['fc'])
  p_soft = softmax((logits + noise[name]) / cfg['temperature'])
  if frozen is None:
    hard = np.eye(3)[p_soft.argmax(-1)]
    record[name] = (hard, p_soft)
    m = hard
  else:
    hard, p0 = frozen[name]
    m = hard + p_soft - p0
  ctx = sum(m[..., i:i + 1] * branches[i] for i in range(3))
  x = x + ctx
  return x + ffn(x, p)


def ffn(x, p):
  y = layer_norm(x, p['norm2'])
  return dense(gelu(dense(y, p['mlp']['fc1'])), p['mlp']['fc2'])


def g_block(x, p, heads):
  x = x + mhsa(layer_norm(x, p['norm1']), p['attn']['to_qkv'], p['attn']['to_out'], heads)
  return x + ffn(x, p)


def merge(x, p):
  x = conv(x, p['conv']['kernel'], pad=1, bias=p['conv']['bias'])
  b, h, w, c = x.shape
  x = x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
  return layer_norm(x, p['norm'])


def loss(params, batch_stats, x, labels, cfg, noise, frozen=None):
  """Mean cross-entropy of a train-mode forward; returns (loss, frozen nominator state, new batch stats)."""
  record, new_stats = {}, {}
  stem = params['stem']
  h = conv(x, stem['conv']['kernel'], stride=4)
  h = np.maximum(batch_norm(h, stem['bn'], batch_stats['stem']['bn'], new_stats, 'stem/bn'), 0.0)
  for s in range(2):
    for i in range(cfg['depths'][s]):
      name = f'stage{s + 1}_block{i}'
      h = s_block(h, params[name], batch_stats[name], cfg, s, noise, frozen, record, new_stats, name)
    h = merge(h, params[f'merge{s + 1}'])
  b, gh, gw, c = h.shape
  h = (h + params['pos_embedding']).reshape(b, gh * gw, c)
  for i in range(cfg['depths'][2]):
    h = g_block(h, params[f'stage3_block{i}'], cfg['num_heads'][2])
  h = merge(h.reshape(b, gh, gw, c), params['merge3'])
  b, gh, gw, c = h.shape
  cls = np.broadcast_to(params['cls_token'], (b, 1, c))
  h = np.concatenate([cls, h.reshape(b, gh * gw, c)], axis=1)
  for i in range(cfg['depths'][3]):
    h = g_block(h, params[f'stage4_block{i}'], cfg['num_heads'][3])
  logits = dense(layer_norm(h[:, 0], params['head_norm']), params['head'])
  z = logits - logits.max(-1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
  return -logp[np.arange(b), labels].mean(), record, new_stats
