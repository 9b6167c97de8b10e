"""Official LESA_classification state_dicts -> lgvit LESA ResNets.

Every LESA tensor keeps its official channel layout in lgvit (see ``lgvit.models.lesa.BinaryTerm``),
so the conversion is copies and the usual OIHW -> HWIO transposes. The ``flatten_index`` buffers are
recomputed by the model and ignored here. The checkpoint's feature-map size is read off the
relative tables: a stage-3 table of 2L-1 columns means an L = S*S map at image stride 16, i.e.
images of 16*S px.
"""
from __future__ import annotations

import math
import re
from typing import Mapping, Optional

import numpy as np

from lgvit.convert.core import StateDictConverter, register_converter
from lgvit.convert.resnet import convert_bottleneck_common, convert_plain_stem_and_head

# Official layout: stage 3's LESA layers and stage 4's first one all see the image at stride 16.
_STRIDE16_TABLE = re.compile(r'^layer(3\.\d+|4\.0)\.conv2\.relative$')


def image_size_from_checkpoint(sd: Mapping[str, np.ndarray]) -> Optional[int]:
  for key, value in sd.items():
    if _STRIDE16_TABLE.match(key):
      length = (value.shape[1] + 1) // 2
      side = math.isqrt(length)
      if side * side == length:
        return 16 * side
  return None


def convert_lesa_layer(conv: StateDictConverter, tkey: str, fpath: tuple, variant: str):
  """One official ``LESA`` module (``<block>.conv2``) -> an lgvit ``LESA`` layer."""
  binary = fpath + ('binary',)
  conv.dense(f'{tkey}.qkv_transform', binary + ('qkv',))
  conv.bn(f'{tkey}.bn_qkv', binary + ('qkv_bn',))
  relative = f'{tkey}.relative'
  if conv.has(relative):
    conv.put(binary + ('relative',), conv.take(relative))
  else:
    conv.missing.append(relative)  # reported with every other problem
  conv.bn(f'{tkey}.bn_similarity', binary + ('similarity_bn',))
  conv.bn(f'{tkey}.bn_output', binary + ('output_bn',))
  conv.ignore(rf'^{re.escape(tkey)}\.flatten_index$')
  if variant == 'sa':
    return
  unary = fpath + ('unary',)
  conv.conv(f'{tkey}.x_transform.0', unary + ('conv3x3',))
  if conv.has(f'{tkey}.x_transform.1.weight'):
    conv.conv(f'{tkey}.x_transform.1', unary + ('conv1x1',))
  conv.bn(f'{tkey}.bn_x', unary + ('bn',))
  if variant == 'static':
    return
  fusion = fpath + ('fusion',)
  conv.conv(f'{tkey}.reasoning.1', fusion + ('fc1',))
  conv.bn(f'{tkey}.reasoning.2', fusion + ('bn1',))
  conv.conv(f'{tkey}.projection.0', fusion + ('fc2',))
  conv.bn(f'{tkey}.projection.1', fusion + ('bn2',))


@register_converter('lesa', image_size_hint=image_size_from_checkpoint)
def convert_lesa(conv: StateDictConverter, model_name, model):
  del model_name
  layout = model.make_spatial
  convert_plain_stem_and_head(conv)
  for s, depth in enumerate(model.stage_depths):
    for b in range(depth):
      tkey, fpath = f'layer{s + 1}.{b}', (f'layer{s + 1}_{b}',)
      convert_bottleneck_common(conv, tkey, fpath)
      if layout.is_lesa(s, b):
        convert_lesa_layer(conv, f'{tkey}.conv2', fpath + ('conv2',), layout.variant)
      else:
        conv.conv_bn(f'{tkey}.conv2', f'{tkey}.bn2', fpath + ('conv2',))
