"""Faster R-CNN with FPN (CoTNet Table 7) on COCO 2017:
configs/mask_rcnn.py with ``framework=faster_rcnn`` (its docstring has the recipes).

    python main.py --config=configs/faster_rcnn.py:backbone=B[,schedule=1x|3x|20e][,demo] --workdir=W
"""
from configs import mask_rcnn


def get_config(arg=None):
  return mask_rcnn.get_config(arg, framework='faster_rcnn')
