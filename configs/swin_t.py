"""Swin-T with Swin's recipe.

``configs/swin.py`` with ``variant=t`` fixed (recipe and sources there).

    python main.py --config=configs/swin_t.py --workdir=...          # ImageNet
    python main.py --config=configs/swin_t.py:demo --workdir=...     # embedded digits, CPU minutes
"""
from configs import common, swin


def get_config(arg=None):
  return swin.get_config(common.with_arg('variant=t', arg))
