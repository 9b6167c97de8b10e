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

Their parameter counts equal the paper's to 0.01M (18,050,792 and 20,423,912). Also from the paper:
``sa_wrn50`` (Tab. 2, SA on WRN-50-2) and ``aa_resnet50`` (Tab. 6, Attention Augmentation of Bello
et al. 2019 on the same eight convs, :class:`AttentionAugmentedConv`: 25,152,596 = the paper's 25.15M).
:func:`unary_binary_shares` computes the Tables 1/2 "Weights (%)" of SA and LESA models.

Feature-map size: the official layer fixes L at construction (so it runs only on 209-224 px
inputs). Here L is read off the input at ``init``, so any size trains. Weights built for one L
cannot be applied at another: an offset in the 1-D raster index means a different 2-D displacement
for every map width (and mixes two of them at every width), so there is no faithful resampling.
Applying them raises :class:`~lgvit.errors.InvalidInputSizeError` naming the parameter and
both sizes; fine-tune at a new size by re-initialising the ``relative`` tables, as the official
detection code does.

Introspection (``model.apply(..., mutable=['intermediates'])``), per LESA layer ``.../conv2``:
``unary_term`` U, ``binary_term`` B, ``gate`` omega (dynamic fusion only), ``unary_share`` and
``binary_share`` (the means of 1/(1+omega) and omega/(1+omega), the paper's Table 2 weights), and
``binary/attention`` (N, heads, L, L). :func:`fusion_weight_shares` averages the shares over layers.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Callable, Optional, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lgvit.errors import InvalidInputSizeError
from lgvit.models import layers
from lgvit.models.layers import BatchNorm, Conv2d, kaiming_normal_fan_out
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


def axial_relative_table(table: Array, side: int) -> Array:
  """A (2S-1, D) table of offsets -(S-1)..S-1 along one axis, for a map ``side`` long: the centre
  2*side-1 rows where side <= S (an offset keeps its embedding), else linearly resampled to 2*side-1
  rows (ViTDet's ``get_rel_pos`` rule; no trained value exists for the new offsets)."""
  have, need = table.shape[0], 2 * side - 1
  if need <= have:
    start = (have - need) // 2
    return table[start:start + need]
  return layers.resize_bilinear(table[None, :, None, :], (need, 1))[0, :, 0, :]


def axial_relative_logits(q: Array, table_h: Array, table_w: Array) -> Array:
  """q . (R_h[a - x] + R_w[b - y]) for every query (x, y) and key (a, b): (N, H, W, G, C) queries ->
  (N, L, L, G) logits, the 2-D relative term of the official *detection* LESA (``detection_qr``)."""
  n, h, w, g, _ = q.shape
  offsets_h = np.arange(h)[None, :] - np.arange(h)[:, None] + h - 1  # [x, a] -> a - x + H - 1
  offsets_w = np.arange(w)[None, :] - np.arange(w)[:, None] + w - 1
  emb_h = axial_relative_table(table_h, h)[offsets_h].astype(q.dtype)  # (H, H, C)
  emb_w = axial_relative_table(table_w, w)[offsets_w].astype(q.dtype)  # (W, W, C)
  along_h = jnp.einsum('nxygc,xac->nxyga', q, emb_h)
  along_w = jnp.einsum('nxygc,ybc->nxygb', q, emb_w)
  logits = along_h[..., :, None] + along_w[..., None, :]  # (N, x, y, G, a, b)
  return jnp.transpose(logits, (0, 1, 2, 4, 5, 3)).reshape(n, h * w, h * w, g)


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

  ``position_embedding='axial'`` is the official detection code's form (``pe_type='detection_qr'``), for
  dense prediction at any map size: 2-D relative embeddings R_h, R_w (one table per axis, sized by the
  map at ``init``, shared by the heads) in the query term only, so the similarity BN has the channels
  (q.k, q.R) and the output BN those of A.v alone. At another map size the tables are cropped or
  resampled (:func:`axial_relative_table`).
  """
  groups: int = 8
  input_stride: int = 0  # stride of this layer's input w.r.t. the image; only for error messages
  position_embedding: str = 'raster'  # 'raster' (classification) | 'axial' (the detection code's)

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
    if self.position_embedding == 'axial':
      return self._axial(q, k, v, (h, w), train=train).reshape(n, h, w, c)
    if self.position_embedding != 'raster':
      raise ValueError(f"LESA position_embedding must be 'raster' or 'axial', got {self.position_embedding!r}")

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

  def _axial(self, q: Array, k: Array, v: Array, hw: tuple[int, int], *, train: bool) -> Array:
    """(N, L, G, C) q, k, v of an ``hw`` map -> (N, L, G*C_v) with the detection code's 2-D term."""
    n, length, g, d_qk = q.shape
    h, w = hw
    if self.has_variable('params', 'rel_height'):
      (th, _), (tw, _) = self.get_variable('params', 'rel_height').shape, self.get_variable('params', 'rel_width').shape
    else:
      th, tw = 2 * h - 1, 2 * w - 1
    init = nn.initializers.normal(d_qk**-0.5)
    table_h = self.param('rel_height', init, (th, d_qk), jnp.float32)
    table_w = self.param('rel_width', init, (tw, d_qk), jnp.float32)
    qk = jnp.einsum('nigc,njgc->nijg', q, k)
    qr = axial_relative_logits(q.reshape(n, h, w, g, d_qk), table_h, table_w)
    similarity = BatchNorm(name='similarity_bn')(jnp.concatenate([qk, qr], axis=-1), train=train)
    logits = similarity.reshape(n, length, length, 2, g).sum(axis=3)
    attn = jax.nn.softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)), axis=2).astype(q.dtype)
    self.sow('intermediates', 'attention', jnp.transpose(attn, (0, 3, 1, 2)))
    out = jnp.einsum('nijg,njgc->nigc', attn, v).reshape(n, length, -1)
    return BatchNorm(name='output_bn')(out, train=train)

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
  position_embedding: str = 'raster'  # BinaryTerm's: 'axial' for dense prediction at any size

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
    binary = BinaryTerm(self.groups, self.input_stride, self.position_embedding, name='binary')(x, train=train)
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
  position_embedding: str = 'raster'  # 'axial': the detection code's 2-D form (BinaryTerm)

  def is_lesa(self, stage: int, block: int) -> bool:
    return self.lesa_stages[stage] and not (block == 0 and self.conv_first_stages[stage])

  def input_stride(self, stage: int, block: int) -> int:
    before = self.stage_strides[:stage + (block > 0)]
    return 4 * int(np.prod(before))

  def __call__(self, stage: int, block: int, width: int, stride: int, name: str) -> nn.Module:
    if not self.is_lesa(stage, block):
      return layers.ConvBN(width, 3, stride, name=name)
    return LESA(self.groups, self.variant, stride, act=nn.relu, input_stride=self.input_stride(stage, block),
                position_embedding=self.position_embedding, name=name)


def _create_lesa(name: str, *, variant: str = 'lesa', lesa_groups: int = 8,
                 lesa_stages: Sequence[bool] = (False, False, True, True),
                 conv_first_stages: Sequence[bool] = (True, True, True, False), lesa_position: str = 'raster',
                 **resnet_kwargs) -> ResNet:
  """A torchvision ResNet with LESA layers; ``resnet_kwargs`` go to :class:`ResNet` (depths, widths,
  ``expansion``, ``base_width``, ...). The last stage has stride 1 unless ``stage_strides`` says otherwise.
  ``lesa_position='axial'``: the detection code's position embedding (dense prediction, any size)."""
  resnet_kwargs.setdefault('stage_strides', (1, 2, 2, 1))
  resnet_kwargs['stage_strides'] = tuple(resnet_kwargs['stage_strides'])
  layout = LESALayout(variant, lesa_groups, tuple(lesa_stages), tuple(conv_first_stages),
                      resnet_kwargs['stage_strides'], lesa_position)
  return ResNet(make_spatial=layout, name=name, **resnet_kwargs)


# ------------------------------------------------------------------------------------------------
# The paper's "Weights (%)" columns (Tables 1 and 2).
# ------------------------------------------------------------------------------------------------


def _natural_key(path: tuple[str, ...]):
  return [int(t) if t.isdigit() else t for t in re.split(r'(\d+)', '/'.join(path))]


def _sown_by_layer(intermediates, suffix: tuple[str, ...]) -> dict[tuple[str, ...], np.ndarray]:
  """{layer path: first sown value} of every value sown under ``<layer>/<suffix...>``, in layer order."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(intermediates))
  found = {}
  for path, value in flat.items():
    if path[len(path) - len(suffix):] == suffix:
      found[path[:len(path) - len(suffix)]] = np.asarray(value[0] if isinstance(value, tuple) else value)
  return dict(sorted(found.items(), key=lambda kv: _natural_key(kv[0])))


def _variant_of(model) -> str:
  if isinstance(model, str):
    return model
  variant = getattr(getattr(model, 'make_spatial', None), 'variant', None)
  if variant is None:
    raise ValueError(f'{getattr(model, "name", model)!r} is not a LESA-family model (no LESA layout)')
  return variant


def unary_binary_shares_per_layer(model, intermediates) -> dict[str, tuple[float, float]]:
  """{layer path: (unary share, binary share)} as the paper's Tables 1 and 2 define them.

  ``model`` is a LESA-family model from ``create_model`` (or its variant: 'sa', 'lesa', 'static');
  ``intermediates`` those of a forward with ``mutable=['intermediates']``.

  * SA (Tab. 1, and Tab. 2 "by tracking softmax operations"): the unary weight of query i is the
    softmax weight it puts on its own position, S[i, i] (the diagonal of every attention map), the
    binary weight the rest, 1 - S[i, i] (they add up to 1); averaged over positions, heads and images.
  * LESA (Tab. 2): 1/(1+omega) and omega/(1+omega) of the fusion gate, averaged over positions,
    channels and images.
  * static LESA: the terms are added with equal weights (omega = 1), so 0.5 and 0.5.

  Attention Augmentation concatenates conv and attention channels; the paper defines no shares
  for it, and asking for them is an error.
  """
  variant = _variant_of(model)
  if variant == 'sa':
    maps = _sown_by_layer(intermediates, ('binary', 'attention'))
    if not maps:
      raise ValueError("no binary/attention in these intermediates: run the SA model with mutable=['intermediates']")
    shares = {}
    for path, attn in maps.items():  # (N, heads, L, L), query on axis 2
      unary = float(np.mean(np.diagonal(attn.astype(np.float64), axis1=2, axis2=3)))
      shares['/'.join(path)] = (unary, 1.0 - unary)
    return shares
  if variant == 'lesa':
    unary = _sown_by_layer(intermediates, ('unary_share',))
    binary = _sown_by_layer(intermediates, ('binary_share',))
    if not unary:
      raise ValueError("no unary_share in these intermediates: run the LESA model with mutable=['intermediates']")
    return {'/'.join(p): (float(unary[p]), float(binary[p])) for p in unary}
  if variant == 'static':
    layers = _sown_by_layer(intermediates, ('unary_term',))
    if not layers:
      raise ValueError("no unary_term in these intermediates: run the model with mutable=['intermediates']")
    return {'/'.join(p): (0.5, 0.5) for p in layers}
  if variant == 'aa':
    raise ValueError('Attention Augmentation concatenates conv and attention channels: the LESA paper defines '
                     'no unary/binary weights for it (Tables 1 and 2 cover SA and LESA)')
  raise ValueError(f'unknown LESA-family variant {variant!r}')


def unary_binary_shares(model, intermediates) -> tuple[float, float]:
  """The paper's Tables 1/2 "Weights (%)": :func:`unary_binary_shares_per_layer` averaged across the
  layers (each layer counts once), as (unary, binary) fractions that add up to 1."""
  per_layer = list(unary_binary_shares_per_layer(model, intermediates).values())
  return float(np.mean([u for u, _ in per_layer])), float(np.mean([b for _, b in per_layer]))


# ------------------------------------------------------------------------------------------------
# Attention Augmentation (Bello et al., 2019), the paper's Table 6 parallel-connection baseline.
# ------------------------------------------------------------------------------------------------


def aa_depths(channels: int, key_ratio: float, value_ratio: float, heads: int) -> tuple[int, int]:
  """(dk, dv) of an augmented conv with ``channels`` outputs: floor(kappa*C) and floor(upsilon*C),
  each rounded down to a multiple of ``heads``. kappa = 0.2, upsilon = 0.1, 8 heads gives
  (48, 24) at C = 256 and (96, 48) at C = 512."""
  dk = int(math.floor(key_ratio * channels + 1e-9)) // heads * heads
  dv = int(math.floor(value_ratio * channels + 1e-9)) // heads * heads
  if dk == 0 or dv == 0 or dv >= channels:
    raise ValueError(f'Attention Augmentation: {channels} channels with kappa={key_ratio}, upsilon={value_ratio} and '
                     f'{heads} heads give dk={dk}, dv={dv}; both must be positive multiples of the heads and dv < '
                     'the channels (use fewer heads or larger ratios)')
  return dk, dv


def _offset_one_hot(n: int) -> np.ndarray:
  """(n, n, 2n-1) with [a, b, b - a + n - 1] = 1: query a, key b, the offset key - query."""
  m = np.zeros((n, n, 2 * n - 1), np.float32)
  a, b = np.meshgrid(np.arange(n), np.arange(n), indexing='ij')
  m[a, b, b - a + n - 1] = 1.0
  return m


class AttentionAugmentedConv(nn.Module):
  """Bello et al.'s attention-augmented 3x3 conv + BN (+ act), (N, H, W, C) -> (N, H/stride, W/stride, C).

  ``out = BN(concat([conv3x3(x) with C - dv channels, MHA(x) with dv channels]))``. The attention:
  a 1x1 projection to q|k|v (dk, dk, dv channels, each split head-major into ``heads`` heads), logits
  ``q_i.k_j / sqrt(dk/heads)`` plus the 2-D relative logits ``q_i.(r^W[w_j - w_i] + r^H[h_j - h_i])/sqrt(dk/heads)``
  (one (2W-1, dk/heads) and one (2H-1, dk/heads) table shared by the heads), softmax over keys, and
  the 1x1 output projection W_O (dv -> dv). No biases (the BN follows). With a stride, the conv is
  strided and the attention runs on the average-pooled input (Bello et al.). The relative tables are
  sized from the input at ``init``.
  """
  heads: int = 8
  key_ratio: float = 0.2  # kappa = dk / C
  value_ratio: float = 0.1  # upsilon = dv / C
  strides: int = 1
  act: Optional[Callable[[Array], Array]] = None
  input_stride: int = 0  # for error messages only

  @nn.compact
  def __call__(self, x: Array, *, train: bool = False) -> Array:
    c = x.shape[-1]
    dk, dv = aa_depths(c, self.key_ratio, self.value_ratio, self.heads)
    nh, dkh, dvh = self.heads, dk // self.heads, dv // self.heads
    s = self.strides
    if s > 1 and (x.shape[1] % s or x.shape[2] % s):
      hint = f' (use images of a multiple of {self.input_stride * s} px)' if self.input_stride else ''
      raise InvalidInputSizeError(f"AA layer {'/'.join(self.scope.path)}: its {x.shape[1]}x{x.shape[2]} input is not "
                                  f'divisible by its stride {s}{hint}.')
    conv = Conv2d(c - dv, 3, s, 1, kernel_init=kaiming_normal_fan_out, name='conv')(x)
    a = layers.avg_pool(x, s, s) if s > 1 else x
    n, h, w, _ = a.shape
    qkv = Conv2d(2 * dk + dv, 1, kernel_init=kaiming_normal_fan_out, name='qkv')(a)
    q, k, v = jnp.split(qkv, [dk, 2 * dk], axis=-1)
    q = q.reshape(n, h, w, nh, dkh) * dkh**-0.5
    rel_w = self._table('key_rel_w', w, dkh, (h, w))
    rel_h = self._table('key_rel_h', h, dkh, (h, w))
    emb_w = jnp.einsum('abm,md->abd', _offset_one_hot(w), rel_w).astype(q.dtype)  # (W query, W key, dkh)
    emb_h = jnp.einsum('abm,md->abd', _offset_one_hot(h), rel_h).astype(q.dtype)
    logit_w = jnp.einsum('nxygd,ykd->ngxyk', q, emb_w)  # (N, heads, Hq, Wq, Wk)
    logit_h = jnp.einsum('nxygd,xkd->ngxyk', q, emb_h)  # (N, heads, Hq, Wq, Hk)
    bias = (logit_h[..., :, None] + logit_w[..., None, :]).reshape(n, nh, h * w, h * w)

    def heads_first(t, d):
      return jnp.transpose(t.reshape(n, h * w, nh, d), (0, 2, 1, 3))

    out = layers.dot_product_attention(heads_first(q, dkh), heads_first(k, dkh), heads_first(v, dvh), bias)
    out = jnp.transpose(out, (0, 2, 1, 3)).reshape(n, h, w, dv)  # heads concatenated, head-major
    out = Conv2d(dv, 1, kernel_init=kaiming_normal_fan_out, name='proj')(out)
    y = BatchNorm(name='bn')(jnp.concatenate([conv, out.astype(conv.dtype)], axis=-1), train=train)
    return self.act(y) if self.act is not None else y

  def _table(self, name: str, side: int, dkh: int, hw: tuple[int, int]) -> Array:
    shape = (2 * side - 1, dkh)
    if self.has_variable('params', name):
      have = tuple(self.get_variable('params', name).shape)
      if have != shape:
        raise InvalidInputSizeError(
            f"AA layer {'/'.join(self.scope.path)}: parameter {name!r} has shape {have}, built for a map side of "
            f'{(have[0] + 1) // 2}, but this input gives a {hw[0]}x{hw[1]} map, which needs {shape}. Feed inputs of '
            f'the size the weights were built for, or re-initialise the tables (--config.init_skip=key_rel).')
    return self.param(name, nn.initializers.normal(dkh**-0.5), shape, jnp.float32)


@dataclasses.dataclass(frozen=True)
class AALayout(LESALayout):
  """``make_spatial`` of AA-ResNet-50 in the LESA paper's Table 6 setting: the 3x3 convs that LESA
  replaces (stages 3 and 4 but stage 3's first block) are attention-augmented."""
  variant: str = 'aa'
  heads: int = 8
  key_ratio: float = 0.2
  value_ratio: float = 0.1

  def __call__(self, stage: int, block: int, width: int, stride: int, name: str) -> nn.Module:
    if not self.is_lesa(stage, block):
      return layers.ConvBN(width, 3, stride, name=name)
    return AttentionAugmentedConv(self.heads, self.key_ratio, self.value_ratio, stride, act=nn.relu,
                                  input_stride=self.input_stride(stage, block), name=name)


def _create_aa(name: str, *, aa_heads: int = 8, aa_key_ratio: float = 0.2, aa_value_ratio: float = 0.1,
               aa_stages: Sequence[bool] = (False, False, True, True),
               conv_first_stages: Sequence[bool] = (True, True, True, False), **resnet_kwargs) -> ResNet:
  """A torchvision ResNet (last stage stride 1, as the LESA models) with attention-augmented convs."""
  resnet_kwargs.setdefault('stage_strides', (1, 2, 2, 1))
  resnet_kwargs['stage_strides'] = tuple(resnet_kwargs['stage_strides'])
  layout = AALayout(variant='aa', lesa_stages=tuple(aa_stages), conv_first_stages=tuple(conv_first_stages),
                    stage_strides=resnet_kwargs['stage_strides'], heads=aa_heads, key_ratio=aa_key_ratio,
                    value_ratio=aa_value_ratio)
  return ResNet(make_spatial=layout, name=name, **resnet_kwargs)


# params: the official code's counts (SA and static: derived from it, see docs/official_code.md);
# paper: params from Tab. 6 (WRN50: Tab. 2), ImageNet top-1 from the official README / Tab. 6 (SA-WRN50:
# Tab. 2); unary_weight: Tab. 2's unary "Weights (%)" of the trained model (unary_binary_shares).
_variant = registry.family('lesa', _create_lesa, feature_strides=(4, 8, 16, 16))
_variant('lesa_resnet50', params=23_777_512, paper=dict(params=23.78e6, top1=79.55, unary_weight=0.670))
_variant('lesa_wrn50', base_width=128, params=61_145_896, paper=dict(params=60.6e6, top1=80.18, unary_weight=0.669))
_variant('sa_resnet50', variant='sa', params=18_050_792, paper=dict(params=18.06e6, top1=78.69, unary_weight=0.020))
_variant('static_lesa_resnet50', variant='static', params=20_423_912, paper=dict(params=20.43e6, top1=79.12))
# SA-WRN50: our count includes the relative tables (550,528), which the paper's WRN50 counts leave out
# (without them: 37,722,280), as for LESA-WRN50.
_variant('sa_wrn50', variant='sa', base_width=128, params=38_272_808,
         paper=dict(params=37.7e6, top1=79.7, top5=94.7, unary_weight=0.025))
# AA-ResNet-50 in Tab. 6's setting: kappa = 0.2, upsilon = 0.1, 8 heads (Bello et al.'s ResNet setting),
# dk and dv rounded down to multiples of the heads, no biases: 25,152,596 = the paper's 25.15M.
registry.family('lesa', _create_aa, feature_strides=(4, 8, 16, 16))(
    'aa_resnet50', params=25_152_596, paper=dict(params=25.15e6, top1=78.74, top5=94.23))
