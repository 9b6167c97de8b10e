"""SE-CoTNetD-50, official 350-epoch recipe (JDAI-CV/CoTNet cot_experiments/se_cotnetd_50, spec section 6).

    python main.py --config=configs/se_cotnetd50.py --workdir=gs://bucket/se_cotnetd50
        # ImageNet: expect 81.6% top-1 (paper Table 4)
    python main.py --config=configs/se_cotnetd50.py:demo --workdir=/tmp/se_cotnetd50_demo
        # embedded digits, a few CPU minutes

Global batch 640 (8 GPUs x 80), SGD-Nesterov lr 0.25, weight decay 4e-05, drop path 0.1, dropout 0.25 before
the classifier, EMA 0.9999 picking the best checkpoint; the demo keeps the block types: S blocks 16/32 wide in
res2/res3, a CoT then an S block 64 wide in res4, a CoT block 128 wide in res5.
"""
from configs import common


def get_config(arg=None):
  c = common.base_config('se_cotnetd50')
  common.cotnet_style(c, batch=640, lr=0.25, weight_decay=4e-05)
  return common.finalize(c, arg, num_epochs=25.0,
                         demo_model_kwargs=dict(stage_depths=(1, 1, 2, 1), stage_planes=(16, 32, 64, 128),
                                                stem_width=8, drop_rate=0.0))
