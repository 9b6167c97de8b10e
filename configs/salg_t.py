"""SALG-T (C=96, blocks 2-2-6-2, inter-region average pooling) with the paper's Swin recipe.

    python main.py --config=configs/salg_t.py --workdir=gs://bucket/salg_t   # ImageNet-1k, paper: 82.1% top-1
    python main.py --config=configs/salg_t.py:demo --workdir=/tmp/salg_t_demo

Source: SALG paper Sec. IV-A and Tables I/IV; docs/official_code.md (SALG). 300 epochs (20 warm-up), AdamW
5e-4 per 512 images (Swin's linear rule; the paper's "batch 128" is Swin's per-GPU batch), wd 0.05,
drop path 0.2, RandAugment m9, Mixup 0.8 / CutMix 1.0, label smoothing 0.1, random erasing 0.25,
grad clip 5, eval crop 0.875 bicubic.
"""
from configs import common
from configs.salg_st import DEMO_MODEL_KWARGS


def get_config(arg=None):
  c = common.base_config('salg_t')
  common.deit_style(c, drop_path=0.2)
  return common.finalize(c, arg, demo_model_kwargs=DEMO_MODEL_KWARGS)
