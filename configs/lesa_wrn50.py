"""LESA-WRN50: Wide-ResNet-50-2 with LESA layers in stages 3-4 and a stride-1 last stage.

    python main.py --config=configs/lesa_wrn50.py --workdir=gs://bucket/lesa_wrn50  # ImageNet, expect ~80.2% top-1
    python main.py --config=configs/lesa_wrn50.py:demo --workdir=/tmp/demo         # embedded digits, CPU minutes

Recipe: identical to LESA-ResNet50 (official README). Expected top-1 80.18 (README; paper Tab. 2: 80.2).
Source: github.com/Chenglin-Yang/LESA_classification, docs/official_code.md (LESA recipe).
"""
from configs import common
from configs.lesa_resnet50 import DEMO_MODEL, DEMO_OPTIONS


def get_config(arg=None):
  c = common.base_config('lesa_wrn50')
  common.lesa_style(c)
  return common.finalize(c, arg, demo_model_kwargs=DEMO_MODEL, **DEMO_OPTIONS)
