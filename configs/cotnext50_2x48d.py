"""CoTNeXt-50 (2x48d), official 350-epoch recipe (JDAI-CV/CoTNet cot_experiments/cotnext50_2x48d, spec section 6).

    python main.py --config=configs/cotnext50_2x48d.py --workdir=gs://bucket/cotnext50_2x48d
        # ImageNet: expect 82.1% top-1 (paper Table 4)
    python main.py --config=configs/cotnext50_2x48d.py:demo --workdir=/tmp/cotnext50_2x48d_demo
        # embedded digits, a few CPU minutes

Global batch 512 (8 GPUs x 64), SGD-Nesterov lr 0.2, weight decay 4e-05, drop path 0.1, dropout 0.25 before
the classifier, EMA 0.9999 picking the best checkpoint; the demo keeps CoXt blocks, 32/64/128/256 wide.
"""
from configs import common


def get_config(arg=None):
  c = common.base_config('cotnext50_2x48d')
  common.cotnet_style(c, batch=512, lr=0.2, weight_decay=4e-05)
  return common.finalize(c, arg, num_epochs=25.0,
                         demo_model_kwargs=dict(stage_depths=(1, 1, 1, 1), stage_planes=(16, 32, 64, 128),
                                                base_width=64, stem_width=16, drop_rate=0.0))
