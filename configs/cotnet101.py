"""CoTNet-101 with the official 350-epoch recipe.

``configs/cotnet.py`` with ``variant=cotnet101`` fixed (recipe and sources there).

    python main.py --config=configs/cotnet101.py --workdir=...          # ImageNet
    python main.py --config=configs/cotnet101.py:demo --workdir=...     # embedded digits, CPU minutes
"""
from configs import common, cotnet


def get_config(arg=None):
  return cotnet.get_config(common.with_arg('variant=cotnet101', arg))
