"""Cascade Mask R-CNN with FPN (NomMer Table 2, CoTNet Table 8) on COCO 2017:
configs/mask_rcnn.py with ``framework=cascade_mask_rcnn`` (its docstring has the recipes).

    python main.py --config=configs/cascade_mask_rcnn.py:backbone=B[,schedule=1x|3x|20e][,demo] --workdir=W
"""
from configs import mask_rcnn


def get_config(arg=None):
  return mask_rcnn.get_config(arg, framework='cascade_mask_rcnn')
