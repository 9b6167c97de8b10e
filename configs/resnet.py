"""ResNet-50/101 and Wide-ResNet-50-2 (torchvision v1.5), the papers' conv baselines, with torchvision's
90-epoch recipe.

    python main.py --config=configs/resnet.py:variant=resnet50 --workdir=gs://bucket/r50   # expect ~76-77% top-1
    python main.py --config=configs/resnet.py:variant=resnet50,demo --workdir=/tmp/demo    # digits, CPU minutes
"""
from configs import common
from lgvit import schema

VARIANTS = ('resnet50', 'wide_resnet50_2', 'resnet101')
DEMO_MODEL = dict(stage_depths=(1, 1, 1, 1), stem_width=16, stage_planes=(16, 32, 64, 128))


def get_config(arg=None):
  args = common.parse_arg(arg, variant='resnet50', demo=False, demo_recipe=False)
  common.choose(dict.fromkeys(VARIANTS), args.variant, 'ResNet variant')
  c = schema.base_config(args.variant)
  common.torchvision_style(c)
  return common.finalize(c, args, demo_model_kwargs=DEMO_MODEL)
