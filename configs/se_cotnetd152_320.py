"""SE-CoTNetD-152 at 320, official 350-epoch recipe (JDAI-CV/CoTNet cot_experiments/se_cotnetd_152, spec section 6).

    python main.py --config=configs/se_cotnetd152_320.py --workdir=gs://bucket/se_cotnetd152_320
        # ImageNet: expect 84.6% top-1 (paper Table 4)
    python main.py --config=configs/se_cotnetd152_320.py:demo --workdir=/tmp/se_cotnetd152_320_demo
        # embedded digits, a few CPU minutes

Global batch 512 (8 GPUs x 64), SGD-Nesterov lr 0.2, weight decay 4e-05, drop path 0.15, dropout 0.25 before
the classifier, EMA 0.9999 picking the best checkpoint; the demo keeps the block types: S blocks 16/32 wide in
res2/res3, a CoT then an S block 64 wide in res4, a CoT block 128 wide in res5. The repo has no separate
config for 320: this is the SE-CoTNetD-152 recipe at the size (and crop) of the registered se_cotnetd_152_L.
"""
from configs import common


def get_config(arg=None):
  c = common.base_config('se_cotnetd152_320')
  common.cotnet_style(c, batch=512, lr=0.2, weight_decay=4e-05, drop_path=0.15)
  c.image_size, c.crop_pct = 320, 0.909
  return common.finalize(c, arg, num_epochs=25.0,
                         demo_model_kwargs=dict(stage_depths=(1, 1, 2, 1), stage_planes=(16, 32, 64, 128),
                                                stem_width=8, drop_rate=0.0))
