"""Swin-ST (C=48, blocks 2-2-2-2), the SALG paper's super-tiny baseline, with Swin's recipe.

    python main.py --config=configs/swin_st.py --workdir=gs://bucket/swin_st   # ImageNet-1k, SALG paper: 73.6%
    python main.py --config=configs/swin_st.py:demo --workdir=/tmp/swin_st_demo

Source: SALG paper Table I (Swin-ST, trained by the SALG authors with Swin's recipe); drop path 0.1 as
for SALG-ST (the paper gives none).
"""
from configs import common
from configs.swin_t import DEMO_MODEL_KWARGS


def get_config(arg=None):
  c = common.base_config('swin_st')
  common.deit_style(c, drop_path=0.1)
  return common.finalize(c, arg, demo_model_kwargs=DEMO_MODEL_KWARGS)
