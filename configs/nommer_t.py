"""NomMer-T at 224 (22.46M params), the official recipe (DeiT-style, 1e-3 at batch 1024).

    python main.py --config=configs/nommer_t.py --workdir=workdirs/nommer_t    # ImageNet, paper top-1 82.6%
    python main.py --config=configs/nommer_t.py:demo --workdir=/tmp/nommer_t_demo  # embedded digits, CPU minutes

Source: paper sec. 4.1 and the official configs/nommer_*_attn.yaml + config.py (docs/official_code.md, NomMer recipe):
AdamW 5e-4 per 512 images, wd 0.05 (none on 1-d params and biases), warm-up 20 epochs from 5e-7,
cosine to 5e-6 per step, clip 5.0, RandAugment m9, Mixup 0.8 / CutMix 1.0, smoothing 0.1, erasing
0.25, drop-path 0.1. Epochs: 300 as in the paper; the released code defaults to 320.
"""
from configs import common

# Same blocks at 32x32: stage maps 8/4/2/1, so window 4 and DCT blocks 4/2 (2x2 compressed tokens).
DEMO_MODEL = dict(embed_dim=32, depths=(1, 1, 1, 1), num_heads=(2, 2, 4, 4), window=4, dct_blocks=(4, 2),
                  cnn_reductions=(2, 2), drop_path_rate=0.0)


def get_config(arg=None):
  c = common.base_config('nommer_t')
  common.deit_style(c, drop_path=0.1)
  return common.finalize(c, arg, demo_model_kwargs=DEMO_MODEL)
