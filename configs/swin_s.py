"""Swin-S with Swin's recipe.

``configs/swin.py`` with ``variant=s`` fixed (recipe and sources there).

    python main.py --config=configs/swin_s.py --workdir=...          # ImageNet
    python main.py --config=configs/swin_s.py:demo --workdir=...     # embedded digits, CPU minutes
"""
from configs import common, swin


def get_config(arg=None):
  return swin.get_config(common.with_arg('variant=s', arg))
