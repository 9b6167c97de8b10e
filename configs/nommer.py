"""NomMer-T/S/B at 224 with the official recipe, and fine-tuned at 384 from the 224 run.

    python main.py --config=configs/nommer.py:variant=b --workdir=workdirs/nommer_b        # ImageNet, paper 84.5%
    python main.py --config=configs/nommer.py:variant=b,res=384 --workdir=workdirs/nommer_b_384 \\
        --config.init_from=workdirs/nommer_b                                              # default: that 224 run
    python main.py --config=configs/nommer.py:variant=t,demo --workdir=/tmp/nommer_t_demo  # digits, CPU minutes

224 (paper sec. 4.1 and the official configs/nommer_*_attn.yaml + config.py, docs/official_code.md):
AdamW 5e-4 per 512 images (1e-3 at batch 1024), wd 0.05 (none on 1-d params and biases), warm-up 20
epochs from 5e-7, cosine to 5e-6 per step, clip 5.0, RandAugment m9, Mixup 0.8 / CutMix 1.0,
smoothing 0.1, erasing 0.25, drop path per variant. Epochs: 300 as in the paper; the released code
defaults to 320.

384 (ours: the official code has none, window 7 cannot tile 384 inputs): window 12, DCT blocks 8/4;
init_from loads the 224 checkpoint and resizes the relative position tables (13x13 -> 23x23) and the
stage-3 position embedding (14x14 -> 24x24) bicubically. Recipe: common.finetune_style, i.e. the
paper's 30 epochs at batch 512, lr 1e-5, wd 1e-8, the rest Swin's fine-tune defaults. ``demo`` and
``demo_recipe`` train from scratch at 32px like the 224 demo.
"""
from configs import common
from lgvit import schema

#: variant -> drop path of the official configs.
DROP_PATH = {'t': 0.1, 's': 0.3, 'b': 0.5}
#: Same blocks at 32x32: stage maps 8/4/2/1, so window 4 and DCT blocks 4/2 (2x2 compressed tokens).
DEMO_MODEL = dict(embed_dim=32, depths=(1, 1, 1, 1), num_heads=(2, 2, 4, 4), window=4, dct_blocks=(4, 2),
                  cnn_reductions=(2, 2), drop_path_rate=0.0)


def get_config(arg=None):
  args = common.parse_arg(arg, variant='t', res=224, demo=False, demo_recipe=False)
  drop_path = common.choose(DROP_PATH, args.variant, 'NomMer variant')
  common.choose({224: None, 384: None}, args.res, 'NomMer resolution')
  c = schema.base_config(f'nommer_{args.variant}' + ('' if args.res == 224 else f'_{args.res}'))
  common.deit_style(c, drop_path=drop_path)
  if args.res != 224:
    common.finetune_style(c, init_from=f'workdirs/nommer_{args.variant}', image_size=args.res)
  return common.finalize(c, args, demo_model_kwargs=DEMO_MODEL)
