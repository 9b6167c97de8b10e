"""SALG: Semantic-Aware Local-Global Vision Transformer (Zhang, Yao, Chen, Lu, Pei).

No official code is public; the paper is the spec (summarised in ``docs/official_code.md``) and every point
it leaves open is a field of :class:`SALG` (see ``docs/models_salg.md``).

The network: a three-conv patch embedding to H/4, three SALG stages and one plain global stage, Swin
patch merging between stages, then LayerNorm, global average pool and a linear head. A SALG stage
first segments its input map into semantic regions (:func:`segment_regions`) and then runs
Local-Global blocks (:class:`LocalGlobalBlock`): attention inside every region together with the
region's aggregation (AGR) token, followed by propagation between the AGR tokens (MSA or average
pooling).

How it scales: a region's tokens always lie inside its *coverage area*, the region's s x s window
grown by p tokens on each side. All coverage areas of all images are cut out with static slices (the
areas are fixed by the map size: :func:`unfold_coverage`), attend as one batched masked attention,
and go back to the map with the adjoint of that cut (:func:`fold_coverage`) after zeroing every token
outside its own region. Only the membership mask depends on the data. LayerNorm, the qkv and output
projections and the MLP are per token, so they run once on the map (plus the AGR tokens) instead of
once per coverage area; this is exactly Eq. 2, because a token's result is read from its own region.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from jax import lax

from lgvit.errors import InvalidInputSizeError
from lgvit.models import layers
from lgvit.models import registry
from lgvit.models.swin import RESIZE_RULES, PatchMerging

Array = Any

# Model overrides for the rows of the paper's Table III. The table's "SALG" rows equal the MSA rows
# of Table IV, so the ablations were run with inter-region MSA.
TABLE3_ABLATIONS = {
    'base': dict(segmentation=False, agr_tokens=False, inter_region='none'),
    'base_local_global': dict(segmentation=False, agr_tokens=True, inter_region='msa'),
    'base_seg_local': dict(segmentation=True, agr_tokens=False, inter_region='none'),
    'salg': dict(segmentation=True, agr_tokens=True, inter_region='msa'),
}

# ---------------------------------------------------------------------------------------------
# Region geometry: everything that depends only on the map size is numpy, fixed at trace time.
# ---------------------------------------------------------------------------------------------

# A token can only be covered by its own window's region or by one of the 8 neighbouring ones
# (the coverage pad p never exceeds the window size). Candidates are listed row-major, so for any
# token they are in increasing region index.
NEIGHBOUR_OFFSETS = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1))


@dataclasses.dataclass(frozen=True)
class RegionGrid:
  """An h x w map zero-padded to multiples of ``size``, split into (nh, nw) windows = regions."""
  h: int
  w: int
  size: int
  pad: int

  def __post_init__(self):
    if not 0 <= self.pad <= self.size:
      raise ValueError(f'coverage pad {self.pad} must lie in [0, region size {self.size}]')

  @property
  def nh(self) -> int:
    return -(-self.h // self.size)

  @property
  def nw(self) -> int:
    return -(-self.w // self.size)

  @property
  def num_regions(self) -> int:
    return self.nh * self.nw

  @property
  def padded(self) -> tuple[int, int]:
    return self.nh * self.size, self.nw * self.size

  @property
  def cover(self) -> int:
    """Side of a coverage area."""
    return self.size + 2 * self.pad

  def valid_tokens(self) -> np.ndarray:
    """(hp, wp): True on the real map, False on the zero padding."""
    hp, wp = self.padded
    valid = np.zeros((hp, wp), bool)
    valid[:self.h, :self.w] = True
    return valid

  def tokens_per_window(self) -> np.ndarray:
    """(nh, nw) count of real tokens in each window (>= 1: padding is less than a window)."""
    return self.valid_tokens().reshape(self.nh, self.size, self.nw, self.size).sum((1, 3))

  def candidates(self) -> np.ndarray:
    """(hp, wp, 9): whether neighbour ``NEIGHBOUR_OFFSETS[c]`` of a token's window covers the token."""
    hp, wp = self.padded
    s, p = self.size, self.pad

    def covers(n_windows, length):  # (length, 3) over offsets -1, 0, +1 along one axis
      pos = np.arange(length)
      win, inner = pos // s, pos % s
      return np.stack([(win >= 1) & (inner < p), np.ones(length, bool), (win + 1 < n_windows) & (inner >= s - p)],
                      axis=1)

    rows, cols = covers(self.nh, hp), covers(self.nw, wp)
    cand = rows[:, None, :, None] & cols[None, :, None, :]  # (hp, wp, 3, 3)
    return cand.reshape(hp, wp, 9) & self.valid_tokens()[:, :, None]

  def own_region(self) -> np.ndarray:
    """(hp, wp) index of the window containing each token (row-major over the window grid)."""
    hp, wp = self.padded
    return (np.arange(hp) // self.size)[:, None] * self.nw + (np.arange(wp) // self.size)[None, :]


def _pad_to_grid(x: Array, grid: RegionGrid) -> Array:
  hp, wp = grid.padded
  return jnp.pad(x, ((0, 0), (0, hp - x.shape[1]), (0, wp - x.shape[2])) + ((0, 0),) * (x.ndim - 3))


def _normalize(x: Array, eps: float = 1e-12) -> Array:
  """``F.normalize``: x / max(||x||, eps)."""
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


# ---------------------------------------------------------------------------------------------
# Semantic-aware region segmentation (Sec. III-B).
# ---------------------------------------------------------------------------------------------


def segment_regions(x: Array, region_size: int, pad: int) -> tuple[Array, Array]:
  """Assigns every token of ``x`` (B, H, W, C) to a region.

  Region means are the averages of the s x s windows (over real tokens; the zero padding would only
  rescale them, which cosine similarity ignores). A token goes to the covering region whose mean has
  the largest cosine similarity with it; exact ties go to the lowest region index.

  Returns ``regions`` (B, Hp, Wp) int32, the row-major region index of each token of the padded map
  (-1 on padding), and the region ``means`` (B, K, C) in x's dtype.
  """
  b, h, w, c = x.shape
  grid = RegionGrid(h, w, region_size, pad)
  s, nh, nw = region_size, grid.nh, grid.nw
  xw = _pad_to_grid(x, grid).reshape(b, nh, s, nw, s, c)
  means = xw.sum((2, 4)) / jnp.asarray(grid.tokens_per_window(), x.dtype)[None, :, :, None]
  # Similarities in float32 at full precision: the hard argmax must not depend on the backend.
  tokens = _normalize(xw.astype(jnp.float32))
  neighbours = jnp.pad(_normalize(means.astype(jnp.float32)), ((0, 0), (1, 1), (1, 1), (0, 0)))
  sims = jnp.stack([
      jnp.einsum('niujvc,nijc->niujv', tokens, neighbours[:, 1 + dy:1 + dy + nh, 1 + dx:1 + dx + nw],
                 precision=lax.Precision.HIGHEST) for dy, dx in NEIGHBOUR_OFFSETS
  ], axis=-1).reshape(b, nh * s, nw * s, 9)
  valid = jnp.asarray(grid.candidates())
  choice = jnp.argmax(jnp.where(valid, sims, -jnp.inf), axis=-1)  # first maximum = lowest region index
  offsets = np.array([dy * nw + dx for dy, dx in NEIGHBOUR_OFFSETS], np.int32)
  regions = jnp.asarray(grid.own_region(), jnp.int32) + jnp.asarray(offsets)[choice]
  regions = jnp.where(jnp.asarray(grid.valid_tokens()), regions, -1)
  return lax.stop_gradient(regions), means.reshape(b, nh * nw, c)


# ---------------------------------------------------------------------------------------------
# Coverage areas: static cut (unfold) and its adjoint (fold).
# ---------------------------------------------------------------------------------------------


def _grow(x: Array, window_axis: int, inner_axis: int, size: int, pad: int) -> Array:
  """Extends every window along ``inner_axis`` by ``pad`` entries of its neighbours (zeros at the border)."""
  if pad == 0:
    return x
  n = x.shape[window_axis]
  widths = [(0, 0)] * x.ndim
  above = lax.slice_in_dim(lax.slice_in_dim(x, 0, n - 1, axis=window_axis), size - pad, size, axis=inner_axis)
  below = lax.slice_in_dim(lax.slice_in_dim(x, 1, n, axis=window_axis), 0, pad, axis=inner_axis)
  widths[window_axis] = (1, 0)
  above = jnp.pad(above, widths)
  widths[window_axis] = (0, 1)
  below = jnp.pad(below, widths)
  return jnp.concatenate([above, x, below], axis=inner_axis)


def _shrink(y: Array, window_axis: int, inner_axis: int, size: int, pad: int) -> Array:
  """Adjoint of :func:`_grow`: adds every halo back onto the window it was cut from."""
  if pad == 0:
    return y
  n = y.shape[window_axis]
  core = lax.slice_in_dim(y, pad, pad + size, axis=inner_axis)
  above = lax.slice_in_dim(lax.slice_in_dim(y, 1, n, axis=window_axis), 0, pad, axis=inner_axis)
  below = lax.slice_in_dim(lax.slice_in_dim(y, 0, n - 1, axis=window_axis), pad + size, size + 2 * pad,
                           axis=inner_axis)
  widths = [(0, 0)] * y.ndim
  widths[window_axis], widths[inner_axis] = (0, 1), (size - pad, 0)
  above = jnp.pad(above, widths)
  widths[window_axis], widths[inner_axis] = (1, 0), (0, size - pad)
  below = jnp.pad(below, widths)
  return core + above + below


def unfold_coverage(x: Array, region_size: int, pad: int) -> Array:
  """(B, Hp, Wp, D) padded map -> (B, K, cover*cover, D): each region's coverage area, row-major.

  Positions outside the map are zeros.
  """
  b, hp, wp, d = x.shape
  s, nh, nw, cover = region_size, hp // region_size, wp // region_size, region_size + 2 * pad
  x = _grow(x.reshape(b, nh, s, wp, d), 1, 2, s, pad).reshape(b, nh, cover, nw, s, d)
  x = _grow(x, 3, 4, s, pad)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, nh * nw, cover * cover, d)


def fold_coverage(y: Array, region_size: int, pad: int, nh: int, nw: int) -> Array:
  """Adjoint of :func:`unfold_coverage`: (B, K, cover*cover, D) -> (B, Hp, Wp, D), overlaps summed."""
  b, _, _, d = y.shape
  s, cover = region_size, region_size + 2 * pad
  y = y.reshape(b, nh, nw, cover, cover, d).transpose(0, 1, 3, 2, 4, 5)
  y = _shrink(y, 3, 4, s, pad).reshape(b, nh, cover, nw * s, d)
  return _shrink(y, 1, 2, s, pad).reshape(b, nh * s, nw * s, d)


# ---------------------------------------------------------------------------------------------
# Local-Global Transformer block (Sec. III-C).
# ---------------------------------------------------------------------------------------------


class LocalGlobalBlock(layers.PreNormBlock, kw_only=True):
  """Intra-region attention with AGR tokens (Eq. 2), then inter-region propagation (Eq. 3 / 4).

  ``__call__(x, agr, regions)``: x (B, H, W, C); agr (B, K, C) or None (no AGR tokens); regions
  (B, Hp, Wp) from :func:`segment_regions`. Returns the new (x, agr).

  ``propagate=False`` skips the inter-region step; a stage does so in its last block, whose AGR
  tokens are dropped anyway.
  """
  region_size: int
  pad: int
  inter_region: str = 'ap'  # 'ap' | 'msa' | 'none'
  propagate: bool = True
  agr_position_bias: bool = True  # a learnable per-head scalar on every logit involving the AGR token

  @nn.compact
  def __call__(self, x: Array, agr: Optional[Array], regions: Array, *, train: bool = False):
    b, h, w, c = x.shape
    grid = RegionGrid(h, w, self.region_size, self.pad)
    k, area, heads = grid.num_regions, grid.cover**2, self.num_heads
    # Per-token ops run once over the map tokens followed by the AGR tokens.
    seq = x.reshape(b, h * w, c)
    if agr is not None:
      seq = jnp.concatenate([seq, agr.astype(seq.dtype)], axis=1)

    qkv = nn.Dense(3 * c, kernel_init=layers.normal_002, dtype=self.dtype, precision=self.precision,
                   name='qkv')(layers.layer_norm('norm1', dtype=self.dtype)(seq))
    qkv_map = _pad_to_grid(qkv[:, :h * w].reshape(b, h, w, 3 * c), grid)
    tokens = unfold_coverage(qkv_map, self.region_size, self.pad)  # (B, K, A, 3C)
    member = unfold_coverage((regions + 1)[..., None], self.region_size, self.pad)[..., 0]
    member = member == jnp.arange(1, k + 1, dtype=member.dtype)[None, :, None]  # (B, K, A)
    bias = layers.RelativePositionBias(grid.cover, heads, name='rel_pos')()  # (heads, A, A)
    keys = member
    if agr is not None:
      tokens = jnp.concatenate([qkv[:, h * w:, None], tokens], axis=2)  # AGR token first
      keys = jnp.concatenate([jnp.ones((b, k, 1), bool), member], axis=2)
      bias = jnp.pad(bias, ((0, 0), (1, 0), (1, 0)))
      if self.agr_position_bias:
        agr_bias = self.param('agr_bias', layers.normal_002, (heads,))
        border = np.zeros((1 + area, 1 + area), bool)
        border[0, :] = border[:, 0] = True
        bias = bias + agr_bias[:, None, None] * jnp.asarray(border)
    n = tokens.shape[2]
    q, kk, v = jnp.moveaxis(tokens.reshape(b, k, n, 3, heads, c // heads), (3, 4), (0, 3))  # (B,K,heads,n,hd)
    out = layers.dot_product_attention(q * (c // heads)**-0.5, kk, v, bias, keys[:, :, None, None, :],
                                       self.precision)
    out = jnp.swapaxes(out, 2, 3).reshape(b, k, n, c)
    coverage_out = out[:, :, n - area:] * member[..., None].astype(out.dtype)
    attended = fold_coverage(coverage_out, self.region_size, self.pad, grid.nh, grid.nw)[:, :h, :w]
    attended = attended.reshape(b, h * w, c)
    if agr is not None:
      attended = jnp.concatenate([attended, out[:, :, 0]], axis=1)
    y = nn.Dense(c, kernel_init=layers.normal_002, dtype=self.dtype, precision=self.precision, name='proj')(attended)
    y = nn.Dropout(self.drop_rate, deterministic=not train)(y)
    seq = seq + layers.DropPath(self.drop_path)(y, train=train)
    seq = layers.mlp_residual(seq, mlp_ratio=self.mlp_ratio, drop_rate=self.drop_rate, drop_path=self.drop_path,
                              dtype=self.dtype, train=train)

    x = seq[:, :h * w].reshape(b, h, w, c)
    if agr is None:
      return x, None
    agr = seq[:, h * w:]
    if self.propagate and self.inter_region == 'msa':
      attention = layers.MultiHeadAttention(heads, dropout=self.drop_rate, dtype=self.dtype, precision=self.precision,
                                            name='inter_attn')
      agr = layers.pre_norm_block(agr, attention, mlp_ratio=self.mlp_ratio, drop_rate=self.drop_rate,
                                  drop_path=self.drop_path, dtype=self.dtype, train=train, prefix='inter_')
    elif self.propagate and self.inter_region == 'ap':
      agr = jnp.broadcast_to(jnp.mean(agr, axis=1, keepdims=True), agr.shape)
    return x, agr


class SALGStage(nn.Module):
  """Region segmentation of the stage input, then ``len(drop_paths)`` Local-Global blocks.

  Sows ``intermediates/regions``: (B, H, W) int32 region index of each token (row-major over the
  ceil(H/s) x ceil(W/s) window grid), the picture of the paper's Fig. 4.
  """
  num_heads: int
  region_size: int
  pad: int
  drop_paths: Sequence[float]
  inter_region: str = 'ap'
  agr_tokens: bool = True
  agr_init: str = 'token_plus_mean'
  agr_position_bias: bool = True
  mlp_ratio: float = 4.0
  drop_rate: float = 0.0
  dtype: Optional[Any] = None
  precision: Any = None

  @nn.compact
  def __call__(self, x: Array, *, train: bool = False) -> Array:
    h, w, c = x.shape[1:]
    regions, means = segment_regions(x, self.region_size, self.pad)
    self.sow('intermediates', 'regions', regions[:, :h, :w])
    agr = None
    if self.agr_tokens:
      token = self.param('agr_token', layers.normal_002, (c,))
      agr = jnp.broadcast_to(token.astype(x.dtype), means.shape)
      if self.agr_init == 'token_plus_mean':
        agr = agr + means
    depth = len(self.drop_paths)
    for i, rate in enumerate(self.drop_paths):
      x, agr = LocalGlobalBlock(self.num_heads, region_size=self.region_size, pad=self.pad,
                                inter_region=self.inter_region, propagate=i < depth - 1, agr_position_bias=self.agr_position_bias,
                                mlp_ratio=self.mlp_ratio, drop_rate=self.drop_rate,
                                drop_path=rate, dtype=self.dtype, precision=self.precision,
                                name=f'block{i}')(x, agr, regions, train=train)
    return x


class GlobalBlock(layers.PreNormBlock):
  """Plain pre-norm Transformer block over all tokens of (B, N, C): stage 4."""

  @nn.compact
  def __call__(self, x: Array, *, train: bool = False) -> Array:
    attention = layers.MultiHeadAttention(self.num_heads, dropout=self.drop_rate, dtype=self.dtype,
                                          precision=self.precision, name='attn')
    return layers.pre_norm_block(x, attention, mlp_ratio=self.mlp_ratio, drop_rate=self.drop_rate,
                                 drop_path=self.drop_path, dtype=self.dtype, train=train)


# ---------------------------------------------------------------------------------------------
# The network (Sec. III-A, III-D).
# ---------------------------------------------------------------------------------------------

_ACTIVATIONS = {'gelu': layers.gelu, 'relu': nn.relu}


class ConvPatchEmbed(nn.Module):
  """Patch embedding: conv/2 -> norm, act -> conv/2 -> norm, act -> conv/1 (feature transform) -> LayerNorm."""
  embed_dim: int
  kernel: int = 3
  width: int = 48  # channels after the first conv
  norm: str = 'batch'  # 'batch' | 'none' (conv bias instead)
  act: str = 'gelu'
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x: Array, *, train: bool = False) -> Array:
    k, act = self.kernel, _ACTIVATIONS[self.act]
    for i, (features, stride) in enumerate(((self.width, 2), (self.embed_dim, 2))):
      if self.norm == 'batch':
        x = layers.ConvBN(features, k, stride, act=act, kernel_init=layers.torch_default_kernel_init,
                          dtype=self.dtype, name=f'conv{i + 1}')(x, train=train)
      else:
        x = act(layers.Conv2d(features, k, stride, k // 2, use_bias=True, dtype=self.dtype, name=f'conv{i + 1}')(x))
    x = layers.Conv2d(self.embed_dim, k, 1, k // 2, use_bias=True, dtype=self.dtype, name='conv3')(x)
    return layers.layer_norm('norm', dtype=self.dtype)(x)


class SALG(layers.HierarchicalTransformer):
  """SALG; the defaults give SALG-T with average-pooling propagation.

  The last stage is the plain global one; every earlier stage is a SALG stage with coverage pad
  ``coverage_pad[stage]``. Table III's ablations are the switches ``segmentation`` (False: regular
  windows, i.e. coverage pad 0, so each token stays in its own window), ``agr_tokens`` and
  ``inter_region`` (see ``TABLE3_ABLATIONS``).
  """
  embed_dim: int = 96
  depths: Sequence[int] = (2, 2, 6, 2)
  num_heads: Sequence[int] = (3, 6, 12, 24)
  region_size: int = 7
  coverage_pad: Sequence[int] = (1, 2, 1)
  inter_region: str = 'ap'  # 'ap' (Eq. 4) | 'msa' (Eq. 3) | 'none'
  segmentation: bool = True
  agr_tokens: bool = True
  agr_init: str = 'token_plus_mean'  # 'token_plus_mean' | 'token'
  agr_position_bias: bool = True  # per-head scalar bias between the AGR token and every token
  stem_kernel: int = 3
  stem_width: Optional[int] = None  # channels after the first stem conv; None: embed_dim // 2
  stem_norm: str = 'batch'  # 'batch' | 'none' (conv bias instead)
  stem_act: str = 'gelu'  # 'gelu' | 'relu'

  def check_fields(self):
    n = self.name or 'SALG'
    if self.inter_region not in ('ap', 'msa', 'none'):
      raise ValueError(f"{n}: inter_region must be 'ap', 'msa' or 'none', got {self.inter_region!r}")
    if not self.agr_tokens and self.inter_region != 'none':
      raise ValueError(f"{n}: inter-region propagation runs on AGR tokens; use inter_region='none' with "
                       'agr_tokens=False')
    if self.agr_init not in ('token_plus_mean', 'token'):
      raise ValueError(f"{n}: agr_init must be 'token_plus_mean' or 'token', got {self.agr_init!r}")
    if self.stem_norm not in ('batch', 'none') or self.stem_act not in _ACTIVATIONS:
      raise ValueError(f"{n}: stem_norm must be 'batch'|'none' and stem_act one of {sorted(_ACTIVATIONS)}")
    if not all(0 <= p <= self.region_size for p in self.coverage_pad):
      raise ValueError(f'{n}: every coverage pad must lie in [0, region size {self.region_size}], got '
                       f'{self.coverage_pad}')
    if not (len(self.depths) == len(self.num_heads) == len(self.coverage_pad) + 1):
      raise ValueError(f'{n}: need one coverage pad per SALG stage: depths {self.depths}, heads '
                       f'{self.num_heads}, coverage_pad {self.coverage_pad}')

  @nn.compact
  def __call__(self, x: Array, *, train: bool = False):
    self.check_fields()
    if x.ndim != 4 or x.shape[-1] != 3:
      raise InvalidInputSizeError(f'{self.name or "SALG"}: expected NHWC images (B, H, W, 3), got {x.shape}')
    x = ConvPatchEmbed(self.embed_dim, self.stem_kernel, self.stem_width or self.embed_dim // 2, self.stem_norm,
                       self.stem_act, dtype=self.dtype, name='patch_embed')(x.astype(self.dtype), train=train)
    x = nn.Dropout(self.drop_rate, deterministic=not train)(x)
    dpr = layers.drop_path_rates(self.drop_path_rate, self.depths)
    last = len(self.depths) - 1
    features = []
    for s, heads in enumerate(self.num_heads):
      if s > 0:
        x = PatchMerging(2 * x.shape[-1], dtype=self.dtype, name=f'merge{s}')(x)
      if s < last:
        pad = self.coverage_pad[s] if self.segmentation else 0
        x = SALGStage(heads, self.region_size, pad, tuple(dpr[s]), self.inter_region, self.agr_tokens,
                      self.agr_init, self.agr_position_bias, self.mlp_ratio, self.drop_rate, dtype=self.dtype,
                      precision=self.precision, name=f'stage{s + 1}')(x, train=train)
      else:
        b, h, w, c = x.shape
        x = x.reshape(b, h * w, c)
        for i, rate in enumerate(dpr[s]):
          x = GlobalBlock(heads, self.mlp_ratio, self.drop_rate, rate, dtype=self.dtype, precision=self.precision,
                          name=f'stage{s + 1}_block{i}')(x, train=train)
        x = x.reshape(b, h, w, c)
      features.append(x)
    if self.features_only:
      return features
    return layers.classifier_head(x, self.num_classes, norm_name='norm', dtype=self.dtype)


# ---------------------------------------------------------------------------------------------
# Variants (Sec. III-D; parameter counts and top-1 from Tables I and IV).
# ---------------------------------------------------------------------------------------------


def _create_salg(name: str, **kwargs) -> SALG:
  return SALG(name=name, **kwargs)


# SALG has no official code: params are our exact counts (the paper's figures are 6-15% higher, see
# docs/models_salg.md); drop path as Swin's recipe sets it (ST: ours).
_ST = dict(embed_dim=48, depths=(2, 2, 2, 2), num_heads=(2, 3, 6, 12), drop_path_rate=0.1)
_T = dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.2)
_S = dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.3)
_variant = registry.family('salg', _create_salg, interpolation='bicubic', resize_rules=RESIZE_RULES)
_variant('salg_st', **_ST, inter_region='ap', params=5_534_076, paper=dict(params=6.5e6, top1=75.9))
_variant('salg_st_msa', **_ST, inter_region='msa', params=6_119_052, paper=dict(params=7.1e6, top1=76.6))
_variant('salg_t', **_T, inter_region='ap', params=28_415_020, paper=dict(params=32.2e6, top1=82.1))
_variant('salg_t_msa', **_T, inter_region='msa', params=37_844_044, paper=dict(params=42.4e6, top1=82.4))
_variant('salg_s', **_S, inter_region='ap', params=49_750_348, paper=dict(params=53e6, top1=83.0))
