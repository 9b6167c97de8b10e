"""ResNet-50 (torchvision v1.5), the papers' conv baseline, with torchvision's 90-epoch recipe.

    python main.py --config=configs/resnet50.py --workdir=gs://bucket/r50    # ImageNet, expect ~76-77% top-1
    python main.py --config=configs/resnet50.py:demo --workdir=/tmp/demo     # embedded digits, CPU minutes
"""
from configs import common


def get_config(arg=None):
  c = common.base_config('resnet50')
  common.torchvision_style(c)
  return common.finalize(c, arg, demo_model_kwargs=dict(stage_depths=(1, 1, 1, 1), stem_width=16,
                                                        stage_planes=(16, 32, 64, 128)))
