"""SALG-T with inter-region MSA and the Swin recipe.

``configs/salg.py`` with ``variant=t_msa`` fixed (recipe and sources there).

    python main.py --config=configs/salg_t_msa.py --workdir=...          # ImageNet
    python main.py --config=configs/salg_t_msa.py:demo --workdir=...     # embedded digits, CPU minutes
"""
from configs import common, salg


def get_config(arg=None):
  return salg.get_config(common.with_arg('variant=t_msa', arg))
