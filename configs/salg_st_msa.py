"""SALG-ST with inter-region multi-head self-attention (Table IV) and the paper's Swin recipe.

    python main.py --config=configs/salg_st_msa.py --workdir=gs://bucket/salg_st_msa   # paper: 76.6% top-1
    python main.py --config=configs/salg_st_msa.py:demo --workdir=/tmp/salg_st_msa_demo

Source: SALG paper Table IV; recipe as configs/salg_st.py (drop path 0.1).
"""
from configs import common
from configs.salg_st import DEMO_MODEL_KWARGS


def get_config(arg=None):
  c = common.base_config('salg_st_msa')
  common.deit_style(c, drop_path=0.1)
  return common.finalize(c, arg, demo_model_kwargs=DEMO_MODEL_KWARGS)
