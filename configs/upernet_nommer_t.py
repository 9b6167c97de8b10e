"""UperNet + NomMer-T on ADE20K (54.4M params; paper Table 3: 54M, 46.1 mIoU).

``configs/upernet.py`` with ``backbone=nommer_t`` fixed (recipe and sources there and in docs/segmentation.md).

    python main.py --config=configs/upernet_nommer_t.py --workdir=...
"""
from configs import common, upernet


def get_config(arg=None):
  return upernet.get_config(common.with_arg('backbone=nommer_t', arg))
