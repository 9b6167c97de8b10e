"""UperNet semantic segmentation (Xiao et al., ECCV 2018) over any registered backbone.

Reads like mmsegmentation's ``UPerHead`` + ``FCNHead`` of the UperNet-for-Swin configs that the
NomMer paper (Sec. 4.3, Table 3) used; the layout, the numbers and what differs are in
``docs/segmentation.md``:

* backbone: the registered classification model built with ``features_only=True`` (its classifier
  is never created), optionally followed by a LayerNorm per stage output (Swin's segmentation
  backbone adds ``norm0..norm3``; the transformer entries switch it on);
* PPM on the last stage: for each pool scale (1, 2, 3, 6) adaptive average pool -> 1x1 conv+BN+ReLU
  -> bilinear upsample; concat with the stage map -> 3x3 conv+BN+ReLU (the ``bottleneck``);
* FPN: 1x1 lateral conv+BN+ReLU per earlier stage, top-down bilinear fusion, 3x3 conv+BN+ReLU per
  fused level; the four levels upsampled to stride 4 and concatenated -> 3x3 ``fpn_bottleneck``;
* dropout 0.1 -> 1x1 classifier (bias, init N(0, 0.01)), logits at stride 4 in float32;
* auxiliary FCN head on stage 3: 3x3 conv 256 + BN + ReLU, dropout 0.1, 1x1 classifier.

``__call__(x, train=False)`` returns the (B, H/4, W/4, classes) logits; ``train=True`` returns
``(logits, aux_logits)`` (``aux_logits`` is None without the auxiliary head). Upsampling to the
image size belongs to the loss and the evaluation (``lgvit.segmentation``), as in mmseg.
Input sides must be multiples of ``size_divisor`` (the inference helpers pad to it).
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lgvit.errors import InvalidInputSizeError
from lgvit.models import layers, registry

Array = jax.Array

#: mmcv ConvModule's init: kaiming_normal(fan_out, relu), bias-free before a BatchNorm.
_conv_init = layers.kaiming_normal_fan_out
#: mmseg BaseDecodeHead.conv_seg init: normal(std=0.01), bias 0.
_classifier_init = nn.initializers.normal(0.01)


class ConvBNReLU(nn.Module):
  """mmcv ``ConvModule(conv, BN, ReLU)``: :class:`layers.ConvBN` with mmcv's init."""
  features: int
  kernel_size: int = 1
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    return layers.ConvBN(self.features, self.kernel_size, kernel_init=_conv_init, dtype=self.dtype,
                         name='unit')(x, train=train)


def classify(x: Array, num_classes: int, dropout: float, *, train: bool, name: str) -> Array:
  """mmseg ``cls_seg``: ``Dropout2d`` (whole channels per image) then a 1x1 conv with bias, in float32."""
  x = nn.Dropout(dropout, broadcast_dims=(1, 2), deterministic=not train)(x)
  return layers.Conv2d(num_classes, 1, use_bias=True, kernel_init=_classifier_init,
                       bias_init=nn.initializers.zeros, dtype=jnp.float32, name=name)(x.astype(jnp.float32))


class UperHead(nn.Module):
  """PPM + FPN decode head over four stage maps (any strides; LESA's last two share stride 16)."""
  num_classes: int
  channels: int = 512
  pool_scales: Sequence[int] = (1, 2, 3, 6)
  dropout: float = 0.1
  dtype: Any = None

  @nn.compact
  def __call__(self, features: Sequence[Array], *, train: bool) -> Array:
    top = features[-1]
    pooled = [top]
    for scale in self.pool_scales:
      y = layers.adaptive_avg_pool(top, scale)
      y = ConvBNReLU(self.channels, 1, self.dtype, name=f'ppm{scale}')(y, train=train)
      pooled.append(layers.resize_bilinear(y, top.shape[1:3]).astype(top.dtype))
    laterals = [ConvBNReLU(self.channels, 1, self.dtype, name=f'lateral{i}')(f, train=train)
                for i, f in enumerate(features[:-1])]
    laterals.append(ConvBNReLU(self.channels, 3, self.dtype, name='bottleneck')(
        jnp.concatenate(pooled, axis=-1), train=train))
    for i in range(len(laterals) - 1, 0, -1):  # top-down: each level adds the upsampled coarser one
      laterals[i - 1] = laterals[i - 1] + layers.resize_bilinear(laterals[i], laterals[i - 1].shape[1:3])
    outs = [ConvBNReLU(self.channels, 3, self.dtype, name=f'fpn{i}')(lat, train=train)
            for i, lat in enumerate(laterals[:-1])] + [laterals[-1]]
    size = outs[0].shape[1:3]
    fused = jnp.concatenate([layers.resize_bilinear(o, size) for o in outs], axis=-1)
    fused = ConvBNReLU(self.channels, 3, self.dtype, name='fpn_bottleneck')(fused, train=train)
    return classify(fused, self.num_classes, self.dropout, train=train, name='classifier')


class FCNHead(nn.Module):
  """mmseg ``FCNHead(num_convs=1, concat_input=False)``: the auxiliary head."""
  num_classes: int
  channels: int = 256
  dropout: float = 0.1
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    x = ConvBNReLU(self.channels, 3, self.dtype, name='conv')(x, train=train)
    return classify(x, self.num_classes, self.dropout, train=train, name='classifier')


class UperNet(nn.Module):
  """Backbone features -> [LayerNorm per stage] -> UperHead (+ FCNHead on stage ``aux_stage`` in training)."""
  backbone: nn.Module  # a registered model with features_only=True; its variables live under 'backbone'
  num_classes: int = 150
  channels: int = 512
  pool_scales: Sequence[int] = (1, 2, 3, 6)
  dropout: float = 0.1
  aux_channels: int = 256  # 0: no auxiliary head
  aux_stage: int = 2  # 0-based: stage 3
  feature_norm: bool = False  # LayerNorm on every stage output (Swin's segmentation backbone)
  size_divisor: int = 32
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, train: bool = False):
    h, w = x.shape[1:3]
    if h % self.size_divisor or w % self.size_divisor:
      d = self.size_divisor
      raise InvalidInputSizeError(
          f'{self.name or "UperNet"}: input {h}x{w} is not a multiple of {d}; pad it to '
          f'{-(-h // d) * d}x{-(-w // d) * d} (lgvit.segmentation.pad_to_multiple does, and the inference helpers '
          'crop the logits back).')
    features = list(self.backbone(x, train=train))
    if self.feature_norm:
      features = [layers.layer_norm(f'norm{i}', dtype=self.dtype)(f) for i, f in enumerate(features)]
    logits = UperHead(self.num_classes, self.channels, self.pool_scales, self.dropout, self.dtype,
                      name='decode_head')(features, train=train)
    aux = None
    if self.aux_channels:  # also in eval, so that init creates its variables; XLA drops the unused result
      aux = FCNHead(self.num_classes, self.aux_channels, self.dropout, self.dtype,
                    name='auxiliary_head')(features[self.aux_stage], train=train)
    return (logits, aux) if train else logits


def _create_upernet(name: str, *, backbone: str, backbone_kwargs: Optional[Mapping[str, Any]] = None,
                    drop_path_rate: Optional[float] = None, dtype: Any = jnp.float32, **head) -> UperNet:
  """``backbone`` is a registered name; ``backbone_kwargs`` its constructor overrides (a demo's
  shrunk widths), ``drop_path_rate`` its stochastic depth (the entry's rate)."""
  kwargs = dict(backbone_kwargs or {})
  if drop_path_rate is not None:
    kwargs['drop_path_rate'] = drop_path_rate
  net = registry.create_model(backbone, features_only=True, dtype=dtype, **kwargs)
  return UperNet(backbone=net, dtype=dtype, name=name, **head)


# params: exact at 150 classes and 512x512 (aux head included); paper: NomMer Table 3 (params, GFLOPs
# at 512x2048, single-scale and multi-scale+flip mIoU). docs/segmentation.md explains the gaps.
_PAD = dict(pad_windows=True)  # Swin/NomMer: 512 / 4 = 128 is not a multiple of the 7x7 windows
_variant = registry.family('upernet', _create_upernet, task='segmentation', input_size=512, num_classes=150)
# Backbone drop path: NomMer's own rates (0.1/0.3/0.5 for T/S/B, the paper's ImageNet and COCO settings and the
# official nommer_*_attn.yaml), Swin's mmseg config 0.3, SALG-T 0.2 (lgvit's choice: no official code).
_variant('upernet_nommer_t', backbone='nommer_t', backbone_kwargs=_PAD, drop_path_rate=0.1, feature_norm=True,
         params=54_427_264, paper=dict(params=54e6, gflops=954, miou=46.1, miou_ms=47.3))
_variant('upernet_nommer_s', backbone='nommer_s', backbone_kwargs=_PAD, drop_path_rate=0.3, feature_norm=True,
         params=73_503_848, paper=dict(params=73e6, gflops=1056, miou=48.7, miou_ms=50.4))
_variant('upernet_nommer_b', backbone='nommer_b', backbone_kwargs=_PAD, drop_path_rate=0.5, feature_norm=True,
         params=107_340_328, paper=dict(params=107e6, gflops=1220, miou=50.0, miou_ms=51.0))
_variant('upernet_swin_t', backbone='swin_t', backbone_kwargs=_PAD, drop_path_rate=0.3, feature_norm=True,
         params=59_941_862, paper=dict(params=60e6, gflops=945, miou=44.5, miou_ms=45.8))
_variant('upernet_swin_s', backbone='swin_s', backbone_kwargs=_PAD, drop_path_rate=0.3, feature_norm=True,
         params=81_259_766, paper=dict(params=81e6, gflops=1038, miou=47.6, miou_ms=49.5))
_variant('upernet_salg_t', backbone='salg_t', drop_path_rate=0.2, feature_norm=True, params=60_068_528)
_variant('upernet_cotnet50', backbone='cotnet50', params=63_162_260)
_variant('upernet_se_cotnetd50', backbone='se_cotnetd50', params=64_047_628)
# LESA: the official detection code's 2-D relative position embedding (docs/segmentation.md), so that one set
# of weights runs at every input size; its tables and the BNs around them start fresh from an ImageNet run.
_variant('upernet_lesa_resnet50', backbone='lesa_resnet50', backbone_kwargs=dict(lesa_position='axial'),
         params=64_458_508)
