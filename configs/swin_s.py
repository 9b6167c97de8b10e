"""Swin-S, the SALG paper's small baseline, with Swin's recipe.

    python main.py --config=configs/swin_s.py --workdir=gs://bucket/swin_s   # ImageNet-1k, Swin paper: 83.0% top-1
    python main.py --config=configs/swin_s.py:demo --workdir=/tmp/swin_s_demo

Source: Swin paper / official config swin_small_patch4_window7_224: recipe as configs/swin_t.py with
drop path 0.3.
"""
from configs import common
from configs.swin_t import DEMO_MODEL_KWARGS


def get_config(arg=None):
  c = common.base_config('swin_s')
  common.deit_style(c, drop_path=0.3)
  return common.finalize(c, arg, demo_model_kwargs=DEMO_MODEL_KWARGS)
