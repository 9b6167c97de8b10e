"""Layers shared by every lgvit family.

Everything is NHWC and follows the PyTorch semantics of the official code bases (eps, momentum,
padding, initialisation), because the fixtures and converted checkpoints depend on them.

The ops whose fast form depends on the backend (grouped and depthwise convolutions, BatchNorm
statistics, broadcast-bias gradients) go through :mod:`lgvit.models.kernels`, which traces XLA:CPU
rewrites on CPU and XLA's native ops on TPU/GPU; the parameters are the same either way.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lgvit.errors import InvalidInputSizeError
from lgvit.models import kernels

Array = jax.Array
Dtype = Any
Initializer = Callable[..., Array]

# --------------------------------------------------------------------------------------------
# Initialisers matching the official PyTorch code.
# --------------------------------------------------------------------------------------------

#: PyTorch's default ``nn.Conv2d``/``nn.Linear`` weight init, kaiming_uniform(a=sqrt(5)) == U(+-1/sqrt(fan_in)).
torch_default_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')
#: ``kaiming_normal_(mode='fan_out', nonlinearity='relu')``; like PyTorch, fan_out ignores groups.
kaiming_normal_fan_out = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')
#: timm's ``trunc_normal_(std=.02)`` cuts at +-2 absolute, i.e. it is effectively untruncated.
normal_002 = nn.initializers.normal(0.02)


def torch_default_bias_init(fan_in: int) -> Initializer:
  """PyTorch's default bias init U(+-1/sqrt(fan_in)) for convs and linears."""
  bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


# --------------------------------------------------------------------------------------------
# Norms.
# --------------------------------------------------------------------------------------------


class BatchNorm(nn.Module):
  """BatchNorm with PyTorch semantics (eps 1e-5, momentum 0.1, unbiased running variance).

  Variables are laid out like ``flax.linen.BatchNorm`` (``params/{scale,bias}``,
  ``batch_stats/{mean,var}``). Statistics are reduced over every axis but the last, in float32.
  Under ``jax.jit`` over a data-sharded batch the reduction is global across devices (SyncBN),
  whereas the papers used per-GPU statistics.
  """
  momentum: float = 0.1
  epsilon: float = 1e-5
  scale_init: Initializer = nn.initializers.ones
  bias_init: Initializer = nn.initializers.zeros
  reduce_axes: Optional[Sequence[int]] = None  # default: all but the last
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x: Array, *, train: bool, mask: Optional[Array] = None) -> Array:
    """``mask`` (bool, broadcastable to ``x.shape[:-1]``): in training only its True entries make the
    statistics (flax's ``BatchNorm(mask=)``; the detectors' padding RoI slots)."""
    features = x.shape[-1]
    axes = tuple(self.reduce_axes) if self.reduce_axes is not None else tuple(range(x.ndim - 1))
    scale = self.param('scale', self.scale_init, (features,), jnp.float32)
    bias = self.param('bias', self.bias_init, (features,), jnp.float32)
    ra_mean = self.variable('batch_stats', 'mean', lambda: jnp.zeros((features,), jnp.float32))
    ra_var = self.variable('batch_stats', 'var', lambda: jnp.ones((features,), jnp.float32))
    dtype = self.dtype or x.dtype
    if not train:
      mean, var = ra_mean.value, ra_var.value
    elif mask is not None:
      weight = jnp.broadcast_to(mask, x.shape[:-1])[..., None].astype(jnp.float32)
      count = jnp.sum(weight, axis=axes)
      xf = x.astype(jnp.float32)
      mean = jnp.sum(xf * weight, axis=axes) / jnp.maximum(count, 1.0)
      centred = xf - mean.reshape((1,) * (x.ndim - 1) + (-1,))
      var = jnp.sum(jnp.square(centred) * weight, axis=axes) / jnp.maximum(count, 1.0)
      self._update_running_stats(ra_mean, ra_var, mean, var, count)
    elif axes == tuple(range(x.ndim - 1)):
      y, mean, var = kernels.batch_norm_train(x, scale, bias, self.epsilon, dtype)
      self._update_running_stats(ra_mean, ra_var, mean, var, math.prod(x.shape[:-1]))
      return y
    else:
      xf = x.astype(jnp.float32)
      mean = jnp.mean(xf, axis=axes)
      var = jnp.mean(jnp.square(xf - mean.reshape((1,) * (x.ndim - 1) + (-1,))), axis=axes)
      self._update_running_stats(ra_mean, ra_var, mean, var, math.prod(x.shape[a] for a in axes))
    mul = scale * lax.rsqrt(var + self.epsilon)
    add = bias - mean * mul
    return (x * mul.astype(dtype) + add.astype(dtype)).astype(dtype)

  def _update_running_stats(self, ra_mean, ra_var, mean: Array, biased_var: Array, n) -> None:
    if self.is_initializing():
      return
    bessel = n / jnp.maximum(n - 1, 1) if isinstance(n, jax.Array) else n / max(n - 1, 1)
    ra_mean.value = (1 - self.momentum) * ra_mean.value + self.momentum * mean
    ra_var.value = (1 - self.momentum) * ra_var.value + self.momentum * (biased_var * bessel)


def layer_norm(name: Optional[str] = None, eps: float = 1e-5, dtype: Optional[Dtype] = None) -> nn.LayerNorm:
  """PyTorch-default LayerNorm (eps 1e-5; Flax defaults to 1e-6)."""
  return nn.LayerNorm(epsilon=eps, name=name, dtype=dtype)


# --------------------------------------------------------------------------------------------
# Convolutions.
# --------------------------------------------------------------------------------------------


def _pairs(v):
  return (v, v) if isinstance(v, int) else tuple(v)


class Conv2d(nn.Module):
  """A PyTorch-style ``nn.Conv2d`` in NHWC.

  Parameters: ``kernel`` of shape (kh, kw, in/groups, out) (the layout of both PyTorch after a
  (2, 3, 1, 0) transpose and of ``lax.conv`` with ``feature_group_count``), and ``bias``.
  ``padding`` is symmetric zero padding in pixels, as in PyTorch (or 'SAME'/'VALID').

  The convolution itself is :func:`lgvit.models.kernels.conv` (on CPU no ``feature_group_count``
  reaches XLA).
  """
  features: int
  kernel_size: int | Sequence[int] = 1
  strides: int | Sequence[int] = 1
  padding: Any = 0
  groups: int = 1
  use_bias: bool = False
  kernel_init: Initializer = torch_default_kernel_init
  bias_init: Optional[Initializer] = None
  dtype: Optional[Dtype] = None
  precision: Any = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kh, kw = _pairs(self.kernel_size)
    sh, sw = _pairs(self.strides)
    cin = x.shape[-1]
    g = self.groups
    if cin % g or self.features % g:
      raise ValueError(f'Conv2d: channels in={cin} / out={self.features} are not divisible by groups={g}')
    kernel = self.param('kernel', self.kernel_init, (kh, kw, cin // g, self.features), jnp.float32)
    dtype = self.dtype or x.dtype
    x = x.astype(dtype)
    kernel = kernel.astype(dtype)
    if isinstance(self.padding, str):
      pad = self.padding
    else:
      ph, pw = _pairs(self.padding)
      pad = ((ph, ph), (pw, pw))
    y = kernels.conv(x, kernel, (sh, sw), pad, g, self.precision)
    if self.use_bias:
      bias_init = self.bias_init or torch_default_bias_init(cin // g * kh * kw)
      bias = self.param('bias', bias_init, (self.features,), jnp.float32)
      y = y + bias.astype(dtype)
    return y


class UpsampleConvTranspose(nn.Module):
  """``nn.ConvTranspose(features, k, strides=k, padding='VALID')`` with the same parameters (``kernel``
  (kh, kw, in, out), ``bias``) and values: the k-fold upsampling deconv of mmdet's mask head (and
  PyTorch's ``ConvTranspose2d(c, c, k, stride=k)``), as :func:`lgvit.models.kernels.upsample_conv_transpose`."""
  features: int
  kernel_size: int | Sequence[int] = 2
  kernel_init: Initializer = nn.initializers.lecun_normal()
  bias_init: Initializer = nn.initializers.zeros
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kh, kw = _pairs(self.kernel_size)
    kernel = self.param('kernel', self.kernel_init, (kh, kw, x.shape[-1], self.features), jnp.float32)
    bias = self.param('bias', self.bias_init, (self.features,), jnp.float32)
    dtype = self.dtype or x.dtype
    return kernels.upsample_conv_transpose(x.astype(dtype), kernel.astype(dtype)) + bias.astype(dtype)


# --------------------------------------------------------------------------------------------
# Pooling with PyTorch's padding rules.
# --------------------------------------------------------------------------------------------


def avg_pool(x: Array, window: int, stride: int, padding: int = 0, *, count_include_pad: bool = True,
             ceil_mode: bool = False) -> Array:
  """``torch.nn.AvgPool2d`` on NHWC."""
  pads = []
  for size in x.shape[1:3]:
    lo = hi = padding
    if ceil_mode:
      out = -(-(size + 2 * padding - window) // stride) + 1
      # PyTorch drops a last window that would start entirely in the right padding.
      if (out - 1) * stride >= size + padding:
        out -= 1
      hi = max((out - 1) * stride + window - size - padding, padding)
    pads.append((lo, hi))
  dims, strides = (1, window, window, 1), (1, stride, stride, 1)
  pad4 = ((0, 0), pads[0], pads[1], (0, 0))
  summed = lax.reduce_window(x, 0.0, lax.add, dims, strides, pad4)
  if count_include_pad and not ceil_mode:
    return summed / (window * window)
  ones = jnp.ones((1,) + x.shape[1:3] + (1,), x.dtype)
  if count_include_pad:
    # Padding counts, but the ceil-mode overhang beyond the declared padding does not.
    ones = jnp.pad(ones, ((0, 0), (padding, padding), (padding, padding), (0, 0)), constant_values=1)
    pad4 = ((0, 0), (0, pads[0][1] - padding), (0, pads[1][1] - padding), (0, 0))
  counts = lax.reduce_window(ones, 0.0, lax.add, dims, strides, pad4)
  return summed / counts


def adaptive_avg_pool(x: Array, output_size: int | Sequence[int]) -> Array:
  """``torch.nn.AdaptiveAvgPool2d`` on NHWC: output cell i averages rows floor(i*H/s) .. ceil((i+1)*H/s)-1.

  Computed as two small averaging matrices (one einsum), so it is exact and cheap for PPM's scales.
  """
  def averaging(size, out):
    m = np.zeros((out, size), np.float32)
    for i in range(out):
      lo, hi = (i * size) // out, -(-((i + 1) * size) // out)
      m[i, lo:hi] = 1.0 / (hi - lo)
    return jnp.asarray(m, x.dtype)

  oh, ow = _pairs(output_size)
  return jnp.einsum('ih,jw,bhwc->bijc', averaging(x.shape[1], oh), averaging(x.shape[2], ow), x)


def resize_bilinear(x: Array, size: Sequence[int]) -> Array:
  """``F.interpolate(mode='bilinear', align_corners=False)`` on NHWC to ``size`` = (H, W): half-pixel
  centres, edge clamping and, unlike ``jax.image.resize``'s default, no anti-aliasing when shrinking
  (PyTorch and OpenCV's INTER_LINEAR have none). A no-op at the same size."""
  h, w = size
  if tuple(x.shape[1:3]) == (h, w):
    return x
  return jax.image.resize(x, (x.shape[0], h, w) + x.shape[3:], 'bilinear', antialias=False)


def max_pool(x: Array, window: int, stride: int, padding: int = 0) -> Array:
  """``torch.nn.MaxPool2d`` (floor mode, -inf padding) on NHWC."""
  pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
  return lax.reduce_window(x, -jnp.inf, lax.max, (1, window, window, 1), (1, stride, stride, 1), pad)


# --------------------------------------------------------------------------------------------
# Regularisation.
# --------------------------------------------------------------------------------------------


class DropPath(nn.Module):
  """Stochastic depth per sample (rng stream 'drop_path'), scaled by 1/keep like timm."""
  rate: float = 0.0

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    if not train or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    mask = jax.random.bernoulli(self.make_rng('drop_path'), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / keep, jnp.zeros_like(x))


def drop_path_rates(rate: float, depths: Sequence[int]) -> list[list[float]]:
  """timm's linear stochastic-depth schedule ``linspace(0, rate, sum(depths))`` split per stage."""
  total = sum(depths)
  flat = np.linspace(0.0, rate, total) if total > 1 else np.zeros(total)
  out, i = [], 0
  for d in depths:
    out.append([float(r) for r in flat[i:i + d]])
    i += d
  return out


# --------------------------------------------------------------------------------------------
# Transformer pieces.
# --------------------------------------------------------------------------------------------


def gelu(x: Array) -> Array:
  """Exact (erf) GELU, as ``torch.nn.GELU``; Flax defaults to the tanh approximation."""
  return nn.gelu(x, approximate=False)


class Mlp(nn.Module):
  """Linear -> GELU -> (dropout) -> Linear -> (dropout)."""
  hidden: int
  out: Optional[int] = None
  dropout: float = 0.0
  kernel_init: Initializer = normal_002
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    out = self.out or x.shape[-1]
    x = nn.Dense(self.hidden, kernel_init=self.kernel_init, dtype=self.dtype, name='fc1')(x)
    x = gelu(x)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = nn.Dense(out, kernel_init=self.kernel_init, dtype=self.dtype, name='fc2')(x)
    return nn.Dropout(self.dropout, deterministic=not train)(x)


def attention_residual(x: Array, attention: nn.Module, *, train: bool, drop_path: float = 0.0,
                       drop_rate: Optional[float] = None, dtype: Optional[Dtype] = None, norm_name: str = 'norm1',
                       drop_path_name: Optional[str] = None) -> Array:
  """The first half of a pre-norm Transformer block: ``x + DropPath(Dropout(attention(LayerNorm(x))))``.

  ``attention`` is the block's own named submodule (window or global attention, NomMer's
  synergistic context), called as ``attention(y, train=train)``. ``drop_rate=None`` adds no
  Dropout (the attention module has its own). As in :func:`mlp_residual`, the modules created here
  belong to the calling block, so parameter paths and dropout/drop-path RNGs are those of the
  written-out form.
  """
  y = attention(layer_norm(norm_name, dtype=dtype)(x), train=train)
  if drop_rate is not None:
    y = nn.Dropout(drop_rate, deterministic=not train)(y)
  return x + DropPath(drop_path, name=drop_path_name)(y, train=train)


def mlp_residual(x: Array, *, mlp_ratio: float, train: bool, drop_rate: float = 0.0, drop_path: float = 0.0,
                 dtype: Optional[Dtype] = None, norm_name: str = 'norm2', mlp_name: str = 'mlp',
                 drop_path_name: Optional[str] = None) -> Array:
  """The second half of a pre-norm Transformer block: ``x + DropPath(MLP(LayerNorm(x)))``.

  Call it inside a block's compact ``__call__``: the norm, MLP and DropPath it creates are the
  block's own submodules under the given names, so parameter paths are those of the written-out form.
  """
  y = layer_norm(norm_name, dtype=dtype)(x)
  y = Mlp(int(x.shape[-1] * mlp_ratio), dropout=drop_rate, dtype=dtype, name=mlp_name)(y, train=train)
  return x + DropPath(drop_path, name=drop_path_name)(y, train=train)


class HierarchicalTransformer(nn.Module, kw_only=True):
  """The fields Swin and SALG share after their own architecture fields (keyword-only, so a
  subclass's fields keep their positions): MLP ratio, head, regularisation, outputs, numerics.
  ``features_only`` returns the stage maps instead of logits (see :func:`classifier_head`)."""
  mlp_ratio: float = 4.0
  num_classes: int = 1000
  drop_rate: float = 0.0
  drop_path_rate: float = 0.1
  features_only: bool = False
  dtype: Optional[Dtype] = jnp.float32
  precision: Any = None


class PreNormBlock(nn.Module):
  """The hyper-parameters every pre-norm Transformer block here shares (Swin, SALG, NomMer).

  A block subclasses it, adds its own fields keyword-only (``class Block(PreNormBlock,
  kw_only=True)``) and builds itself with :func:`pre_norm_block` in its compact ``__call__``.
  """
  num_heads: int
  mlp_ratio: float = 4.0
  drop_rate: float = 0.0
  drop_path: float = 0.0
  dtype: Optional[Dtype] = None
  precision: Any = None


def pre_norm_block(x: Array, attention: nn.Module, *, mlp_ratio: float, train: bool, drop_path: float = 0.0,
                   drop_rate: float = 0.0, attention_drop_rate: Optional[float] = None, dtype: Optional[Dtype] = None,
                   prefix: str = '', drop_path_names: tuple = (None, None)) -> Array:
  """A whole pre-norm Transformer block: :func:`attention_residual`, then :func:`mlp_residual`.

  The norms and MLP are named ``{prefix}norm1``, ``{prefix}norm2``, ``{prefix}mlp`` in the calling
  block; ``drop_rate`` is the MLP's dropout and ``attention_drop_rate`` the one after attention.
  """
  x = attention_residual(x, attention, train=train, drop_path=drop_path, drop_rate=attention_drop_rate, dtype=dtype,
                         norm_name=f'{prefix}norm1', drop_path_name=drop_path_names[0])
  return mlp_residual(x, mlp_ratio=mlp_ratio, train=train, drop_rate=drop_rate, drop_path=drop_path, dtype=dtype,
                      norm_name=f'{prefix}norm2', mlp_name=f'{prefix}mlp', drop_path_name=drop_path_names[1])


def classifier_head(x: Array, num_classes: int, *, train: bool = False, norm_name: Optional[str] = None,
                    drop_rate: float = 0.0, name: str = 'head', kernel_init: Initializer = normal_002,
                    bias_init: Initializer = nn.initializers.zeros, dtype: Optional[Dtype] = None,
                    head_dtype: Optional[Dtype] = None) -> Array:
  """Every family's classifier tail: [LayerNorm] -> global average pool -> [Dropout] -> Dense.

  ``x`` is the last stage's map (B, H, W, C), averaged over H, W in float32, or an already pooled
  (B, C) vector (NomMer's class token). ``num_classes=0`` returns the pooled features. The
  ``features_only`` convention of every model: with it set, ``__call__`` returns the list of its
  four stage maps (NHWC, strides 4/8/16/32 unless the family dilates) instead of calling this head.
  """
  if norm_name is not None:
    x = layer_norm(norm_name, dtype=dtype)(x)
  if x.ndim == 4:
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
  if not num_classes:
    return x
  if drop_rate:
    x = nn.Dropout(drop_rate, deterministic=not train)(x)
  return nn.Dense(num_classes, kernel_init=kernel_init, bias_init=bias_init, dtype=head_dtype, name=name)(x)


def relative_position_index(window: int | Sequence[int]) -> np.ndarray:
  """Swin's (w*w, w*w) index into the ((2w-1)^2, heads) bias table; tokens row-major in a window."""
  wh, ww = _pairs(window)
  coords = np.stack(np.meshgrid(np.arange(wh), np.arange(ww), indexing='ij')).reshape(2, -1)
  rel = coords[:, :, None] - coords[:, None, :]
  return (rel[0] + wh - 1) * (2 * ww - 1) + (rel[1] + ww - 1)


class RelativePositionBias(nn.Module):
  """Learnable Swin-style relative position bias, returned as (heads, w*w, w*w)."""
  window: int | Sequence[int]
  num_heads: int
  init: Initializer = normal_002

  @nn.compact
  def __call__(self) -> Array:
    wh, ww = _pairs(self.window)
    table = self.param('relative_position_bias_table', self.init, ((2 * wh - 1) * (2 * ww - 1), self.num_heads))
    idx = relative_position_index((wh, ww))
    return jnp.transpose(table[idx.reshape(-1)].reshape(wh * ww, wh * ww, self.num_heads), (2, 0, 1))


def _square_side(rows: int, what: str) -> int:
  side = int(round(math.sqrt(rows)))
  if side * side != rows:
    raise ValueError(f'{what}: {rows} rows are not a square window\'s (2w-1)^2')
  return side


def resize_relative_position_table(table: np.ndarray, shape: Sequence[int]) -> np.ndarray:
  """A ((2w-1)^2, heads) relative position bias table resampled bicubically to ``shape``, ((2w'-1)^2, heads):
  Swin/timm's rule for fine-tuning at another window size. A resize rule (``ModelInfo.resize_rules``)."""
  table = np.asarray(table)
  old, new = _square_side(table.shape[0], 'table'), _square_side(shape[0], 'shape')
  if table.shape[1:] != tuple(shape[1:]):
    raise ValueError(f'relative position table {table.shape} cannot be resized to {tuple(shape)}: heads differ')
  if old == new:
    return table
  grid = jnp.asarray(table, jnp.float32).reshape(old, old, -1)
  out = jax.image.resize(grid, (new, new, grid.shape[-1]), 'bicubic')
  return np.asarray(out).reshape(new * new, -1)


def _torch_bicubic_matrix(n_in: int, n_out: int, a: float = -0.75) -> np.ndarray:
  """(n_out, n_in) weights of ``F.interpolate(mode='bicubic', align_corners=False)`` along one axis:
  Keys' cubic with a = -0.75, half-pixel centres, taps clamped at the border, no anti-aliasing."""
  src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
  base = np.floor(src)
  t = src - base
  def near(d):  # |d| <= 1
    return ((a + 2) * d - (a + 3)) * d * d + 1
  def far(d):  # 1 < |d| < 2
    return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
  weights = np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=1)
  matrix = np.zeros((n_out, n_in))
  for k in range(4):
    np.add.at(matrix, (np.arange(n_out), np.clip(base.astype(int) - 1 + k, 0, n_in - 1)), weights[:, k])
  return matrix.astype(np.float32)


def resize_bicubic(x: Array, size: Sequence[int]) -> Array:
  """PyTorch's ``F.interpolate(mode='bicubic', align_corners=False)`` on (B, H, W, C), traceable: the
  position-embedding resize of Swin, timm and mmseg's ``resize_pos_embed`` (``jax.image.resize``'s
  cubic is Keys' a = -0.5 and anti-aliases when shrinking, so it differs)."""
  rows = jnp.asarray(_torch_bicubic_matrix(x.shape[1], size[0]))
  cols = jnp.asarray(_torch_bicubic_matrix(x.shape[2], size[1]))
  x = jnp.einsum('oh,bhwc->bowc', rows, x.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST)
  return jnp.einsum('pw,bowc->bopc', cols, x, precision=jax.lax.Precision.HIGHEST)


def resize_pos_embedding(pos: np.ndarray, shape: Sequence[int]) -> np.ndarray:
  """A (1, H, W, C) position embedding resampled to ``shape``, (1, H', W', C), as Swin/timm do
  (:func:`resize_bicubic`). A resize rule (``ModelInfo.resize_rules``)."""
  pos = np.asarray(pos)
  if pos.ndim != 4 or pos.shape[0] != 1 or len(shape) != 4 or shape[0] != 1 or shape[3] != pos.shape[3]:
    raise ValueError(f'pos_embedding must be (1, H, W, C) and go to (1, H2, W2, C); got {pos.shape} -> {tuple(shape)}')
  return np.asarray(resize_bicubic(jnp.asarray(pos, jnp.float32), shape[1:3]), pos.dtype)


def dot_product_attention(q: Array, k: Array, v: Array, bias: Optional[Array] = None,
                          mask: Optional[Array] = None, precision: Any = None) -> Array:
  """softmax(q k^T + bias) v over (..., heads, tokens, dim) tensors; q must already be scaled.

  ``mask`` (broadcastable to the logits, True = attend) removes keys from the softmax.
  """
  logits = jnp.einsum('...hqd,...hkd->...hqk', q, k, precision=precision)
  if bias is not None:
    logits = kernels.add_broadcast_bias(logits, bias.astype(logits.dtype))
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
  weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
  return jnp.einsum('...hqk,...hkd->...hqd', weights, v, precision=precision)


class MultiHeadAttention(nn.Module):
  """Multi-head self-attention over (..., tokens, dim) with an optional additive bias and mask.

  Parameter layout follows timm/Swin: ``qkv`` Dense(dim -> 3*dim) whose output is
  ``[q | k | v]``, each head-major, and ``proj`` Dense(dim -> dim).
  """
  num_heads: int
  qkv_bias: bool = True
  dropout: float = 0.0
  kernel_init: Initializer = normal_002
  qkv_name: str = 'qkv'
  proj_name: str = 'proj'
  dtype: Optional[Dtype] = None
  precision: Any = None

  @nn.compact
  def __call__(self, x: Array, *, bias: Optional[Array] = None, mask: Optional[Array] = None,
               train: bool = False) -> Array:
    dim = x.shape[-1]
    head_dim = dim // self.num_heads
    qkv = nn.Dense(3 * dim, use_bias=self.qkv_bias, kernel_init=self.kernel_init, dtype=self.dtype,
                   precision=self.precision, name=self.qkv_name)(x)
    qkv = qkv.reshape(x.shape[:-1] + (3, self.num_heads, head_dim))
    qkv = jnp.moveaxis(qkv, -3, 0)  # (3, ..., tokens, heads, hd)
    q, k, v = (jnp.swapaxes(t, -2, -3) for t in qkv)  # (..., heads, tokens, hd)
    out = dot_product_attention(q * head_dim**-0.5, k, v, bias, mask, self.precision)
    out = jnp.swapaxes(out, -2, -3).reshape(x.shape[:-1] + (dim,))
    out = nn.Dense(dim, kernel_init=self.kernel_init, dtype=self.dtype, precision=self.precision,
                   name=self.proj_name)(out)
    return nn.Dropout(self.dropout, deterministic=not train)(out)


def window_partition(x: Array, window: int) -> Array:
  """(B, H, W, C) -> (B, nH*nW, w*w, C), windows row-major and tokens row-major inside."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // window, window, w // window, window, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, (h // window) * (w // window), window * window, c)


def window_reverse(windows: Array, window: int, h: int, w: int) -> Array:
  """Inverse of :func:`window_partition`."""
  b, _, _, c = windows.shape
  x = windows.reshape(b, h // window, w // window, window, window, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)


def shifted_window_mask(h: int, w: int, window: int, shift: int) -> np.ndarray:
  """Swin's attention mask for cyclically shifted windows: (nW, w*w, w*w) booleans, True = attend."""
  img = np.zeros((h, w), np.int32)
  cnt = 0
  for hs in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
    for ws in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
      img[hs, ws] = cnt
      cnt += 1
  win = img.reshape(h // window, window, w // window, window).transpose(0, 2, 1, 3).reshape(-1, window * window)
  return win[:, :, None] == win[:, None, :]


class WindowAttention(nn.Module):
  """Window MHSA with a relative position bias (Swin; NomMer's local branch).

  Input (B, H, W, C). ``shift`` > 0 gives Swin's shifted windows with their mask. A map that the
  window does not tile is zero-padded at the bottom/right first and cropped after, with the shift
  mask of the padded map (the padded tokens are attended to): the rule of Swin's segmentation and
  detection backbones (mmseg ``ShiftWindowMSA``), which UperNet at 512x512 needs. Classifiers
  never meet it: their models accept only sizes the windows tile.
  """
  num_heads: int
  window: int
  shift: int = 0
  qkv_bias: bool = True
  dtype: Optional[Dtype] = None
  precision: Any = None

  @nn.compact
  def __call__(self, x: Array, *, train: bool = False) -> Array:
    b, h, w, c = x.shape
    pad_h, pad_w = -h % self.window, -w % self.window
    if pad_h or pad_w:
      x = jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
    hp, wp = h + pad_h, w + pad_w
    if self.shift:
      x = jnp.roll(x, (-self.shift, -self.shift), axis=(1, 2))
    windows = window_partition(x, self.window)  # (B, nW, N, C)
    bias = RelativePositionBias(self.window, self.num_heads, name='rel_pos')()
    mask = None
    if self.shift:
      mask = jnp.asarray(shifted_window_mask(hp, wp, self.window, self.shift))[None, :, None]
    out = MultiHeadAttention(self.num_heads, self.qkv_bias, dtype=self.dtype, precision=self.precision,
                             name='attn')(windows, bias=bias, mask=mask, train=train)
    out = window_reverse(out, self.window, hp, wp)
    if self.shift:
      out = jnp.roll(out, (self.shift, self.shift), axis=(1, 2))
    return out[:, :h, :w] if pad_h or pad_w else out


# --------------------------------------------------------------------------------------------
# Squeeze-and-excitation.
# --------------------------------------------------------------------------------------------


class SqueezeExcite(nn.Module):
  """Channel gate: mean -> 1x1 conv(+b) -> [BN] -> act -> 1x1 conv(+b) -> sigmoid, times x."""
  hidden: int
  act: Callable[[Array], Array] = nn.relu
  use_bn: bool = False
  kernel_init: Initializer = torch_default_kernel_init
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    s = jnp.mean(x, axis=(1, 2), keepdims=True)
    s = Conv2d(self.hidden, 1, use_bias=True, kernel_init=self.kernel_init, dtype=self.dtype, name='fc1')(s)
    if self.use_bn:
      s = BatchNorm(name='bn1')(s, train=train)
    s = self.act(s)
    s = Conv2d(x.shape[-1], 1, use_bias=True, kernel_init=self.kernel_init, dtype=self.dtype, name='fc2')(s)
    return x * jax.nn.sigmoid(s)


def blur_pool(x: Array) -> Array:
  """timm's ``BlurPool2d(filt_size=3, stride=2)``: reflect pad 1, depthwise [1,2,1]^T[1,2,1]/16, stride 2.

  Computed separably as strided slices (no parameters, no grouped conv).
  """
  x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode='reflect')
  ho = (x.shape[1] - 3) // 2 + 1
  wo = (x.shape[2] - 3) // 2 + 1
  rows = x[:, 0:2 * ho - 1:2] + 2 * x[:, 1:2 * ho:2] + x[:, 2:2 * ho + 1:2]
  out = rows[:, :, 0:2 * wo - 1:2] + 2 * rows[:, :, 1:2 * wo:2] + rows[:, :, 2:2 * wo + 1:2]
  return out * (1.0 / 16.0)


def check_strides(strides: int, who: str):
  """The stride of a 3x3 replacement in a bottleneck: 1 or 2."""
  if strides not in (1, 2):
    raise ValueError(f'{who}: strides must be 1 or 2, got {strides}')


class SplitAttnConv(nn.Module):
  """timm ``SplitAttnConv2d`` with radix 1: 3x3 conv -> BN -> SiLU, gated by an SE MLP with BN.

  The gate (mean -> 1x1 conv -> BN -> SiLU -> 1x1 conv -> sigmoid, hidden max(C/4, 32)) acts on the
  3x3 path, before the bottleneck's conv3; it is the "SE" of SE-CoTNetD. With ``blur`` a stride of 2
  is a :func:`blur_pool` after the gate instead of a strided conv.
  """
  width: int
  strides: int = 1
  blur: bool = False

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    check_strides(self.strides, 'SplitAttnConv')
    conv_strides = 1 if self.blur else self.strides
    y = Conv2d(self.width, 3, conv_strides, 1, kernel_init=kaiming_normal_fan_out, name='conv')(x)
    y = nn.silu(BatchNorm(name='bn0')(y, train=train))
    y = SqueezeExcite(max(self.width // 4, 32), act=nn.silu, use_bn=True, kernel_init=kaiming_normal_fan_out,
                      name='gate')(y, train=train)
    return blur_pool(y) if self.strides == 2 and self.blur else y


# --------------------------------------------------------------------------------------------
# Misc.
# --------------------------------------------------------------------------------------------


def check_min_size(x: Array, min_size: int, model: str):
  h, w = x.shape[1:3]
  if h < min_size or w < min_size:
    raise InvalidInputSizeError(f'{model}: input {h}x{w} is too small; use images of at least {min_size}x{min_size}.')



class ConvBN(nn.Module):
  """Conv2d -> BatchNorm -> optional activation: the ubiquitous ResNet unit."""
  features: int
  kernel_size: int = 3
  strides: int = 1
  padding: Optional[int] = None  # default: kernel_size // 2
  groups: int = 1
  act: Optional[Callable[[Array], Array]] = nn.relu
  kernel_init: Initializer = kaiming_normal_fan_out
  bn_scale_init: Initializer = nn.initializers.ones
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x: Array, *, train: bool, mask: Optional[Array] = None) -> Array:
    pad = self.kernel_size // 2 if self.padding is None else self.padding
    x = Conv2d(self.features, self.kernel_size, self.strides, pad, self.groups, kernel_init=self.kernel_init,
               dtype=self.dtype, name='conv')(x)
    x = BatchNorm(scale_init=self.bn_scale_init, dtype=self.dtype, name='bn')(x, train=train, mask=mask)
    return self.act(x) if self.act is not None else x


def count_params(params) -> int:
  """Number of scalars in a parameter tree (works on ShapeDtypeStructs from ``jax.eval_shape``)."""
  return int(sum(np.prod(p.shape) for p in jax.tree_util.tree_leaves(params)))
