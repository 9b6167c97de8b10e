"""Static LESA-ResNet50: unary + binary terms added with equal weights, no dynamic fusion (Tab. 6).

    python main.py --config=configs/static_lesa_resnet50.py --workdir=gs://bucket/slesa  # ImageNet, expect ~79.1%
    python main.py --config=configs/static_lesa_resnet50.py:demo --workdir=/tmp/demo    # embedded digits, CPU minutes

Not in the official code (built from the paper); trained with the LESA recipe ("the setting is the
same as the main experiments", Sec. 5). Expected top-1 79.12 (paper Tab. 6).
"""
from configs import common
from configs.lesa_resnet50 import DEMO_MODEL, DEMO_OPTIONS


def get_config(arg=None):
  c = common.base_config('static_lesa_resnet50')
  common.lesa_style(c)
  return common.finalize(c, arg, demo_model_kwargs=DEMO_MODEL, **DEMO_OPTIONS)
