"""SE-CoTNetD-152 (at 256) with the official 350-epoch recipe.

``configs/cotnet.py`` with ``variant=se_cotnetd152`` fixed (recipe and sources there).

    python main.py --config=configs/se_cotnetd152.py --workdir=...          # ImageNet
    python main.py --config=configs/se_cotnetd152.py:demo --workdir=...     # embedded digits, CPU minutes
"""
from configs import common, cotnet


def get_config(arg=None):
  return cotnet.get_config(common.with_arg('variant=se_cotnetd152', arg))
