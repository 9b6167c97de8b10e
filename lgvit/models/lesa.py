"""LESA: Locally Enhanced Self-Attention (Yang et al., 2021), on the torchvision ResNet.

The paper reads self-attention as a fully connected CRF: a *unary* term (each position attends to
itself) and a *binary* term (all pairs of positions). LESA keeps the binary term as global
multi-head attention, replaces the unary term by a grouped convolution, and lets a small
*dynamic fusion* network decide, per sample, position and channel, how much of the binary term to
add::

    out = U(x) + omega(U, B) * B(x)        omega = sigmoid(F([U | B]))

The layer replaces the 3x3 conv + BN (+ ReLU) of a ResNet bottleneck. Everything below follows the
official classification code (Chenglin-Yang/LESA_classification, see docs/official_code.md):

* unary U: grouped 3x3 conv (groups = heads) -> 1x1 conv -> BN, no activation;
* binary B: 1x1 q|k|v projection -> BN; per head the logits q.k, q.R_q and k.R_k, each with its own
  BatchNorm (the only temperature; there is no 1/sqrt(d) scaling), softmax over keys, then
  A.v + A.R_v, again with a BatchNorm on each. The relative embeddings R are ONE table of
  2L-1 columns over offsets in the *flattened raster index* p = h*W + w (axial-DeepLab style
  q/k/v embeddings over a 1-D sequence), shared by all heads;
* fusion F: ReLU -> 1x1 (2C -> C) -> BN -> ReLU -> 1x1 (C -> C) -> BN -> sigmoid;
* a stride > 1 is an average pool applied after the fusion.

The network (:func:`lesa_resnet50`, :func:`lesa_wrn50`) is a torchvision ResNet-50 / WRN-50-2 whose
last stage has stride 1 (output stride 16) and whose stages 3 and 4 use LESA layers, except the
first (stride-2) block of stage 3, which stays a convolution.

Two baselines of the paper's Table 6 are not in the official code and are built from the paper:

* ``sa_resnet50`` -- the binary term alone (plain self-attention with the same relative
  embeddings and BN'd logits): ``out = B(x)``;
* ``static_lesa_resnet50`` -- "adding the unary and binary terms without the dynamic fusion
  module" (Sec. 3.3: "a static way of merging the two terms with equal weights"): ``out = U + B``.

Their parameter counts equal the paper's to 0.01M (18,050,792 and 20,423,912).

Feature-map size: the official layer fixes L at construction (so it runs only on 209-224 px
inputs). Here L is read off the input at ``init``, so any size trains. Weights built for one L
cannot be applied at another: an offset in the 1-D raster index means a different 2-D displacement
for every map width (and mixes two of them at every width), so there is no faithful resampling.
Applying them raises :class:`~lgvit.models.layers.InvalidInputSizeError` naming the parameter and
both sizes; fine-tune at a new size by re-initialising the ``relative`` tables, as the official
detection code does.

Introspection (``model.apply(..., mutable=['intermediates'])``), per LESA layer ``.../conv2``:
``unary_term`` U, ``binary_term`` B, ``gate`` omega (dynamic fusion only), ``unary_share`` and
``binary_share`` (the means of 1/(1+omega) and omega/(1+omega), the paper's Table 2 weights), and
``binary/attention`` (N, heads, L, L). :func:`fusion_weight_shares` averages the shares over layers.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lgvit.models import layers
from lgvit.models.layers import BatchNorm, Conv2d, InvalidInputSizeError, kaiming_normal_fan_out
from lgvit.models import registry
from lgvit.models.resnet import ResNet

Array = jax.Array

VARIANTS = ('lesa', 'static', 'sa')

# ------------------------------------------------------------------------------------------------
# Relative position embeddings over the flattened raster index.
# ------------------------------------------------------------------------------------------------


def relative_embeddings(table: Array, length: int) -> Array:
  """Expands a (rows, 2L-1) offset table into E[c, i, j] = table[c, i - j + L - 1], shape (rows, L, L).

  Done with a tile-reshape "skew" instead of a gather, so the backward pass is a reshape-sum rather
  than a scatter-add (slow on XLA:CPU). Row i of the (L, 2L) view of the tiled table starts at
  column i, so reading columns L-1 .. 0 of it gives the offsets i - j + L - 1 for j = 0 .. L-1.
  """
  rows, cols = table.shape
  if cols != 2 * length - 1:
    raise ValueError(f'relative table has {cols} columns; a sequence of {length} needs {2 * length - 1}')
  tiled = jnp.tile(table, (1, length + 1))[:, :2 * length * length]
  return tiled.reshape(rows, length, 2 * length)[:, :, length - 1::-1]


def _valid_image_sizes(side: int, input_stride: int) -> str:
  if not input_stride:
    return ''
  # Stem, pool and stride-2 stages each take ceil(x / 2), so the side here is ceil(image / stride).
  return f'; images of {(side - 1) * input_stride + 1}-{side * input_stride} px'


# ------------------------------------------------------------------------------------------------
# The three parts of the layer.
# ------------------------------------------------------------------------------------------------


class UnaryTerm(nn.Module):
  """U: grouped 3x3 conv (one group per head) -> 1x1 conv mixing the heads -> BN (no activation)."""
  groups: int = 8

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    c = x.shape[-1]
    y = Conv2d(c, 3, padding=1, groups=self.groups, kernel_init=kaiming_normal_fan_out, name='conv3x3')(x)
    if self.groups != 1:
      y = Conv2d(c, 1, kernel_init=kaiming_normal_fan_out, name='conv1x1')(y)
    return BatchNorm(name='bn')(y, train=train)


class BinaryTerm(nn.Module):
  """B: all-to-all multi-head attention with BN'd logits and q/k/v raster-offset embeddings.

  Channel layouts are the official ones, so checkpoints convert by plain copies: the q|k|v
  projection is head-major (channel g*(2C/G) + t with q, k, v consecutive inside each head), the
  similarity BN has channel term*G + g for the terms (q.k, q.R_q, k.R_k), and the output BN has
  channel 2*o + s for output channel o and s = 0 (A.v) / 1 (A.R_v).
  """
  groups: int = 8
  input_stride: int = 0  # stride of this layer's input w.r.t. the image; only for error messages

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    n, h, w, c = x.shape
    g = self.groups
    if c % (2 * g):
      raise ValueError(f'LESA: {c} channels cannot be split into {g} heads with q/k of C/(2*heads) channels')
    length, d_qk, d_v = h * w, c // (2 * g), c // g
    tokens = x.reshape(n, length, c)
    qkv = nn.Dense(2 * c, use_bias=False, kernel_init=nn.initializers.variance_scaling(1.0, 'fan_in', 'normal'),
                   dtype=x.dtype, name='qkv')(tokens)
    # BatchNorms on (N, L, channels) and (N, L, L, channels): statistics over (N, L) and (N, L, L), as
    # the official BatchNorm1d / BatchNorm2d on the channels-first tensors.
    qkv = BatchNorm(name='qkv_bn')(qkv, train=train).reshape(n, length, g, 2 * d_qk + d_v)
    q, k, v = jnp.split(qkv, [d_qk, 2 * d_qk], axis=-1)

    table = self._relative_table(2 * c // g, length, (h, w), d_v)
    emb = relative_embeddings(table, length).astype(x.dtype)  # (2C/G, L, L), shared by the heads
    emb_q, emb_k, emb_v = emb[:d_qk], emb[d_qk:2 * d_qk], emb[2 * d_qk:]

    # Logits in (N, query i, key j, head) layout so the three terms stack into BN channels.
    qk = jnp.einsum('nigc,njgc->nijg', q, k)
    qr = jnp.einsum('nigc,cij->nijg', q, emb_q)  # offset query - key
    kr = jnp.einsum('njgc,cji->nijg', k, emb_k)  # offset key - query
    similarity = BatchNorm(name='similarity_bn')(jnp.concatenate([qk, qr, kr], axis=-1), train=train)
    logits = similarity.reshape(n, length, length, 3, g).sum(axis=3)
    # Softmax in at least float32 (bfloat16 logits lose the small attention weights).
    attn = jax.nn.softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)), axis=2).astype(x.dtype)
    self.sow('intermediates', 'attention', jnp.transpose(attn, (0, 3, 1, 2)))

    sv = jnp.einsum('nijg,njgc->nigc', attn, v)
    sve = jnp.einsum('nijg,cij->nigc', attn, emb_v)
    out = jnp.stack([sv, sve], axis=-1).reshape(n, length, 2 * c)
    out = BatchNorm(name='output_bn')(out, train=train).reshape(n, length, c, 2).sum(axis=-1)
    return out.reshape(n, h, w, c)

  def _relative_table(self, rows: int, length: int, hw: tuple[int, int], d_v: int) -> Array:
    shape = (rows, 2 * length - 1)
    if self.has_variable('params', 'relative'):
      have = tuple(self.get_variable('params', 'relative').shape)
      if have != shape:
        old_len = (have[1] + 1) // 2
        old_side = int(round(old_len**0.5))
        old_map = f'{old_side}x{old_side}' if old_side * old_side == old_len else f'{old_len}-position'
        old_sizes = _valid_image_sizes(old_side, self.input_stride) if old_side * old_side == old_len else ''
        new_sizes = _valid_image_sizes(hw[0], self.input_stride) if hw[0] == hw[1] else ''
        raise InvalidInputSizeError(
            f"LESA layer {'/'.join(self.scope.path)}: parameter 'relative' has shape {have}, built for a "
            f'{old_map} feature map (L={old_len}{old_sizes}), but this input gives a {hw[0]}x{hw[1]} map '
            f'(L={length}{new_sizes}), which needs {shape}. The table is indexed by offsets in the flattened '
            'raster index (h*W + w), whose 2-D meaning changes with the map width, so it is not resampled. '
            f'Feed inputs that give a {old_map} map, or fine-tune at the new size with re-initialised '
            "'relative' tables (e.g. --config.init_skip=relative), as the official detection code does.")
    return self.param('relative', nn.initializers.normal(d_v**-0.5), shape, jnp.float32)


class DynamicFusion(nn.Module):
  """omega = sigmoid(BN(fc2(ReLU(BN(fc1(ReLU([U | B]))))))), one weight per sample, position, channel.

  The paper's leading BN (of "BN-ReLU-fc1-BN-ReLU-fc2-BN-sigmoid") is the last BN of U and of B.
  """
  shrink: int = 2  # fc1 maps 2C -> 2C / shrink

  @nn.compact
  def __call__(self, unary: Array, binary: Array, *, train: bool) -> Array:
    c = unary.shape[-1]
    z = nn.relu(jnp.concatenate([unary, binary], axis=-1))
    z = Conv2d(2 * c // self.shrink, 1, kernel_init=kaiming_normal_fan_out, name='fc1')(z)
    z = nn.relu(BatchNorm(name='bn1')(z, train=train))
    z = Conv2d(c, 1, kernel_init=kaiming_normal_fan_out, name='fc2')(z)
    return jax.nn.sigmoid(BatchNorm(name='bn2')(z, train=train))


class LESA(nn.Module):
  """The LESA layer, (N, H, W, C) -> (N, H/stride, W/stride, C).

  ``variant``: 'lesa' (U + omega*B), 'static' (U + B) or 'sa' (B only). ``act`` is applied last
  (the bottleneck's ReLU that follows the replaced conv).
  """
  groups: int = 8
  variant: str = 'lesa'
  strides: int = 1
  act: Optional[Callable[[Array], Array]] = None
  input_stride: int = 0

  @nn.compact
  def __call__(self, x: Array, *, train: bool = False) -> Array:
    if self.variant not in VARIANTS:
      raise ValueError(f'LESA variant must be one of {VARIANTS}, got {self.variant!r}')
    h, w = x.shape[1:3]
    if self.strides > 1 and (h % self.strides or w % self.strides):
      stride_here = self.input_stride * self.strides
      hint = (f' (at this depth the image is reduced {self.input_stride}x: use a multiple of {stride_here} px)'
              if self.input_stride else '')
      raise InvalidInputSizeError(
          f"LESA layer {'/'.join(self.scope.path)}: its {h}x{w} input is not divisible by its stride "
          f'{self.strides}, so the average pool and the strided shortcut would disagree{hint}.')
    binary = BinaryTerm(self.groups, self.input_stride, name='binary')(x, train=train)
    self.sow('intermediates', 'binary_term', binary)
    if self.variant == 'sa':
      out = binary
    else:
      unary = UnaryTerm(self.groups, name='unary')(x, train=train)
      self.sow('intermediates', 'unary_term', unary)
      if self.variant == 'static':
        out = unary + binary
      else:
        gate = DynamicFusion(name='fusion')(unary, binary, train=train)
        self.sow('intermediates', 'gate', gate)
        g32 = gate.astype(jnp.float32)
        self.sow('intermediates', 'unary_share', jnp.mean(1.0 / (1.0 + g32)))
        self.sow('intermediates', 'binary_share', jnp.mean(g32 / (1.0 + g32)))
        out = unary + gate * binary
    if self.strides > 1:
      out = layers.avg_pool(out, self.strides, self.strides)
    return self.act(out) if self.act is not None else out


def fusion_weight_shares(intermediates) -> tuple[float, float]:
  """The paper's Table 2 weights: 1/(1+omega) and omega/(1+omega) averaged over positions,
  channels and layers (and the batch), from ``intermediates`` of a forward with dynamic fusion."""
  flat = jax.tree_util.tree_flatten_with_path(intermediates)[0]

  def collect(name):
    return [float(jnp.mean(v)) for path, v in flat if any(getattr(p, 'key', None) == name for p in path)]

  unary, binary = collect('unary_share'), collect('binary_share')
  if not unary:
    raise ValueError('no unary_share in these intermediates: run a LESA model (dynamic fusion) with '
                     "mutable=['intermediates']")
  return float(np.mean(unary)), float(np.mean(binary))


# ------------------------------------------------------------------------------------------------
# LESA ResNets.
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LESALayout:
  """``make_spatial`` for :class:`~lgvit.models.resnet.ResNet`: which bottlenecks get a LESA layer.

  The official layout: LESA in stages 3 and 4, except stage 3's first (stride-2) block, which keeps
  its 3x3 conv. ``stage_strides`` must be the ResNet's; it only serves error messages.
  """
  variant: str = 'lesa'
  groups: int = 8
  lesa_stages: tuple[bool, ...] = (False, False, True, True)
  conv_first_stages: tuple[bool, ...] = (True, True, True, False)
  stage_strides: tuple[int, ...] = (1, 2, 2, 1)

  def is_lesa(self, stage: int, block: int) -> bool:
    return self.lesa_stages[stage] and not (block == 0 and self.conv_first_stages[stage])

  def input_stride(self, stage: int, block: int) -> int:
    before = self.stage_strides[:stage + (block > 0)]
    return 4 * int(np.prod(before))

  def __call__(self, stage: int, block: int, width: int, stride: int, name: str) -> nn.Module:
    if not self.is_lesa(stage, block):
      return layers.ConvBN(width, 3, stride, name=name)
    return LESA(self.groups, self.variant, stride, act=nn.relu, input_stride=self.input_stride(stage, block),
                name=name)


def _create_lesa(name: str, *, variant: str = 'lesa', lesa_groups: int = 8,
                 lesa_stages: Sequence[bool] = (False, False, True, True),
                 conv_first_stages: Sequence[bool] = (True, True, True, False), **resnet_kwargs) -> ResNet:
  """A torchvision ResNet with LESA layers; ``resnet_kwargs`` go to :class:`ResNet` (depths, widths,
  ``expansion``, ``base_width``, ...). The last stage has stride 1 unless ``stage_strides`` says otherwise."""
  resnet_kwargs.setdefault('stage_strides', (1, 2, 2, 1))
  resnet_kwargs['stage_strides'] = tuple(resnet_kwargs['stage_strides'])
  layout = LESALayout(variant, lesa_groups, tuple(lesa_stages), tuple(conv_first_stages),
                      resnet_kwargs['stage_strides'])
  return ResNet(make_spatial=layout, name=name, **resnet_kwargs)


# params: the official code's counts (SA and static: derived from it, see docs/official_code.md);
# paper: params from Tab. 6 (LESA-WRN50: Tab. 2), ImageNet top-1 from the official README / Tab. 6.
_variant = registry.family('lesa', _create_lesa, feature_strides=(4, 8, 16, 16))
_variant('lesa_resnet50', params=23_777_512, paper=dict(params=23.78e6, top1=79.55))
_variant('lesa_wrn50', base_width=128, params=61_145_896, paper=dict(params=60.6e6, top1=80.18))
_variant('sa_resnet50', variant='sa', params=18_050_792, paper=dict(params=18.06e6, top1=78.69))
_variant('static_lesa_resnet50', variant='static', params=20_423_912, paper=dict(params=20.43e6, top1=79.12))
