"""Contextual Transformer Networks (Li, Yao, Pan, Mei; CoTNet, TPAMI 2022 / arXiv 2107.12292).

A CoT layer stands in for the 3x3 conv (+ BN + ReLU) of a ResNet bottleneck:

1. *static context* K1: a k x k grouped conv over the neighbouring keys (+ BN + ReLU);
2. an *attention embedding* from the concatenation [query = x, K1] via two 1x1 convs, giving one
   k x k local attention map per head and pixel;
3. the *value* V = BN(1x1 conv(x)) aggregated over each k x k window with those maps: the
   *dynamic context* K2 (+ BN + SiLU);
4. the *fusion* of K1 and K2 by split attention (radix 2) over their global average.

Everything follows the official code (JDAI-CV/CoTNet 895e024, ``docs/official_code.md``), which
differs from the paper in a few places: the attention maps are GroupNorm'd (one group per head), not
softmaxed; the C/8 heads are shared by channel *modulo* C/8 (interleaved, 8 value channels per head);
K2 gets BN + SiLU; the fusion is ResNeSt-style split attention with channel-major (K2, K1) logit pairs.

The networks are :class:`lgvit.models.resnet.ResNet` with a ``make_spatial`` factory
(:class:`CoTSpatial`) that picks each bottleneck's 3x3 replacement:

* CoTNet / CoTNeXt: every block is CoT (CoXt with cardinality 2); a stride-2 block average-pools
  (3x3/s2/p1, padding counted) before the layer.
* SE-CoTNetD: deep stem without max-pool, stride 2 in every stage's first block, avg-down shortcuts,
  split-attention ("S") 3x3 convs in res2/res3, CoT in res5 and in the even blocks of res4;
  SE-CoTNetD-152 runs every 3x3 replacement at stride 1 and blur-pools after it.
* Paper ablations as model fields: ``context`` (Table 5: 'static', 'dynamic', 'linear', 'full') and
  ``cot_stages`` (Table 6: which of res2..res5 use CoT; the others keep a plain 3x3 conv + BN + ReLU).
* SE-ResNetD-50 (Table 6's baseline, ``se_resnetd50``): the official ``models/resnet_rs.py:resnet_rs50``
  (35,654,920 parameters, the paper's 35.7M): SE-CoTNetD's deep stem (no max-pool) and strides, plain
  3x3 conv + BN + ReLU, strided 1x1 conv + BN shortcuts, and a classic SE (:class:`OutputSE`, hidden =
  planes) on bn3's output before the residual add.

Introspection: each full CoT layer sows ``intermediates/.../conv2/fusion_weights``, shape
(B, C, 2): per sample and channel the softmax share of the dynamic (index 0) and the static
(index 1) context.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from lgvit.models import kernels, layers
from lgvit.models import registry
from lgvit.models.resnet import ResNet

Array = jax.Array

#: Value channels per attention head: the official ``share_planes``.
SHARE_PLANES = 8
CONTEXTS = ('static', 'dynamic', 'linear', 'full')

# --------------------------------------------------------------------------------------------
# Local aggregation: the official CUDA kernel ``aggregation_zeropad`` in plain XLA.
# --------------------------------------------------------------------------------------------


def _split_heads(value: Array, weights: Array, kernel_size: int, groups: int):
  b, h, w, c = value.shape
  taps = kernel_size * kernel_size
  if kernel_size % 2 == 0:
    raise ValueError(f'local_aggregation: kernel_size must be odd, got {kernel_size}')
  if c % (SHARE_PLANES * groups):
    raise ValueError(f'local_aggregation: {c} value channels do not split into {groups} group(s) of '
                     f'{SHARE_PLANES}-channel heads')
  heads = c // (SHARE_PLANES * groups)
  if weights.shape != (b, h, w, groups * heads * taps):
    raise ValueError(f'local_aggregation: weights {weights.shape} do not fit value {value.shape}; expected '
                     f'{(b, h, w, groups * heads * taps)} ({groups} group(s) x {heads} heads x {taps} taps)')
  # Within a group, channel c = r * heads + j uses head j: weights broadcast over r.
  return weights.reshape(b, h, w, groups, 1, heads, taps), (b, h, w, groups, SHARE_PLANES, heads)


def local_aggregation(value: Array, weights: Array, *, kernel_size: int = 3, groups: int = 1) -> Array:
  """``out[b, y, x, c] = sum_t A[b, y, x, head(c), t] * V[b, y + dy_t - p, x + dx_t - p, c]``, zero padded.

  Args:
    value: (B, H, W, C).
    weights: (B, H, W, groups * heads * k * k); channel ``(g * heads + j) * k * k + t`` is tap
      ``t = dy * k + dx`` of head ``j`` in channel group ``g``. ``heads = C / (8 * groups)``.
    kernel_size: odd window size k (stride 1, dilation 1, padding p = (k - 1) / 2).
    groups: 1 for CoT; 2 for CoXt, whose channel halves aggregate separately.

  Channel ``c`` of group ``g`` (channels ``g * C/groups ...``) uses head ``c mod heads``: 8 channels
  share a head, interleaved. Computed as a sum over k*k shifted slices of the zero-padded value
  (:func:`lgvit.models.kernels.shifted_window_sum`), so the k*k-times unfolded value is never
  materialised, and every product is elementwise, hence exact in any matmul precision. On the CPU
  kernel path it is reverse-mode only (``jax.custom_vjp``).
  """
  attn, vshape = _split_heads(value, weights, kernel_size, groups)
  aggregated = kernels.shifted_window_sum(value.reshape(vshape), jnp.moveaxis(attn, -1, 0), kernel_size)
  return aggregated.reshape(value.shape)


def local_aggregation_patches(value: Array, weights: Array, *, kernel_size: int = 3, groups: int = 1) -> Array:
  """The same aggregation through an explicit k*k-times unfolded value (the official unfold form).

  The reference formulation for tests and the benchmark; :func:`local_aggregation` is the one the
  models use. On XLA:CPU without AVX-512, jaxlib 0.10.2's default (YNNPACK) kernels crash in this
  form's backward; ``LGVIT_XLA_CPU_KERNELS=eigen`` avoids it (``docs/kernels.md``).
  """
  attn, vshape = _split_heads(value, weights, kernel_size, groups)
  pad = (kernel_size - 1) // 2
  # The patch axis is channel-major, (c, ky, kx), as torch's F.unfold. The patches come from a
  # one-hot convolution, which must not be rounded to bf16/TF32 on accelerators.
  patches = lax.conv_general_dilated_patches(
      value, (kernel_size, kernel_size), (1, 1), ((pad, pad), (pad, pad)),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), precision=lax.Precision.HIGHEST)
  patches = patches.reshape(vshape + (kernel_size * kernel_size,))
  return jnp.sum(patches * attn, axis=-1).reshape(value.shape)


# --------------------------------------------------------------------------------------------
# The CoT layer (CoXt with cardinality 2).
# --------------------------------------------------------------------------------------------


class CoTLayer(nn.Module):
  """Contextual Transformer layer on (B, H, W, C); C must be a multiple of 8 * cardinality.

  Attributes:
    cardinality: 1 = CoT (``CotLayer``); 2 = CoXt (``CoXtLayer``): key conv in 8 groups, attention
      embedding and value in 2 groups on the interleaved [x, K1] concat, aggregation per channel half.
    kernel_size: window of the static context and of the aggregation (3 in every paper model).
    context: Table 5 ablation. 'full': split-attention fusion of K1 and K2 (the paper's CoT);
      'linear': K1 + K2; 'dynamic': K2 only; 'static': K1 only (a grouped 3x3 conv + BN + ReLU).
    strides: 2 downsamples, by AvgPool2d(3, 2, 1) before the layer, or with ``blur`` by BlurPool after it.
    blur: SE-CoTNetD-152's anti-aliased downsampling.
  """
  cardinality: int = 1
  kernel_size: int = 3
  context: str = 'full'
  strides: int = 1
  blur: bool = False

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    if self.context not in CONTEXTS:
      raise ValueError(f'CoTLayer: context must be one of {CONTEXTS}, got {self.context!r}')
    layers.check_strides(self.strides, 'CoTLayer')
    if self.strides == 2 and not self.blur:
      x = layers.avg_pool(x, 3, 2, 1)
    dim, k, card = x.shape[-1], self.kernel_size, self.cardinality
    if dim % (SHARE_PLANES * card):
      raise ValueError(f'CoTLayer: width {dim} must be a multiple of {SHARE_PLANES * card} '
                       f'({SHARE_PLANES}-channel heads x cardinality {card})')
    conv_init = layers.kaiming_normal_fan_out

    # Static context: contextualised keys from a k x k grouped conv.
    k1 = layers.ConvBN(dim, k, groups=4 * card, name='key_embed')(x, train=train)
    if self.context == 'static':
      return self._downsample_after(k1)

    # Local attention maps from [query, K1] (CoXt: interleaved so each group sees its own half).
    if card == 1:
      query_key = jnp.concatenate([x, k1], axis=-1)
    else:
      query_key = jnp.stack([x, k1], axis=-1).reshape(x.shape[:-1] + (2 * dim,))
    a = layers.ConvBN(dim // 2, 1, groups=card, name='embed_reduce')(query_key, train=train)
    a = layers.Conv2d(k * k * dim // SHARE_PLANES, 1, groups=card, use_bias=True, kernel_init=conv_init,
                      name='embed_expand')(a)
    # One GroupNorm group per head (its k*k taps over all pixels); no softmax, as in the official code.
    a = nn.GroupNorm(num_groups=dim // SHARE_PLANES, epsilon=1e-5, use_fast_variance=False, dtype=x.dtype,
                     name='embed_norm')(a)

    # Dynamic context: values aggregated with the attention maps.
    v = layers.ConvBN(dim, 1, groups=card, act=None, name='value')(x, train=train)
    k2 = local_aggregation(v, a, kernel_size=k, groups=card)
    k2 = nn.silu(layers.BatchNorm(name='dynamic_bn')(k2, train=train))
    if self.context == 'dynamic':
      return self._downsample_after(k2)
    if self.context == 'linear':
      return self._downsample_after(k1 + k2)

    # Fusion: split attention (radix 2) over the global context of K1 + K2.
    if train and x.shape[0] == 1 and not self.is_initializing():
      raise ValueError('CoTLayer: the fusion MLP BatchNorm normalises over the batch of pooled vectors; '
                       'train with more than one image per batch')
    hidden = max(dim // 2, 32)
    s = jnp.mean(k1 + k2, axis=(1, 2), keepdims=True)
    s = layers.Conv2d(hidden, 1, use_bias=True, kernel_init=conv_init, name='fusion_fc1')(s)
    s = nn.relu(layers.BatchNorm(name='fusion_bn')(s, train=train))
    logits = layers.Conv2d(2 * dim, 1, use_bias=True, kernel_init=conv_init, name='fusion_fc2')(s)
    # Channel-major pairs: logit 2c weighs K2 of channel c, 2c + 1 its K1.
    weights = jax.nn.softmax(logits.reshape(x.shape[0], dim, 2).astype(jnp.float32), axis=-1)
    self.sow('intermediates', 'fusion_weights', weights)
    weights = weights.astype(k1.dtype)[:, None, None]
    return self._downsample_after(weights[..., 0] * k2 + weights[..., 1] * k1)

  def _downsample_after(self, y: Array) -> Array:
    return layers.blur_pool(y) if self.strides == 2 and self.blur else y


# --------------------------------------------------------------------------------------------
# Which block gets which 3x3 replacement.
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CoTSpatial:
  """``make_spatial`` for :class:`~lgvit.models.resnet.ResNet`: the 3x3 replacement of every bottleneck.

  Attributes:
    context: Table 5 ablation of every CoT layer (see :class:`CoTLayer`).
    cot_stages: Table 6: whether res2, res3, res4, res5 use CoT blocks.
    cardinality: 1 = CoT, 2 = CoXt (and 2-group plain convs).
    other: the non-CoT block: 'conv' (torchvision's 3x3 conv + BN + ReLU, stride in the conv) or
      'split_attn' (SE-CoTNetD's S block).
    alternate_stages: stages in which only even-indexed blocks are CoT (SE-CoTNetD: res4).
    blur_pool: downsample by BlurPool after the 3x3 replacement (SE-CoTNetD-152).
  """
  context: str = 'full'
  cot_stages: tuple[bool, ...] = (True, True, True, True)
  cardinality: int = 1
  other: str = 'conv'
  alternate_stages: tuple[int, ...] = ()
  blur_pool: bool = False

  def __post_init__(self):
    if self.context not in CONTEXTS:
      raise ValueError(f'context must be one of {CONTEXTS}, got {self.context!r}')
    if self.other not in ('conv', 'split_attn'):
      raise ValueError(f"other must be 'conv' or 'split_attn', got {self.other!r}")
    object.__setattr__(self, 'cot_stages', tuple(bool(s) for s in self.cot_stages))
    object.__setattr__(self, 'alternate_stages', tuple(self.alternate_stages))

  def kind(self, stage: int, block: int) -> str:
    """'cot' or ``other`` for block ``block`` of stage ``stage`` (0 = res2)."""
    if stage >= len(self.cot_stages):
      raise ValueError(f'cot_stages {self.cot_stages} names {len(self.cot_stages)} stages; the network has more')
    if self.cot_stages[stage] and not (stage in self.alternate_stages and block % 2):
      return 'cot'
    return self.other

  def __call__(self, stage: int, block: int, width: int, stride: int, name: str) -> nn.Module:
    kind = self.kind(stage, block)
    if kind == 'cot':
      return CoTLayer(self.cardinality, context=self.context, strides=stride, blur=self.blur_pool, name=name)
    if kind == 'split_attn':
      return layers.SplitAttnConv(width, stride, self.blur_pool, name=name)
    if self.blur_pool:
      raise ValueError("CoTSpatial: blur_pool is only implemented for CoT and 'split_attn' blocks")
    return layers.ConvBN(width, 3, stride, groups=self.cardinality, name=name)


@dataclasses.dataclass(frozen=True)
class OutputSE:
  """``make_output_gate`` for :class:`~lgvit.models.resnet.ResNet`: the official ``resnet_rs`` Bottleneck's
  ``se``, timm's ``SEModule(channels, reduction)`` on bn3's output: mean -> 1x1 conv(+b) -> ReLU -> 1x1
  conv(+b) -> sigmoid gate, hidden max(channels // reduction, 8) (reduction 4: the block's planes)."""
  reduction: int = 4

  def __call__(self, stage: int, block: int, channels: int, name: str) -> nn.Module:
    del stage, block
    # The official init: every Conv2d weight kaiming_normal(fan_out), biases PyTorch's default.
    return layers.SqueezeExcite(max(channels // self.reduction, 8), kernel_init=layers.kaiming_normal_fan_out,
                                name=name)


# --------------------------------------------------------------------------------------------
# Networks.
# --------------------------------------------------------------------------------------------


def _create_cotnet(name: str, *, cardinality: int = 1, context: str = 'full',
                   cot_stages: Sequence[bool] = (True, True, True, True), **kwargs) -> ResNet:
  """CoTNet (cardinality 1) / CoTNeXt (cardinality 2): a ResNet with every 3x3 conv a CoT layer."""
  spatial = CoTSpatial(context=context, cot_stages=tuple(cot_stages), cardinality=cardinality)
  return ResNet(**{'cardinality': cardinality, 'make_spatial': spatial, 'zero_init_last_bn': True, **kwargs},
                name=name)


def _create_se_cotnetd(name: str, *, stem_width: int, blur_pool: bool = False, context: str = 'full',
                       cot_stages: Sequence[bool] = (False, False, True, True), **kwargs) -> ResNet:
  """SE-CoTNetD: SE-ResNet-D-style backbone with CoT in res4 (even blocks) and res5."""
  spatial = CoTSpatial(context=context, cot_stages=tuple(cot_stages), other='split_attn', alternate_stages=(2,),
                       blur_pool=blur_pool)
  return ResNet(**{'stage_strides': (2, 2, 2, 2), 'stem': 'deep', 'stem_width': stem_width, 'stem_pool': False,
                   'downsample': 'avg', 'make_spatial': spatial, 'zero_init_last_bn': True, **kwargs}, name=name)


def _create_resnet_rs(name: str, *, stem_width: int, **kwargs) -> ResNet:
  """The official ``resnet_rs`` (the paper's SE-ResNetD): SE-CoTNetD's deep stem and strides, plain 3x3
  convs (CoTSpatial's 'conv' blocks, official names conv2/bn2), strided 1x1 shortcuts (``avg_down=False``),
  an SE (reduction 4) after bn3."""
  return ResNet(**{'stage_strides': (2, 2, 2, 2), 'stem': 'deep', 'stem_width': stem_width, 'stem_pool': False,
                   'downsample': 'conv', 'make_spatial': CoTSpatial(cot_stages=(False, False, False, False)),
                   'make_output_gate': OutputSE(4), 'zero_init_last_bn': True, **kwargs}, name=name)


# params: the official code's exact counts; paper: params and GFLOPs (multiply-adds) from Tables 3/4,
# top-1 from Table 4 (the advanced 350-epoch recipe the configs reproduce).
_R50, _R101, _R152 = (3, 4, 6, 3), (3, 4, 23, 3), (3, 8, 36, 3)
_cotnet = registry.family('cotnet', _create_cotnet, interpolation='bicubic')
_cotnet('cotnet50', stage_depths=_R50, params=22_222_416, paper=dict(params=22.2e6, gmacs=3.3, top1=81.3))
_cotnet('cotnet101', stage_depths=_R101, params=38_272_048, paper=dict(params=38.3e6, gmacs=6.1, top1=82.8))
_cotnet('cotnext50_2x48d', stage_depths=_R50, cardinality=2, base_width=48, params=30_046_276,
        paper=dict(params=30.1e6, gmacs=4.3, top1=82.1))
_cotnet('cotnext101_2x48d', stage_depths=_R101, cardinality=2, base_width=48, params=53_346_068,
        paper=dict(params=53.4e6, gmacs=8.2, top1=83.2))
_se_cotnetd = registry.family('cotnet', _create_se_cotnetd, interpolation='bicubic')
_se_cotnetd('se_cotnetd50', stage_depths=_R50, stem_width=32, params=23_107_784,
            paper=dict(params=23.1e6, gmacs=4.1, top1=81.6))
_se_cotnetd('se_cotnetd101', stage_depths=_R101, stem_width=64, params=40_912_392,
            paper=dict(params=40.9e6, gmacs=8.5, top1=83.2))
# The paper lists 17.0 GFLOPs "at 224"; that is the cost at 256, this model's official default size.
_se_cotnetd('se_cotnetd152', stage_depths=_R152, stem_width=64, blur_pool=True, input_size=256, crop_pct=0.888,
            params=55_783_688, paper=dict(params=55.8e6, gmacs=17.0, top1=84.0))
_se_cotnetd('se_cotnetd152_320', stage_depths=_R152, stem_width=64, blur_pool=True, input_size=320, crop_pct=0.909,
            params=55_783_688, paper=dict(params=55.8e6, gmacs=26.5, top1=84.6))
# Table 6's SE-ResNetD-50 (default setup, top-1 from Table 6): the official resnet_rs50.
_resnet_rs = registry.family('cotnet', _create_resnet_rs, interpolation='bicubic')
_resnet_rs('se_resnetd50', stage_depths=_R50, stem_width=32, params=35_654_920,
           paper=dict(params=35.7e6, gmacs=4.4, top1=79.1))
