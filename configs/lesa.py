"""LESA-ResNet50/WRN50 and the paper's SA, static and Attention Augmentation baselines, with LESA's official recipe.

    python main.py --config=configs/lesa.py:variant=lesa_resnet50 --workdir=gs://bucket/lesa_r50  # ~79.5% top-1
    python main.py --config=configs/lesa.py:variant=lesa_resnet50,demo --workdir=/tmp/demo        # digits, CPU minutes

Recipe: the official README command (github.com/Chenglin-Yang/LESA_classification,
docs/official_code.md): SGD-Nesterov 0.05 @ 128, wd 8e-5 on every parameter, 5 warm-up + 90 cosine
epochs, no label smoothing. Expected top-1: LESA-R50 79.55, LESA-WRN50 80.18 (README), SA-R50 78.69
and static LESA-R50 79.12, AA-ResNet-50 (Attention Augmentation, Bello et al. 2019) 78.74 (paper Tab. 6),
SA-WRN50 79.7 (Tab. 2). Those four are not in the official code (built from the papers) and use the
same recipe ("the setting is the same as the main experiments", Sec. 5).
"""
from configs import common
from lgvit import schema

VARIANTS = ('lesa_resnet50', 'lesa_wrn50', 'sa_resnet50', 'sa_wrn50', 'static_lesa_resnet50', 'aa_resnet50')
# Same block types at toy scale: stage 3 keeps its conv first block plus one LESA block, stage 4 one
# (stride-1) LESA block; bottleneck widths 16/32/64/128 so the LESA layers have 8 heads of 4/8 dims.
DEMO_MODEL = dict(stage_depths=(1, 1, 2, 1), stem_width=16, stage_planes=(16, 32, 64, 128))
# AA at widths 64/128 with 8 heads would get dv = 0 (dv = 0.1*C rounded down to a multiple of the heads).
DEMO_EXTRA = {'aa_resnet50': dict(aa_heads=2)}
DEMO_OPTIONS = dict(num_epochs=30.0, lr=0.2)  # 0.98 top-1 (15 epochs at lr 0.1 reach only ~0.95)


def get_config(arg=None):
  args = common.parse_arg(arg, variant='lesa_resnet50', demo=False, demo_recipe=False)
  common.choose(dict.fromkeys(VARIANTS), args.variant, 'LESA variant')
  c = schema.base_config(args.variant)
  common.lesa_style(c)
  return common.finalize(c, args, demo_model_kwargs={**DEMO_MODEL, **DEMO_EXTRA.get(args.variant, {})},
                         **DEMO_OPTIONS)
