"""NomMer-S at 224 (41.53M params) with the official recipe.

``configs/nommer.py`` with ``variant=s`` fixed (recipe and sources there).

    python main.py --config=configs/nommer_s.py --workdir=...          # ImageNet
    python main.py --config=configs/nommer_s.py:demo --workdir=...     # embedded digits, CPU minutes
"""
from configs import common, nommer


def get_config(arg=None):
  return nommer.get_config(common.with_arg('variant=s', arg))
