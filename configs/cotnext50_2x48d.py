"""CoTNeXt-50 (2x48d) with the official 350-epoch recipe.

``configs/cotnet.py`` with ``variant=cotnext50_2x48d`` fixed (recipe and sources there).

    python main.py --config=configs/cotnext50_2x48d.py --workdir=...          # ImageNet
    python main.py --config=configs/cotnext50_2x48d.py:demo --workdir=...     # embedded digits, CPU minutes
"""
from configs import common, cotnet


def get_config(arg=None):
  return cotnet.get_config(common.with_arg('variant=cotnext50_2x48d', arg))
