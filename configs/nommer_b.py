"""NomMer-B at 224 (73.40M params) with the official recipe.

``configs/nommer.py`` with ``variant=b`` fixed (recipe and sources there).

    python main.py --config=configs/nommer_b.py --workdir=...          # ImageNet
    python main.py --config=configs/nommer_b.py:demo --workdir=...     # embedded digits, CPU minutes
"""
from configs import common, nommer


def get_config(arg=None):
  return nommer.get_config(common.with_arg('variant=b', arg))
