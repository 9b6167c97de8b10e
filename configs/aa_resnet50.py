"""AA-ResNet-50 (Attention Augmentation, Bello et al. 2019) in the LESA paper's Table 6 setting, with the LESA recipe.

``configs/lesa.py`` with ``variant=aa_resnet50`` fixed (recipe and sources there).

    python main.py --config=configs/aa_resnet50.py --workdir=...          # ImageNet
    python main.py --config=configs/aa_resnet50.py:demo --workdir=...     # embedded digits, CPU minutes
"""
from configs import common, lesa


def get_config(arg=None):
  return lesa.get_config(common.with_arg('variant=aa_resnet50', arg))
