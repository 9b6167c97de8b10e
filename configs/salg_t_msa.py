"""SALG-T with inter-region multi-head self-attention (Table IV) and the paper's Swin recipe.

    python main.py --config=configs/salg_t_msa.py --workdir=gs://bucket/salg_t_msa   # paper: 82.4% top-1
    python main.py --config=configs/salg_t_msa.py:demo --workdir=/tmp/salg_t_msa_demo

Source: SALG paper Table IV; recipe as configs/salg_t.py (drop path 0.2).
"""
from configs import common
from configs.salg_st import DEMO_MODEL_KWARGS


def get_config(arg=None):
  c = common.base_config('salg_t_msa')
  common.deit_style(c, drop_path=0.2)
  return common.finalize(c, arg, demo_model_kwargs=DEMO_MODEL_KWARGS)
