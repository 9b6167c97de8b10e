"""The PyTorch side of the side-by-side CPU benchmark: the authors' models, built from local checkouts.

Nothing is vendored: each official repository is a checkout you make yourself, named by an
environment variable (the commits lgvit follows are in docs/official_code.md):

    LGVIT_OFFICIAL_NOMMER=/src/VisualRecognition-NomMer   # TencentYoutuResearch/VisualRecognition-NomMer
    LGVIT_OFFICIAL_COTNET=/src/CoTNet                     # JDAI-CV/CoTNet
    LGVIT_OFFICIAL_LESA=/src/LESA_classification          # Chenglin-Yang/LESA_classification

plus torchvision (ResNet-50) and timm (Swin-T, and the layers NomMer imports). Two patches make the
official code run on a CPU, both exact:

* NomMer's ``sample_gumbel`` moves its noise to CUDA; here it stays on the CPU (same distribution).
* CoTNet's local aggregation is a CuPy CUDA kernel; here it is ``F.unfold`` with the kernel's index
  arithmetic (value channel ``c`` uses weight head ``c mod heads``, zero padding), the form the
  official code's own CPU fallback would take. LESA's ``mmcv.cnn.build_conv_layer`` (used only with
  deformable convs, off in its configs) is replaced by ``nn.Conv2d``.
"""
from __future__ import annotations

import importlib
import os
import sys
import types

import torch
import torch.nn.functional as F
from torch import nn

# lgvit name -> (what the table calls the PyTorch side, official parameter count)
PAIRS = {
    'nommer_t': 'NomMer-T (official)',
    'cotnet50': 'CoTNet-50 (official)',
    'lesa_resnet50': 'LESA-R50 (official)',
    'resnet50': 'torchvision ResNet-50',
    'swin_t': 'timm Swin-T',
}


def _checkout(var: str) -> str:
  path = os.environ.get(var, '')
  if not path or not os.path.isdir(path):
    raise SystemExit(f'{var} must name a local checkout of the official repository (see '
                     f'benchmarks/official/torch_models.py); got {path!r}')
  return path


def _import_from(path: str, module: str, drop: tuple[str, ...] = ()):
  """Imports ``module`` with ``path`` first on sys.path; ``drop`` clears same-named packages first
  (NomMer, CoTNet and LESA all have top-level ``models``/``config``/``lib`` packages)."""
  for name in list(sys.modules):
    if name.split('.')[0] in drop:
      del sys.modules[name]
  sys.path.insert(0, path)
  try:
    return importlib.import_module(module)
  finally:
    sys.path.remove(path)


def nommer_t() -> nn.Module:
  nommer = _import_from(_checkout('LGVIT_OFFICIAL_NOMMER'), 'models.nommer', drop=('models', 'config'))

  def sample_gumbel(shape, eps=1e-20):  # the official one calls .cuda() on the noise
    u = torch.rand(shape)
    return -torch.log(-torch.log(u + eps) + eps)

  nommer.sample_gumbel = sample_gumbel
  # configs/nommer_tiny_attn.yaml over config.py's defaults (window 7, pooling [8, 4])
  return nommer.NomMerAttn(emd_dim=96, depths=[2, 2, 8, 2], num_heads=[2, 2, 4, 8], input_size=224, win_size=7,
                           pool_size=[8, 4], cnn_expansion=[2, 2], drop_path_rate=0.1, num_class=1000)


def unfold_aggregation(value: torch.Tensor, weight: torch.Tensor, kernel_size: int, padding: int) -> torch.Tensor:
  """CoTNet's ``aggregation_zeropad`` (stride 1, dilation 1): value (B, C, H, W), weight
  (B, 1, heads, k*k, H, W) -> (B, C, H, W), channel c weighted by head c mod heads."""
  b, c, h, w = value.shape
  heads, taps = weight.shape[2], weight.shape[3]
  cols = F.unfold(value, kernel_size, padding=padding).view(b, c // heads, heads, taps, h, w)
  return (cols * weight.view(b, 1, heads, taps, h, w)).sum(3).view(b, c, h, w)


class _LocalConvolution(nn.Module):
  def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, pad_mode=0):
    super().__init__()
    if stride != 1 or dilation != 1:
      raise NotImplementedError('CoTNet only uses stride 1, dilation 1')
    self.kernel_size, self.padding = kernel_size, padding

  def forward(self, value, weight):
    return unfold_aggregation(value, weight, self.kernel_size, self.padding)


def _other_variant(attr: str):
  if attr.startswith('__'):  # module protocol lookups (inspect asks for __file__) must fail as usual
    raise AttributeError(attr)
  return _LocalConvolution


def _stub_cupy_layers():
  package = types.ModuleType('cupy_layers')
  package.__path__ = []
  sys.modules['cupy_layers'] = package
  for name in ('aggregation_zeropad', 'aggregation_refpad', 'aggregation_zeropad_dilate', 'aggregation_zeropad_mix',
               'aggregation_zeropad_mix_merge', 'utils'):
    module = types.ModuleType(f'cupy_layers.{name}')
    module.LocalConvolution = _LocalConvolution
    module.__getattr__ = _other_variant  # other layers of the package: unused by cotnet50
    sys.modules[f'cupy_layers.{name}'] = module
    setattr(package, name, module)


def cotnet50() -> nn.Module:
  _stub_cupy_layers()
  cotnet = _import_from(_checkout('LGVIT_OFFICIAL_COTNET'), 'models.cotnet', drop=('models', 'config'))
  return cotnet.cotnet50(num_classes=1000)


class _AttrDict(dict):
  __getattr__ = dict.__getitem__


def _attrs(value):
  if isinstance(value, dict):
    return _AttrDict({k: _attrs(v) for k, v in value.items()})
  return value


def lesa_resnet50() -> nn.Module:
  root = _checkout('LGVIT_OFFICIAL_LESA')
  mmcv = types.ModuleType('mmcv')
  mmcv_cnn = types.ModuleType('mmcv.cnn')
  mmcv_cnn.build_conv_layer = lambda cfg, *args, **kwargs: nn.Conv2d(*args, **kwargs)
  mmcv.cnn = mmcv_cnn
  sys.modules.update({'mmcv': mmcv, 'mmcv.cnn': mmcv_cnn})
  resnet = _import_from(root, 'lib.models.resnet', drop=('lib', 'models', 'config'))
  scope: dict = {}
  with open(os.path.join(root, 'config', 'lesa_resnet.py')) as f:
    exec(f.read(), scope)  # the repository's own config file, a plain dict
  return resnet.resnet50(cfg=_attrs(scope['config']), num_classes=1000)


def resnet50() -> nn.Module:
  import torchvision
  return torchvision.models.resnet50()


def swin_t() -> nn.Module:
  import timm
  return timm.create_model('swin_tiny_patch4_window7_224', num_classes=1000)


def build(name: str) -> nn.Module:
  if name not in PAIRS:
    raise SystemExit(f'no PyTorch counterpart for {name!r}; known: {", ".join(PAIRS)}')
  return globals()[name]()
