"""lgvit models: ``create_model``, ``list_models`` and the shared layers."""
from lgvit.models.registry import (ModelInfo, UnknownModelError, create_model, list_models, model_info,
                                   register_model)

__all__ = ['ModelInfo', 'UnknownModelError', 'create_model', 'list_models', 'model_info', 'register_model']
