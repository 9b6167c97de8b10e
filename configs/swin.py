"""Swin-ST/T/S, SALG's baselines, with Swin's recipe.

    python main.py --config=configs/swin.py:variant=t --workdir=gs://bucket/swin_t   # Swin paper: 81.3% top-1
    python main.py --config=configs/swin.py:variant=t,demo --workdir=/tmp/swin_t_demo

Source: Swin paper / official config swin_tiny_patch4_window7_224: 300 epochs (20 warm-up), AdamW 5e-4
per 512 images (batch 1024), wd 0.05, RandAugment m9, Mixup 0.8 / CutMix 1.0, label smoothing 0.1,
random erasing 0.25, grad clip 5, eval crop 0.875 bicubic; drop path 0.2 (T) and 0.3 (S). Swin-ST
(C=48, blocks 2-2-2-2) is the SALG paper's super-tiny baseline (Table I, 73.6%), trained by its
authors with Swin's recipe; drop path 0.1 as for SALG-ST (the paper gives none).

Demo: 32px digits give stage maps 8, 4, 2, 1; windows of 4 keep regular and shifted windows in stage 1.
"""
from configs import common
from lgvit import schema

#: variant -> drop path.
DROP_PATH = {'st': 0.1, 't': 0.2, 's': 0.3}
DEMO_MODEL = dict(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window=4, drop_path_rate=0.1)


def get_config(arg=None):
  args = common.parse_arg(arg, variant='t', demo=False, demo_recipe=False)
  c = schema.base_config(f'swin_{args.variant}')
  common.deit_style(c, drop_path=common.choose(DROP_PATH, args.variant, 'Swin variant'))
  return common.finalize(c, args, demo_model_kwargs=DEMO_MODEL)
