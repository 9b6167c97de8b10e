"""Official PyTorch checkpoints -> lgvit variables.

``from_torch(model_name, state_dict, **model_overrides)`` returns ``{'params': ..., 'batch_stats':
...}`` for ``create_model(model_name, **model_overrides)``. The machinery is in ``core``; each family
module (resnet, nommer, cotnet, lesa) registers its rule when this package is imported. SALG has no
official checkpoints, and Swin's are not converted.
"""
from lgvit.convert.core import (ConversionError, StateDictConverter, from_torch, load_state_dict_file,
                                register_converter, strip_prefix, target_shapes, to_numpy)
from lgvit.convert import cotnet, lesa, nommer, resnet  # noqa: F401  (registers the family rules)

__all__ = ['ConversionError', 'StateDictConverter', 'from_torch', 'load_state_dict_file', 'register_converter',
           'strip_prefix', 'target_shapes', 'to_numpy']
