"""Official CoTNet state_dicts (JDAI-CV/CoTNet ``models/cotnet.py`` and ``models/cotnet_hybrid.py``) -> lgvit.

Sequential indices without parameters (ReLU, the shortcut's AvgPool) are absent from the PyTorch
names, hence ``embed.0/1/3/4``, ``se.0/1/3`` and the deep stem's ``conv1.0/1/3/4/6``. Grouped convs
share the contiguous group layout of XLA, so the plain OIHW -> HWIO transpose applies, and every
channel-order rule (heads j*9+t, interleaved CoXt concat, (K2, K1) logit pairs) carries over to NHWC.
"""
from lgvit.convert.core import StateDictConverter, register_converter
from lgvit.convert.resnet import convert_bottleneck_common, convert_plain_stem_and_head


def convert_cot_layer(conv: StateDictConverter, tkey: str, fpath: tuple, context: str = 'full'):
  """``CotLayer``/``CoXtLayer`` (``tkey`` = e.g. ``layer2.0.conv2``) -> :class:`lgvit.models.cotnet.CoTLayer`."""
  conv.conv_bn(f'{tkey}.key_embed.0', f'{tkey}.key_embed.1', fpath + ('key_embed',))
  if context == 'static':
    return
  conv.conv_bn(f'{tkey}.embed.0', f'{tkey}.embed.1', fpath + ('embed_reduce',))
  conv.conv(f'{tkey}.embed.3', fpath + ('embed_expand',))
  conv.norm(f'{tkey}.embed.4', fpath + ('embed_norm',))
  conv.conv_bn(f'{tkey}.conv1x1.0', f'{tkey}.conv1x1.1', fpath + ('value',))
  conv.bn(f'{tkey}.bn', fpath + ('dynamic_bn',))
  if context == 'full':
    conv.conv(f'{tkey}.se.0', fpath + ('fusion_fc1',))
    conv.bn(f'{tkey}.se.1', fpath + ('fusion_bn',))
    conv.conv(f'{tkey}.se.3', fpath + ('fusion_fc2',))


def convert_split_attn(conv: StateDictConverter, tkey: str, fpath: tuple):
  """timm ``SplitAttnConv2d`` (radix 1) -> :class:`lgvit.models.layers.SplitAttnConv`."""
  conv.conv(f'{tkey}.conv', fpath + ('conv',))
  conv.bn(f'{tkey}.bn0', fpath + ('bn0',))
  conv.conv(f'{tkey}.fc1', fpath + ('gate', 'fc1'))
  conv.bn(f'{tkey}.bn1', fpath + ('gate', 'bn1'))
  conv.conv(f'{tkey}.fc2', fpath + ('gate', 'fc2'))


@register_converter('cotnet')
def convert_cotnet(conv: StateDictConverter, model_name, model):
  del model_name
  spatial = model.make_spatial
  if model.stem == 'deep':
    conv.conv_bn('conv1.0', 'conv1.1', ('stem1',))
    conv.conv_bn('conv1.3', 'conv1.4', ('stem2',))
    conv.conv_bn('conv1.6', 'bn1', ('stem3',))
    if conv.has('fc.weight'):
      conv.dense('fc', ('fc',))
  else:
    convert_plain_stem_and_head(conv)
  for s, depth in enumerate(model.stage_depths):
    for b in range(depth):
      tkey, fpath = f'layer{s + 1}.{b}', (f'layer{s + 1}_{b}',)
      convert_bottleneck_common(conv, tkey, fpath, downsample=model.downsample)
      if model.make_output_gate is not None:  # resnet_rs50 (se_resnetd50): timm's SEModule after bn3
        conv.conv(f'{tkey}.se.fc1', fpath + ('se', 'fc1'))
        conv.conv(f'{tkey}.se.fc2', fpath + ('se', 'fc2'))
      kind = spatial.kind(s, b)
      if kind == 'cot':
        convert_cot_layer(conv, f'{tkey}.conv2', fpath + ('conv2',), spatial.context)
      elif kind == 'split_attn':
        convert_split_attn(conv, f'{tkey}.conv2', fpath + ('conv2',))
      else:  # Table-6 plain 3x3 conv, torchvision names
        conv.conv_bn(f'{tkey}.conv2', f'{tkey}.bn2', fpath + ('conv2',))
