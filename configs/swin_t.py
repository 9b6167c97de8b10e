"""Swin-T, the SALG paper's tiny baseline, with Swin's recipe.

    python main.py --config=configs/swin_t.py --workdir=gs://bucket/swin_t   # ImageNet-1k, Swin paper: 81.3% top-1
    python main.py --config=configs/swin_t.py:demo --workdir=/tmp/swin_t_demo

Source: Swin paper / official config swin_tiny_patch4_window7_224: 300 epochs (20 warm-up), AdamW 5e-4
per 512 images (batch 1024), wd 0.05, drop path 0.2, RandAugment m9, Mixup 0.8 / CutMix 1.0, label
smoothing 0.1, random erasing 0.25, grad clip 5, eval crop 0.875 bicubic.

Demo: 32px digits give stage maps 8, 4, 2, 1; windows of 4 keep regular and shifted windows in stage 1.
"""
from configs import common

DEMO_MODEL_KWARGS = dict(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window=4, drop_path_rate=0.1)


def get_config(arg=None):
  c = common.base_config('swin_t')
  common.deit_style(c, drop_path=0.2)
  return common.finalize(c, arg, demo_model_kwargs=DEMO_MODEL_KWARGS)
