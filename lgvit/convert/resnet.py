"""torchvision ResNet / Wide-ResNet state_dicts -> lgvit ``ResNet``."""
from lgvit.convert.core import StateDictConverter, register_converter


def convert_bottleneck_common(conv: StateDictConverter, tkey: str, fpath: tuple, downsample: str = 'conv'):
  """conv1/bn1, conv3/bn3 and the projection shortcut of a torchvision-style bottleneck."""
  conv.conv_bn(f'{tkey}.conv1', f'{tkey}.bn1', fpath + ('conv1',))
  conv.conv_bn(f'{tkey}.conv3', f'{tkey}.bn3', fpath + ('conv3',))
  if downsample == 'avg':  # ResNet-D: downsample.0 is the pool
    if conv.has(f'{tkey}.downsample.1.weight'):
      conv.conv_bn(f'{tkey}.downsample.1', f'{tkey}.downsample.2', fpath + ('downsample',))
  elif conv.has(f'{tkey}.downsample.0.weight'):
    conv.conv_bn(f'{tkey}.downsample.0', f'{tkey}.downsample.1', fpath + ('downsample',))


def convert_plain_stem_and_head(conv: StateDictConverter):
  conv.conv_bn('conv1', 'bn1', ('stem',))
  if conv.has('fc.weight'):
    conv.dense('fc', ('fc',))


@register_converter('resnet')
def convert_resnet(conv: StateDictConverter, model_name, model):
  del model_name
  convert_plain_stem_and_head(conv)
  for s, depth in enumerate(model.stage_depths):
    for b in range(depth):
      tkey, fpath = f'layer{s + 1}.{b}', (f'layer{s + 1}_{b}',)
      convert_bottleneck_common(conv, tkey, fpath)
      conv.conv_bn(f'{tkey}.conv2', f'{tkey}.bn2', fpath + ('conv2',))
