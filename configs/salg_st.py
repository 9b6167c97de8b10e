"""SALG-ST (C=48, blocks 2-2-2-2, inter-region average pooling) with the paper's Swin recipe.

    python main.py --config=configs/salg_st.py --workdir=gs://bucket/salg_st   # ImageNet-1k, paper: 75.9% top-1
    python main.py --config=configs/salg_st.py:demo --workdir=/tmp/salg_st_demo   # digits, >= 0.95 top-1

Source: SALG paper Sec. IV-A and Table I; docs/official_code.md (SALG). Recipe as configs/salg_t.py; the paper
gives no drop path for ST, we use 0.1 (Swin uses 0.2 at T; DeiT-T, of ST's size, uses 0.1).

Demo: 32px digits give stage maps 8, 4, 2, 1. With the paper's 7x7 region windows every stage would be
a single region, so the demo uses 2x2 windows (coverage pads 1, 2, 1 as in the paper): 16 regions in
stage 1, 4 in stage 2, 1 in stage 3; every block type (segmentation, masked intra-region attention
with AGR tokens, inter-region propagation, global stage 4) stays.
"""
from configs import common

DEMO_MODEL_KWARGS = dict(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), region_size=2,
                         coverage_pad=(1, 2, 1), drop_path_rate=0.1)


def get_config(arg=None):
  c = common.base_config('salg_st')
  common.deit_style(c, drop_path=0.1)
  return common.finalize(c, arg, demo_model_kwargs=DEMO_MODEL_KWARGS)
