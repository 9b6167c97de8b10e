"""NomMer-T fine-tuned at 384 from the 224 model (window 12, DCT blocks 8/4; paper top-1 83.9%).

    python main.py --config=configs/nommer_t_384.py --workdir=workdirs/nommer_t_384 \\
        --config.init_from=workdirs/nommer_t                                     # default: that 224 run

init_from loads the 224 checkpoint and resizes the relative position tables (13x13 -> 23x23) and the
stage-3 position embedding (14x14 -> 24x24) bicubically. Recipe: common.finetune_style, i.e. the
paper's 30 epochs at batch 512, lr 1e-5, wd 1e-8, the rest Swin's fine-tune defaults. The official
code has no 384 configs (window 7 cannot tile 384 inputs). The :demo variant trains from scratch
like the 224 demo.
"""
from configs import common
from configs.nommer_t import DEMO_MODEL


def get_config(arg=None):
  c = common.base_config('nommer_t_384')
  common.deit_style(c, drop_path=0.1)
  common.finetune_style(c, init_from='' if arg == 'demo' else 'workdirs/nommer_t')
  return common.finalize(c, arg, demo_model_kwargs=DEMO_MODEL)
