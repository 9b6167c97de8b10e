"""ResNet-50 (torchvision v1.5) with torchvision's recipe.

``configs/resnet.py`` with ``variant=resnet50`` fixed (recipe and sources there).

    python main.py --config=configs/resnet50.py --workdir=...          # ImageNet
    python main.py --config=configs/resnet50.py:demo --workdir=...     # embedded digits, CPU minutes
"""
from configs import common, resnet


def get_config(arg=None):
  return resnet.get_config(common.with_arg('variant=resnet50', arg))
