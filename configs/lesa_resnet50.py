"""LESA-ResNet50 with the official recipe.

``configs/lesa.py`` with ``variant=lesa_resnet50`` fixed (recipe and sources there).

    python main.py --config=configs/lesa_resnet50.py --workdir=...          # ImageNet
    python main.py --config=configs/lesa_resnet50.py:demo --workdir=...     # embedded digits, CPU minutes
"""
from configs import common, lesa


def get_config(arg=None):
  return lesa.get_config(common.with_arg('variant=lesa_resnet50', arg))
