"""SALG-ST/T/S (inter-region average pooling, or MSA: ``*_msa``) with the paper's Swin recipe.

    python main.py --config=configs/salg.py:variant=t --workdir=gs://bucket/salg_t          # paper 82.1% top-1
    python main.py --config=configs/salg.py:variant=st,demo --workdir=/tmp/salg_st_demo    # digits, >= 0.95 top-1

Source: SALG paper Sec. IV-A and Tables I/IV (docs/official_code.md, SALG): 300 epochs (20 warm-up),
AdamW 5e-4 per 512 images (Swin's linear rule; the paper's "batch 128" is Swin's per-GPU batch),
wd 0.05, RandAugment m9, Mixup 0.8 / CutMix 1.0, label smoothing 0.1, random erasing 0.25, grad
clip 5, eval crop 0.875 bicubic. Drop path 0.2 (T) and 0.3 (S) as Swin; the paper gives none for
ST, we use 0.1 (DeiT-T, of ST's size, uses 0.1). Paper top-1: ST 75.9 / 76.6 (MSA), T 82.1 / 82.4,
S 83.0.

Demo: 32px digits give stage maps 8, 4, 2, 1. With the paper's 7x7 region windows every stage would be
a single region, so the demo uses 2x2 windows (coverage pads 1, 2, 1 as in the paper): 16 regions in
stage 1, 4 in stage 2, 1 in stage 3; every block type (segmentation, masked intra-region attention
with AGR tokens, inter-region propagation, global stage 4) stays.
"""
from configs import common
from lgvit import schema

#: variant -> drop path.
DROP_PATH = {'st': 0.1, 'st_msa': 0.1, 't': 0.2, 't_msa': 0.2, 's': 0.3}
DEMO_MODEL = dict(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), region_size=2, coverage_pad=(1, 2, 1),
                  drop_path_rate=0.1)


def get_config(arg=None):
  args = common.parse_arg(arg, variant='t', demo=False, demo_recipe=False)
  c = schema.base_config(f'salg_{args.variant}')
  common.deit_style(c, drop_path=common.choose(DROP_PATH, args.variant, 'SALG variant'))
  return common.finalize(c, args, demo_model_kwargs=DEMO_MODEL)
