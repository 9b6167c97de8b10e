"""SA-ResNet50: the paper's self-attention baseline, LESA's binary term alone (Tab. 2 and 6).

    python main.py --config=configs/sa_resnet50.py --workdir=gs://bucket/sa_r50  # ImageNet, expect ~78.7% top-1
    python main.py --config=configs/sa_resnet50.py:demo --workdir=/tmp/demo     # embedded digits, CPU minutes

Not in the official code (built from the paper); trained with the LESA recipe ("the setting is the
same as the main experiments", Sec. 5). Expected top-1 78.69 (paper Tab. 6).
"""
from configs import common
from configs.lesa_resnet50 import DEMO_MODEL, DEMO_OPTIONS


def get_config(arg=None):
  c = common.base_config('sa_resnet50')
  common.lesa_style(c)
  return common.finalize(c, arg, demo_model_kwargs=DEMO_MODEL, **DEMO_OPTIONS)
