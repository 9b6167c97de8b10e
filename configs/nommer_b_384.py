"""NomMer-B fine-tuned at 384 from the 224 run.

``configs/nommer.py`` with ``variant=b,res=384`` fixed (recipe and sources there).

    python main.py --config=configs/nommer_b_384.py --workdir=...          # ImageNet
    python main.py --config=configs/nommer_b_384.py:demo --workdir=...     # embedded digits, CPU minutes
"""
from configs import common, nommer


def get_config(arg=None):
  return nommer.get_config(common.with_arg('variant=b,res=384', arg))
