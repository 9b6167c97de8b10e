"""SALG-T (inter-region average pooling) with the Swin recipe.

``configs/salg.py`` with ``variant=t`` fixed (recipe and sources there).

    python main.py --config=configs/salg_t.py --workdir=...          # ImageNet
    python main.py --config=configs/salg_t.py:demo --workdir=...     # embedded digits, CPU minutes
"""
from configs import common, salg


def get_config(arg=None):
  return salg.get_config(common.with_arg('variant=t', arg))
