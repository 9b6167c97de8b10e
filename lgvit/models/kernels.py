"""Backend-specific kernels: the XLA:CPU rewrites and XLA's native ops, behind one switch.

XLA:CPU is slow on a few primitives that TPUs and GPUs run well: grouped and depthwise convolutions
in the backward pass (15-40x behind oneDNN), reductions over a tensor's leading axes (BatchNorm
statistics, the gradient of a broadcast bias) and the layout-crossing reductions of CoT's local
aggregation. The layers therefore trace one of two forms of each such op:

* ``'cpu'``: the rewrites, which stay within what XLA:CPU runs fast (dense convs per group, shifted
  slices, ones-vector matvecs under custom derivatives);
* ``'native'``: the plain ops (``feature_group_count`` convs, ``jnp.mean``/``var`` with autodiff, a
  plain broadcast add, autodiff through the aggregation), which the TPU conv emitter and cuDNN
  handle directly and which do not pay for the rewrites' extra HBM traffic
  (``benchmarks/tpu_aot.md`` has the compiled numbers).

Both forms compute the same values (float32 round-off apart) with the same parameters; only the
HLO differs. Which one is traced is decided *at trace time* by :func:`path`:

1. the innermost :func:`force` context, if any;
2. else the environment variable ``LGVIT_KERNELS`` (``auto`` | ``cpu`` | ``native``);
3. else ``auto``: ``'cpu'`` when ``jax.default_backend()`` is ``cpu``, otherwise ``'native'``.

Because the choice is made while tracing, a function that ``jax.jit`` has already traced keeps its
form; force the path around the first call (or the ``.lower``). Ahead-of-time compilation for a TPU
on a CPU host (``lgvit.aot``) must force ``'native'``, since ``default_backend()`` says ``cpu``
there. See ``docs/kernels.md``.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import os
from typing import Any, Iterator

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array

ENV_VAR = 'LGVIT_KERNELS'
CHOICES = ('auto', 'cpu', 'native')

_forced: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar('lgvit_kernels_forced', default=())


class KernelChoiceError(ValueError):
  """An unknown kernel path was requested."""


def _check(choice: str, where: str) -> str:
  if choice not in CHOICES:
    raise KernelChoiceError(f"{where}={choice!r} is not a kernel path; use one of {', '.join(CHOICES)}")
  return choice


def path() -> str:
  """``'cpu'`` or ``'native'``: the form the layers trace right now."""
  stack = _forced.get()
  choice = stack[-1] if stack else _check(os.environ.get(ENV_VAR, 'auto') or 'auto', ENV_VAR)
  if choice == 'auto':
    return 'cpu' if jax.default_backend() == 'cpu' else 'native'
  return choice


@contextlib.contextmanager
def force(choice: str) -> Iterator[None]:
  """Traces the layers with ``choice`` ('cpu', 'native' or 'auto') inside the block, on any backend."""
  token = _forced.set(_forced.get() + (_check(choice, 'kernels.force'),))
  try:
    yield
  finally:
    _forced.reset(token)


def _native() -> bool:
  return path() == 'native'


# --------------------------------------------------------------------------------------------
# Convolutions.
# --------------------------------------------------------------------------------------------


def _dense_conv(x, kernel, strides, padding, precision, groups=1):
  return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                  feature_group_count=groups, precision=precision)


def _no_padding(padding) -> bool:
  return isinstance(padding, str) or padding == ((0, 0), (0, 0))


def conv(x: Array, kernel: Array, strides=(1, 1), padding: Any = 'VALID', groups: int = 1,
         precision: Any = None) -> Array:
  """NHWC x HWIO ``lax.conv`` with ``feature_group_count=groups``; kernel (kh, kw, in/groups, out).

  Native: that conv. CPU: never a grouped conv -- one dense conv per group, 1x1 convs as dots,
  stride-1 depthwise convs as shifted slices.
  """
  if _native():
    return _dense_conv(x, kernel, strides, padding, precision, groups)
  if groups == 1:
    if kernel.shape[:2] == (1, 1) and _no_padding(padding):
      # A dot on (pixels, channels): XLA:CPU's conv-as-dot and its weight gradient transpose the
      # activations to channel-major first; dot_general's transposes are folded into the GEMM.
      xs = x[:, ::strides[0], ::strides[1], :]
      y = lax.dot_general(xs.reshape(-1, xs.shape[-1]), kernel[0, 0], (((1,), (0,)), ((), ())), precision=precision)
      return y.reshape(xs.shape[:-1] + (kernel.shape[-1],))
    return _dense_conv(x, kernel, strides, padding, precision)
  kh, kw, cin_g, cout = kernel.shape
  cout_g = cout // groups
  if cin_g == 1 and cout == groups and strides == (1, 1) and not isinstance(padding, str):
    return depthwise_conv_shifted(x, kernel, padding)
  if kh == kw == 1:
    if _no_padding(padding):
      xs = x[:, ::strides[0], ::strides[1], :]
    else:
      xs = jnp.pad(x, ((0, 0),) + tuple(padding) + ((0, 0),))[:, ::strides[0], ::strides[1], :]
    b, h, w, _ = xs.shape
    xg = xs.reshape(b, h, w, groups, cin_g)
    kg = kernel.reshape(cin_g, groups, cout_g)  # (in/g, out) with out = g*cout_g + j
    y = jnp.einsum('bhwgi,igo->bhwgo', xg, kg, precision=precision)
    return y.reshape(b, h, w, cout)
  outs = [
      _dense_conv(x[..., i * cin_g:(i + 1) * cin_g], kernel[..., i * cout_g:(i + 1) * cout_g], strides, padding,
                  precision) for i in range(groups)
  ]
  return jnp.concatenate(outs, axis=-1)


def upsample_conv_transpose(x: Array, kernel: Array) -> Array:
  """``lax.conv_transpose(x, kernel, strides=kernel's (kh, kw), 'VALID')`` (flax ``nn.ConvTranspose``, NHWC
  and HWIO, kernel not transposed): each input pixel paints its own kh x kw output block, no overlap.

  On ``'cpu'`` it is one matmul and a depth-to-space reshape: XLA:CPU runs the transposed conv's
  gradients as a naive dilated convolution (0.56 s of the 1.6 s Mask R-CNN demo train step, whose
  mask head upsamples 256 RoIs 14 -> 28). Output pixel ``(kh*i + a, kw*j + b)`` takes kernel tap
  ``(kh-1-a, kw-1-b)``: lax's transposed conv pads the dilated input by ``k - 1`` and does not flip.
  """
  if _native():
    return lax.conv_transpose(x, kernel, kernel.shape[:2], 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  n, h, w, _ = x.shape
  kh, kw, _, out = kernel.shape
  y = jnp.einsum('nhwc,abco->nhawbo', x, kernel[::-1, ::-1])
  return y.reshape(n, h * kh, w * kw, out)


def depthwise_conv_shifted(x: Array, kernel: Array, padding) -> Array:
  """Stride-1 depthwise conv as a sum over kh*kw shifted slices of the zero-padded input.

  The products are elementwise, hence exact in any matmul precision.
  """
  kh, kw, _, _ = kernel.shape
  (pt, pb), (pl, pr) = padding
  xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  h = xp.shape[1] - kh + 1
  w = xp.shape[2] - kw + 1
  out = None
  for i in range(kh):
    for j in range(kw):
      term = xp[:, i:i + h, j:j + w, :] * kernel[i, j, 0]
      out = term if out is None else out + term
  return out


# --------------------------------------------------------------------------------------------
# BatchNorm statistics.
# --------------------------------------------------------------------------------------------


def batch_norm_train(x: Array, scale: Array, bias: Array, epsilon: float, dtype) -> tuple[Array, Array, Array]:
  """BatchNorm with batch statistics over every axis but the last: ``(y, mean, biased_var)``.

  Statistics in float32; ``y`` in ``dtype``. Native: ``jnp.mean`` and autodiff. CPU: the sums and
  their gradients as :func:`channel_sums` matvecs under a custom VJP.
  """
  if not _native():
    return _batch_norm_train_cpu(x, scale, bias, epsilon, dtype)
  xf = x.astype(jnp.float32)
  axes = tuple(range(x.ndim - 1))
  mean = jnp.mean(xf, axis=axes)
  var = jnp.mean(jnp.square(xf - mean), axis=axes)
  # The affine map in float32 too: autodiff then sums the scale/bias gradients in float32, as the
  # CPU form's VJP does (in bfloat16 they would be off by percents). XLA fuses the casts, so
  # nothing float32 is stored for a bfloat16 input.
  mul = scale * lax.rsqrt(var + epsilon)
  y = (xf * mul + (bias - mean * mul)).astype(dtype)
  return y, mean, var


def _normalize(x, mean, rstd, scale, bias, dtype):
  mul = scale * rstd
  add = bias - mean * mul
  return (x * mul.astype(dtype) + add.astype(dtype)).astype(dtype)


def _pixel_block(batch: int, pixels: int) -> int:
  """The divisor of ``pixels`` closest to (not above) sqrt(batch * pixels)."""
  target = math.isqrt(batch * pixels)
  return max(d for d in range(1, pixels + 1) if pixels % d == 0 and d <= target)


def channel_sums(x: Array) -> Array:
  """Sum of an (N, ..., C) array over every axis but the last, in float32 (the CPU form).

  XLA:CPU compiles a reduction over a tensor's leading axes into a slow strided loop; Eigen's matvec
  with a ones vector streams the same data 2-10x faster (``benchmarks/batchnorm_cpu.py``). A matvec
  accumulates its rows one after another, though, and over the ~10^5 rows of an early-stage
  activation that costs ~100x the round-off of ``jnp.sum`` -- enough for a few training steps to
  depend on the device count. So each image's pixels are cut into blocks of k: the matvec runs over
  rows of k*C values (~sqrt(rows) long), and the k partial sums per channel are added at the end.
  Blocks never straddle images, so a batch-sharded input stays sharded.
  """
  c, batch = x.shape[-1], x.shape[0]
  pixels = math.prod(x.shape[1:-1])
  k = _pixel_block(batch, pixels)
  rows = x.reshape(batch * (pixels // k), k * c)
  ones = jnp.ones((rows.shape[0],), rows.dtype)
  partial = jnp.dot(ones, rows, precision=lax.Precision.HIGHEST, preferred_element_type=jnp.float32)
  return jnp.sum(partial.reshape(k, c), axis=0)


# Written out (statistics and their gradients as channel_sums) because autodiff of the jnp.mean
# formulation gives four more leading-axis reductions in the backward pass, BatchNorm's whole cost
# on XLA:CPU.
@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _batch_norm_train_cpu(x, scale, bias, epsilon, dtype):
  return _batch_norm_train_cpu_fwd(x, scale, bias, epsilon, dtype)[0]


def _batch_norm_train_cpu_fwd(x, scale, bias, epsilon, dtype):
  xf = x.astype(jnp.float32)
  n = math.prod(x.shape[:-1])
  mean = channel_sums(xf) / n
  var = channel_sums(jnp.square(xf - mean)) / n
  rstd = lax.rsqrt(var + epsilon)
  return (_normalize(x, mean, rstd, scale, bias, dtype), mean, var), (x, mean, rstd, scale)


def _batch_norm_train_cpu_bwd(epsilon, dtype, residuals, grads):
  del epsilon, dtype
  x, mean, rstd, scale = residuals
  dy, dmean, dvar = grads
  g = dy.astype(jnp.float32)
  xc = x.astype(jnp.float32) - mean
  n = math.prod(x.shape[:-1])
  dbias = channel_sums(g)
  dscale = channel_sums(g * xc) * rstd
  mul = scale * rstd
  # d/dx of (x - mean) * rstd * scale + bias with batch statistics, plus the (usually zero)
  # cotangents of the returned mean and biased variance.
  dx = mul * (g - dbias / n - xc * (rstd * dscale / n)) + dmean / n + xc * (2.0 * dvar / n)
  return dx.astype(x.dtype), dscale, dbias


_batch_norm_train_cpu.defvjp(_batch_norm_train_cpu_fwd, _batch_norm_train_cpu_bwd)


# --------------------------------------------------------------------------------------------
# Broadcast biases (relative position biases of window attention).
# --------------------------------------------------------------------------------------------


def add_broadcast_bias(x: Array, bias: Array) -> Array:
  """``x + bias`` for a bias that broadcasts over leading axes of x.

  CPU: the bias gradient (a sum over the broadcast axes) as a matvec, see :func:`_add_bias_cpu`.
  """
  return x + bias if _native() else _add_bias_cpu(x, bias)


@jax.custom_jvp
def _add_bias_cpu(x: Array, bias: Array) -> Array:
  """The gradient of a broadcast add is a sum over the broadcast axes, and XLA:CPU sums large
  tensors over their leading axes very slowly (a (128, 6*122*122) column sum runs at ~0.2 GB/s,
  ~80x slower than the equivalent matvec). That sum is the gradient of every relative position bias
  shared by all windows and images. Here the broadcast is written as an outer product with ones,
  whose transpose is a matvec."""
  return x + bias


@_add_bias_cpu.defjvp
def _add_bias_cpu_jvp(primals, tangents):
  x, bias = primals
  dx, dbias = tangents
  core = bias.shape
  while core and core[0] == 1:
    core = core[1:]
  lead = x.ndim - len(core)
  if x.shape[lead:] != core:  # broadcasting inside the trailing axes too: plain add
    return x + bias, dx + dbias
  rows = math.prod(x.shape[:lead])
  spread = jnp.einsum('r,c->rc', jnp.ones((rows,), dbias.dtype), dbias.reshape(-1), precision=lax.Precision.HIGHEST)
  return x + bias, dx + spread.reshape(x.shape)


# --------------------------------------------------------------------------------------------
# Weighted sums over shifted windows (CoT's local aggregation).
# --------------------------------------------------------------------------------------------


def window_taps(kernel_size: int) -> Iterator[tuple[int, int, int]]:
  """(t, dy, dx) for the taps t = (dy + p) * k + (dx + p) of a k x k window, offsets in [-p, p]."""
  pad = (kernel_size - 1) // 2
  for t in range(kernel_size * kernel_size):
    dy, dx = divmod(t, kernel_size)
    yield t, dy - pad, dx - pad


def _pad_hw(x: Array, pad: int, hw_axes=(1, 2)) -> Array:
  widths = [(0, 0)] * x.ndim
  for a in hw_axes:
    widths[a] = (pad, pad)
  return jnp.pad(x, widths)


def _shifted_window_sum(value: Array, attn: Array, kernel_size: int) -> Array:
  # Every tap reads a window of ONE zero-padded copy (pads of per-tap slices would each be
  # materialised by XLA:CPU), and the maps come tap-major, so a tap is a contiguous block instead
  # of a stride-k*k gather from the minor axis.
  h, w = value.shape[1:3]
  pad = (kernel_size - 1) // 2
  padded = _pad_hw(value, pad)
  out = None
  for t, dy, dx in window_taps(kernel_size):
    term = padded[:, pad + dy:pad + dy + h, pad + dx:pad + dx + w] * attn[t]
    out = term if out is None else out + term
  return out


def shifted_window_sum(value: Array, attn: Array, kernel_size: int) -> Array:
  """``out[b, y, x, ...] = sum_t attn[t, b, y, x, ...] * value[b, y + dy_t, x + dx_t, ...]``, zero padded.

  value (B, H, W, G, S, heads); attn (k*k, B, H, W, G, 1, heads), tap-major and broadcast over the
  S channels that share a head. Every product is elementwise, so the result is exact in any matmul
  precision. Native: autodiff of the slice sum. CPU: a hand-written VJP, see :func:`_window_sum_cpu_bwd`.
  """
  if _native():
    return _shifted_window_sum(value, attn, kernel_size)
  return _window_sum_cpu(value, attn, kernel_size)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _window_sum_cpu(value: Array, attn: Array, kernel_size: int) -> Array:
  return _shifted_window_sum(value, attn, kernel_size)


def _window_sum_cpu_fwd(value, attn, kernel_size):
  return _shifted_window_sum(value, attn, kernel_size), (value, attn)


def _window_sum_cpu_bwd(kernel_size, residuals, grad):
  # Written out because autodiff's transpose of the head broadcast is a reduction over the
  # S-channel axis in the middle of the layout, which XLA:CPU runs ~10x slower than these slice sums.
  value, attn = residuals
  h, w = value.shape[1:3]
  share = value.shape[4]
  pad = (kernel_size - 1) // 2
  padded_value = _pad_hw(value, pad)
  padded_grad = _pad_hw(grad, pad)
  padded_attn = _pad_hw(attn, pad, (2, 3))
  d_value, d_attn = None, []
  for t, dy, dx in window_taps(kernel_size):
    # d_value[p] = sum_t grad[p - d_t] * attn[t, p - d_t], zero outside the map.
    ys, xs = slice(pad - dy, pad - dy + h), slice(pad - dx, pad - dx + w)
    term = padded_grad[:, ys, xs] * padded_attn[t, :, ys, xs]
    d_value = term if d_value is None else d_value + term
    prod = grad * padded_value[:, pad + dy:pad + dy + h, pad + dx:pad + dx + w]
    shared = prod[:, :, :, :, :1]  # summed over the channels that share the head
    for r in range(1, share):
      shared = shared + prod[:, :, :, :, r:r + 1]
    d_attn.append(shared)
  return d_value, jnp.stack(d_attn)


_window_sum_cpu.defvjp(_window_sum_cpu_fwd, _window_sum_cpu_bwd)
