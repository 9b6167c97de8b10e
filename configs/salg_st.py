"""SALG-ST (inter-region average pooling) with the Swin recipe.

``configs/salg.py`` with ``variant=st`` fixed (recipe and sources there).

    python main.py --config=configs/salg_st.py --workdir=...          # ImageNet
    python main.py --config=configs/salg_st.py:demo --workdir=...     # embedded digits, CPU minutes
"""
from configs import common, salg


def get_config(arg=None):
  return salg.get_config(common.with_arg('variant=st', arg))
