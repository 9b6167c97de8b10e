"""NomMer-T at 224 (22.46M params) with the official recipe.

``configs/nommer.py`` with ``variant=t`` fixed (recipe and sources there).

    python main.py --config=configs/nommer_t.py --workdir=...          # ImageNet
    python main.py --config=configs/nommer_t.py:demo --workdir=...     # embedded digits, CPU minutes
"""
from configs import common, nommer


def get_config(arg=None):
  return nommer.get_config(common.with_arg('variant=t', arg))
