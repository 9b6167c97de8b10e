"""Static LESA-ResNet50 (no dynamic fusion) with the LESA recipe.

``configs/lesa.py`` with ``variant=static_lesa_resnet50`` fixed (recipe and sources there).

    python main.py --config=configs/static_lesa_resnet50.py --workdir=...          # ImageNet
    python main.py --config=configs/static_lesa_resnet50.py:demo --workdir=...     # embedded digits, CPU minutes
"""
from configs import common, lesa


def get_config(arg=None):
  return lesa.get_config(common.with_arg('variant=static_lesa_resnet50', arg))
