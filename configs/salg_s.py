"""SALG-S (C=96, blocks 2-2-18-2, inter-region average pooling) with the paper's Swin recipe.

    python main.py --config=configs/salg_s.py --workdir=gs://bucket/salg_s   # ImageNet-1k, paper: 83.0% top-1
    python main.py --config=configs/salg_s.py:demo --workdir=/tmp/salg_s_demo

Source: SALG paper Table I; recipe as configs/salg_t.py with Swin-S's drop path 0.3.
"""
from configs import common
from configs.salg_st import DEMO_MODEL_KWARGS


def get_config(arg=None):
  c = common.base_config('salg_s')
  common.deit_style(c, drop_path=0.3)
  return common.finalize(c, arg, demo_model_kwargs=DEMO_MODEL_KWARGS)
