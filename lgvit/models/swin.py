"""Swin Transformer (Liu et al., ICCV 2021): the window-attention baseline SALG is measured against.

Layout and initialisation follow the official code / timm (28,288,354 parameters for Swin-T at 1000
classes): a 4x4/4 linear patch embedding with LayerNorm, four stages of pre-norm blocks that alternate
regular and cyclically shifted 7x7 windows (shared ``layers.WindowAttention``), Swin patch merging
between stages, then LayerNorm, global average pool and a linear head.

Swin-ST is the SALG paper's "super-tiny" baseline: C=48 and two blocks per stage. The paper sets the
feature dimension per head to 32; 48 is not a multiple of 32, so stage 1 gets the head count whose
head width is closest to 32 (two heads of 24); the other stages have exactly 32 per head.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from lgvit.errors import InvalidInputSizeError
from lgvit.models import layers
from lgvit.models import registry

Array = Any


def stage_window(h: int, w: int, window: int) -> tuple[int, int]:
  """Swin's rule: a map no larger than the window is one window and is never shifted.

  Returns (window, shift) for the stage's blocks with odd index.
  """
  if min(h, w) <= window:
    return min(h, w), 0
  return window, window // 2


def _size_is_valid(size: int, patch: int, window: int, num_stages: int) -> bool:
  if size % (patch * 2**(num_stages - 1)):
    return False
  for s in range(num_stages):
    res = size // (patch * 2**s)
    win, _ = stage_window(res, res, window)
    if res % win:
      return False
  return True


def nearest_valid_sizes(size: int, patch: int = 4, window: int = 7, num_stages: int = 4) -> list[int]:
  """The closest image sides below and above ``size`` that Swin can run without padding."""
  step = patch * 2**(num_stages - 1)
  below = next((s for s in range(size - size % step, 0, -step) if _size_is_valid(s, patch, window, num_stages)),
               None)
  above = next(s for s in range(size + step - size % step, size + 64 * step * window, step)
               if _size_is_valid(s, patch, window, num_stages))
  return [s for s in (below, above) if s is not None]


class PatchMerging(nn.Module):
  """Swin patch merging: concat each 2x2 neighbourhood (x00, x10, x01, x11) -> LayerNorm -> Linear 4C->out.

  An odd side is zero-padded at the bottom/right first (the detection variant's rule); the Swin
  classifier never meets one because its input sizes are validated.
  """
  out_features: int
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    _, h, w, _ = x.shape
    if h % 2 or w % 2:
      x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
    x = jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], axis=-1)
    x = layers.layer_norm('norm', dtype=self.dtype)(x)
    return nn.Dense(self.out_features, use_bias=False, kernel_init=layers.normal_002, dtype=self.dtype,
                    name='reduction')(x)


class SwinBlock(layers.PreNormBlock, kw_only=True):
  """x + DropPath(W-MSA/SW-MSA(LN(x))), then x + DropPath(MLP(LN(x))), on (B, H, W, C)."""
  window: int
  shift: int = 0

  @nn.compact
  def __call__(self, x: Array, *, train: bool = False) -> Array:
    attention = layers.WindowAttention(self.num_heads, self.window, self.shift, dtype=self.dtype,
                                       precision=self.precision, name='attn')
    return layers.pre_norm_block(x, attention, mlp_ratio=self.mlp_ratio, drop_rate=self.drop_rate,
                                 attention_drop_rate=self.drop_rate, drop_path=self.drop_path, dtype=self.dtype,
                                 train=train)


class SwinTransformer(layers.HierarchicalTransformer):
  """Swin Transformer; the defaults give Swin-T."""
  embed_dim: int = 96
  depths: Sequence[int] = (2, 2, 6, 2)
  num_heads: Sequence[int] = (3, 6, 12, 24)
  window: int = 7
  patch_size: int = 4
  # Pad the maps that the windows do not tile (layers.WindowAttention), as Swin's segmentation
  # backbone does; then any side divisible by the total stride runs (UperNet at 512, docs/segmentation.md).
  pad_windows: bool = False

  def check_input(self, x: Array):
    if x.ndim != 4 or x.shape[-1] != 3:
      raise InvalidInputSizeError(f'{self.name or "Swin"}: expected NHWC images (B, H, W, 3), got {x.shape}.')
    stride = self.patch_size * 2**(len(self.depths) - 1)
    for side in x.shape[1:3]:
      if self.pad_windows and side % stride:
        raise InvalidInputSizeError(
            f'{self.name or "Swin"}: image side {side} is not a multiple of the total stride {stride}; '
            f'pad or crop to {side // stride * stride or stride} or {(side // stride + 1) * stride}.')
      if not self.pad_windows and not _size_is_valid(side, self.patch_size, self.window, len(self.depths)):
        sizes = nearest_valid_sizes(side, self.patch_size, self.window, len(self.depths))
        raise InvalidInputSizeError(
            f'{self.name or "Swin"}: image side {side} does not split into {self.window}x{self.window} windows '
            f'at every stage (patch {self.patch_size}, {len(self.depths) - 1} merges); nearest valid sides: '
            f'{sizes}. Resize/crop to one of them, or change window=.')

  @nn.compact
  def __call__(self, x: Array, *, train: bool = False):
    self.check_input(x)
    x = x.astype(self.dtype)
    x = layers.Conv2d(self.embed_dim, self.patch_size, self.patch_size, use_bias=True, dtype=self.dtype,
                      name='patch_embed')(x)
    x = layers.layer_norm('patch_norm', dtype=self.dtype)(x)
    x = nn.Dropout(self.drop_rate, deterministic=not train)(x)
    dpr = layers.drop_path_rates(self.drop_path_rate, self.depths)
    features = []
    for s, (depth, heads) in enumerate(zip(self.depths, self.num_heads)):
      if s > 0:
        x = PatchMerging(2 * x.shape[-1], dtype=self.dtype, name=f'merge{s}')(x)
      window, shift = stage_window(x.shape[1], x.shape[2], self.window)
      for b in range(depth):
        x = SwinBlock(heads, self.mlp_ratio, self.drop_rate, dpr[s][b], window=window, shift=shift if b % 2 else 0,
                      dtype=self.dtype, precision=self.precision, name=f'stage{s + 1}_{b}')(x, train=train)
      features.append(x)
    if self.features_only:
      return features
    return layers.classifier_head(x, self.num_classes, norm_name='norm', dtype=self.dtype)


#: init_from at another input size (window): the relative position tables are resampled.
RESIZE_RULES = {'relative_position_bias_table': layers.resize_relative_position_table}


def _create_swin(name: str, **kwargs) -> SwinTransformer:
  return SwinTransformer(name=name, **kwargs)


# Counts of the official code (Swin-T/S) and the SALG paper's Swin-ST row.
_variant = registry.family('swin', _create_swin, interpolation='bicubic', resize_rules=RESIZE_RULES)
_variant('swin_st', embed_dim=48, depths=(2, 2, 2, 2), num_heads=(2, 3, 6, 12), drop_path_rate=0.1, params=5_504_630,
         paper=dict(params=5.6e6, top1=73.6))
_variant('swin_t', drop_path_rate=0.2, params=28_288_354, paper=dict(params=28.3e6, gmacs=4.5, top1=81.3))
_variant('swin_s', depths=(2, 2, 18, 2), drop_path_rate=0.3, params=49_606_258,
         paper=dict(params=49.6e6, gmacs=8.7, top1=83.0))
