"""SE-ResNetD-50 (CoTNet paper, Table 6) with the paper's 100-epoch default setup.

``configs/cotnet.py`` with ``variant=se_resnetd50`` fixed (recipe and sources there).

    python main.py --config=configs/se_resnetd50.py --workdir=...          # ImageNet, paper 79.1%
    python main.py --config=configs/se_resnetd50.py:demo --workdir=...     # embedded digits, CPU minutes
"""
from configs import common, cotnet


def get_config(arg=None):
  return cotnet.get_config(common.with_arg('variant=se_resnetd50', arg))
