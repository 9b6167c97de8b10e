"""CoTNet-101, official 350-epoch recipe (JDAI-CV/CoTNet cot_experiments/cotnet101, spec section 6).

    python main.py --config=configs/cotnet101.py --workdir=gs://bucket/cotnet101
        # ImageNet: expect 82.8% top-1 (paper Table 4)
    python main.py --config=configs/cotnet101.py:demo --workdir=/tmp/cotnet101_demo
        # embedded digits, a few CPU minutes

Global batch 448 (8 GPUs x 56), SGD-Nesterov lr 0.175, weight decay 6e-05, drop path 0.1, dropout 0.25 before
the classifier, EMA 0.9999 picking the best checkpoint; the demo keeps CoT blocks, 16/32/64/128 wide.
"""
from configs import common


def get_config(arg=None):
  c = common.base_config('cotnet101')
  common.cotnet_style(c, batch=448, lr=0.175, weight_decay=6e-05)
  return common.finalize(c, arg, num_epochs=25.0,
                         demo_model_kwargs=dict(stage_depths=(1, 1, 1, 1), stage_planes=(16, 32, 64, 128),
                                                stem_width=16, drop_rate=0.0))
