"""lgvit models: ``create_model``, ``list_models`` and the shared layers.

Importing this package imports every family module, whose entries fill the registry.
"""
from lgvit.models.registry import ModelInfo, create_model, list_models, model_info, register_model
from lgvit.models import cotnet, lesa, nommer, resnet, salg, swin  # noqa: F401  (registers the variants)
from lgvit.models import upernet  # noqa: F401,E402  (after the backbones it wraps)
from lgvit.models import mask_rcnn  # noqa: F401,E402  (after the backbones it wraps)
from lgvit.models import cascade_rcnn  # noqa: F401,E402  (after mask_rcnn, whose detector it extends)

__all__ = ['ModelInfo', 'create_model', 'list_models', 'model_info', 'register_model']
