"""Model registry: ``create_model(name, **overrides)``, ``list_models()`` and ``model_info(name)``.

A family module defines ``_create_<family>(name, **kwargs) -> nn.Module`` and one entry per variant::

    _variant = registry.family('resnet', _create_resnet)
    _variant('resnet101', stage_depths=(3, 4, 23, 3), params=44_549_160, paper=dict(top1=77.4))

The entry's keyword arguments that are not :class:`ModelInfo` fields are the variant's constructor
arguments; ``create_model`` passes them, the name and the caller's overrides to the family's create
function. The name becomes the Flax module's ``name``, which error messages quote. ``lgvit.models``
imports every family module, so importing it fills the registry.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
from typing import Any, Callable, Mapping, Optional

import flax.linen as nn

from lgvit.errors import UnknownModelError


@dataclasses.dataclass(frozen=True)
class ModelInfo:
  """What a registered model is, how big it is, and how its authors fed it."""
  name: str
  family: str
  create: Callable[..., nn.Module]  # the family's _create_<family>(name, **kwargs)
  params: int  # exact parameter count at the default classes (1000; ADE20K's 150 for segmentation; COCO's 80
  # for detection) and input_size
  defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # the variant's constructor arguments
  input_size: int = 224
  crop_pct: float = 0.875
  interpolation: str = 'bilinear'
  feature_strides: tuple[int, ...] = (4, 8, 16, 32)  # of the maps that features_only=True returns
  # 'classification', 'segmentation' (lgvit.models.upernet: per-pixel logits at stride 4) or 'detection'
  # (lgvit.models.mask_rcnn: per image 100 boxes, scores, labels, valid flags and 28x28 masks)
  task: str = 'classification'
  paper: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # the paper's figures: params, gmacs, top1
  # init_from at another input size: leaf name -> resize(array, target_shape) (lgvit.checkpoint.adapt_variables).
  resize_rules: Mapping[str, Callable] = dataclasses.field(default_factory=dict)


_REGISTRY: dict[str, ModelInfo] = {}
_INFO_FIELDS = {f.name for f in dataclasses.fields(ModelInfo)} - {'name', 'family', 'create', 'defaults'}


def register_model(name: str, create: Callable[..., nn.Module], *, family: str, **entry) -> ModelInfo:
  """Registers variant ``name``: ``entry`` holds ModelInfo fields (params, paper, input_size, ...) and
  the variant's constructor arguments (everything else)."""
  if name in _REGISTRY:
    raise ValueError(f'model {name!r} is registered twice')
  info_fields = {k: v for k, v in entry.items() if k in _INFO_FIELDS}
  defaults = {k: v for k, v in entry.items() if k not in _INFO_FIELDS}
  _REGISTRY[name] = info = ModelInfo(name, family, create, defaults=defaults, **info_fields)
  return info


def family(name: str, create: Callable[..., nn.Module], **shared) -> Callable[..., ModelInfo]:
  """``register_model`` with the family, its create function and the entries' shared fields filled in."""
  return functools.partial(register_model, create=create, family=name, **shared)


def model_info(name: str) -> ModelInfo:
  if name not in _REGISTRY:
    close = difflib.get_close_matches(name, list(_REGISTRY), n=4, cutoff=0.5)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ''
    raise UnknownModelError(
        f'Unknown model {name!r}.{hint} `python -c "import lgvit.models as m; print(m.list_models())"` lists all.')
  return _REGISTRY[name]


def create_model(name: str, num_classes: Optional[int] = None, **overrides) -> nn.Module:
  """Builds the registered model ``name``; ``overrides`` replace its constructor arguments.

  ``num_classes`` defaults to the variant's own (150 for the ADE20K segmentation models), else 1000."""
  info = model_info(name)
  if num_classes is None:
    num_classes = info.defaults.get('num_classes', 1000)
  try:
    return info.create(name, **{**info.defaults, 'num_classes': num_classes, **overrides})
  except TypeError as e:
    raise TypeError(f'create_model({name!r}): bad override(s) {sorted(overrides)}: {e}') from None


def list_models(family: Optional[str] = None, task: Optional[str] = None) -> list[str]:
  """Registered names, optionally of one family and/or one task ('classification', 'segmentation', 'detection')."""
  return sorted(n for n, i in _REGISTRY.items()
                if (family is None or i.family == family) and (task is None or i.task == task))
