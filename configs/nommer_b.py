"""NomMer-B at 224 (73.40M params), the official recipe (DeiT-style, 1e-3 at batch 1024).

    python main.py --config=configs/nommer_b.py --workdir=workdirs/nommer_b    # ImageNet, paper top-1 84.5%
    python main.py --config=configs/nommer_b.py:demo --workdir=/tmp/nommer_b_demo  # embedded digits, CPU minutes

Source: paper sec. 4.1 and the official configs/nommer_*_attn.yaml + config.py (docs/official_code.md, NomMer recipe):
AdamW 5e-4 per 512 images, wd 0.05 (none on 1-d params and biases), warm-up 20 epochs from 5e-7,
cosine to 5e-6 per step, clip 5.0, RandAugment m9, Mixup 0.8 / CutMix 1.0, smoothing 0.1, erasing
0.25, drop-path 0.5. Epochs: 300 as in the paper; the released code defaults to 320.
"""
from configs import common
from configs.nommer_t import DEMO_MODEL


def get_config(arg=None):
  c = common.base_config('nommer_b')
  common.deit_style(c, drop_path=0.5)
  return common.finalize(c, arg, demo_model_kwargs=DEMO_MODEL)
