"""ResNet (torchvision v1.5 layout) and the bottleneck/stage builder that CoTNet and LESA reuse.

A bottleneck is ``conv1 1x1 -> bn1 -> ReLU -> spatial op -> conv3 1x1 -> bn3 -> drop-path -> + shortcut
-> ReLU``. The *spatial op* is whatever replaces torchvision's ``conv2 3x3 -> bn2 -> ReLU``: CoTNet
plugs in a CoT layer, LESA its locally enhanced self-attention, SE-CoTNetD a split-attention conv.
A family passes ``make_spatial(stage, block, width, stride, name) -> nn.Module`` to :class:`ResNet`;
the returned module maps (B, H, W, width) to (B, H/stride, W/stride, width) and is called as
``op(x, train=...)``. An optional ``make_output_gate(stage, block, channels, name) -> nn.Module`` adds a
module after bn3 (before drop-path and the residual add), e.g. the official CoTNet ``resnet_rs``'s SE;
without it (the default) the block has no such module.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from lgvit.models import layers
from lgvit.models.layers import check_min_size
from lgvit.models import registry

SpatialFactory = Callable[..., nn.Module]
GateFactory = Callable[..., nn.Module]  # (stage, block, channels, name) -> module called as gate(y, train=...)


def plain_spatial(groups: int = 1) -> SpatialFactory:
  """torchvision's ``conv2 3x3 (stride in the 3x3) -> bn2 -> ReLU``."""

  def make(stage, block, width, stride, name):
    del stage, block
    return layers.ConvBN(width, 3, stride, groups=groups, name=name)

  return make


class Bottleneck(nn.Module):
  planes: int
  width: int
  strides: int
  spatial: SpatialFactory
  stage: int = 0
  index: int = 0
  expansion: int = 4
  downsample: str = 'conv'  # 'conv': strided 1x1 conv + BN; 'avg': avg-pool 2x2 (ResNet-D) + 1x1 + BN
  drop_path: float = 0.0
  zero_init_last_bn: bool = False
  make_output_gate: Optional[GateFactory] = None  # applied to bn3's output, as 'se'
  dtype: Any = None

  @nn.compact
  def __call__(self, x, *, train: bool):
    out_ch = self.planes * self.expansion
    shortcut = x
    if self.strides != 1 or x.shape[-1] != out_ch:
      if self.downsample == 'avg':
        if self.strides != 1:
          shortcut = layers.avg_pool(shortcut, 2, self.strides, ceil_mode=True, count_include_pad=False)
        shortcut = layers.ConvBN(out_ch, 1, 1, act=None, dtype=self.dtype, name='downsample')(shortcut, train=train)
      else:
        shortcut = layers.ConvBN(out_ch, 1, self.strides, act=None, dtype=self.dtype,
                                 name='downsample')(shortcut, train=train)
    y = layers.ConvBN(self.width, 1, dtype=self.dtype, name='conv1')(x, train=train)
    y = self.spatial(self.stage, self.index, self.width, self.strides, name='conv2')(y, train=train)
    bn3_init = nn.initializers.zeros if self.zero_init_last_bn else nn.initializers.ones
    y = layers.ConvBN(out_ch, 1, act=None, bn_scale_init=bn3_init, dtype=self.dtype, name='conv3')(y, train=train)
    if self.make_output_gate is not None:
      y = self.make_output_gate(self.stage, self.index, out_ch, name='se')(y, train=train)
    y = layers.DropPath(self.drop_path)(y, train=train)
    return nn.relu(y + shortcut)


class ResNet(nn.Module):
  """ResNet family skeleton; defaults give torchvision's ResNet-50."""
  stage_depths: Sequence[int] = (3, 4, 6, 3)
  stage_planes: Sequence[int] = (64, 128, 256, 512)
  stage_strides: Sequence[int] = (1, 2, 2, 2)
  expansion: int = 4
  base_width: int = 64
  cardinality: int = 1
  stem: str = 'plain'  # 'plain': 7x7/2 conv; 'deep': three 3x3 convs (ResNet-C/D)
  stem_width: int = 64
  stem_pool: bool = True
  downsample: str = 'conv'
  make_spatial: Optional[SpatialFactory] = None
  make_output_gate: Optional[GateFactory] = None
  num_classes: int = 1000
  drop_rate: float = 0.0
  drop_path_rate: float = 0.0
  zero_init_last_bn: bool = False
  features_only: bool = False
  dtype: Any = jnp.float32

  def stage_widths(self) -> list[int]:
    return [int(p * (self.base_width / 64.0)) * self.cardinality for p in self.stage_planes]

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    check_min_size(x, 32, self.name or 'ResNet')
    x = x.astype(self.dtype)
    if self.stem == 'plain':
      x = layers.ConvBN(self.stem_width, 7, 2, 3, dtype=self.dtype, name='stem')(x, train=train)
    elif self.stem == 'deep':
      sw = self.stem_width
      x = layers.ConvBN(sw, 3, 2, dtype=self.dtype, name='stem1')(x, train=train)
      x = layers.ConvBN(sw, 3, 1, dtype=self.dtype, name='stem2')(x, train=train)
      x = layers.ConvBN(2 * sw, 3, 1, dtype=self.dtype, name='stem3')(x, train=train)
    else:
      raise ValueError(f"stem must be 'plain' or 'deep', got {self.stem!r}")
    if self.stem_pool:
      x = layers.max_pool(x, 3, 2, 1)
    spatial = self.make_spatial or plain_spatial(self.cardinality)
    dpr = layers.drop_path_rates(self.drop_path_rate, self.stage_depths)
    features = []
    for s, (depth, planes, stride, width) in enumerate(
        zip(self.stage_depths, self.stage_planes, self.stage_strides, self.stage_widths())):
      for b in range(depth):
        x = Bottleneck(planes, width, stride if b == 0 else 1, spatial, stage=s, index=b,
                       expansion=self.expansion, downsample=self.downsample, drop_path=dpr[s][b],
                       zero_init_last_bn=self.zero_init_last_bn, make_output_gate=self.make_output_gate,
                       dtype=self.dtype, name=f'layer{s + 1}_{b}')(x, train=train)
      features.append(x)
    if self.features_only:
      return features
    return layers.classifier_head(x, self.num_classes, train=train, drop_rate=self.drop_rate, name='fc',
                                  kernel_init=layers.torch_default_kernel_init,
                                  bias_init=layers.torch_default_bias_init(x.shape[-1]))


def _create_resnet(name: str, **kwargs) -> ResNet:
  return ResNet(name=name, **kwargs)


# Counts and top-1: torchvision's model cards.
_variant = registry.family('resnet', _create_resnet)
_variant('resnet50', params=25_557_032, paper=dict(params=25.6e6, gmacs=4.1, top1=76.1))
_variant('wide_resnet50_2', base_width=128, params=68_883_240, paper=dict(params=68.9e6, gmacs=11.4, top1=78.5))
_variant('resnet101', stage_depths=(3, 4, 23, 3), params=44_549_160, paper=dict(params=44.5e6, gmacs=7.8, top1=77.4))
