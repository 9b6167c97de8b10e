"""SA-WRN50 (LESA's binary term alone on Wide-ResNet-50-2) with the LESA recipe.

``configs/lesa.py`` with ``variant=sa_wrn50`` fixed (recipe and sources there).

    python main.py --config=configs/sa_wrn50.py --workdir=...          # ImageNet
    python main.py --config=configs/sa_wrn50.py:demo --workdir=...     # embedded digits, CPU minutes
"""
from configs import common, lesa


def get_config(arg=None):
  return lesa.get_config(common.with_arg('variant=sa_wrn50', arg))
