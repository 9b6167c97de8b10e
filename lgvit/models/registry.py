"""Model registry: ``create_model(name, **overrides)`` and ``list_models()``."""
from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Callable, Mapping, Optional

import flax.linen as nn

from lgvit.errors import UnknownModelError


@dataclasses.dataclass(frozen=True)
class ModelInfo:
  """What a registered model is and how its authors fed it."""
  name: str
  family: str
  builder: Callable[..., nn.Module]
  input_size: int = 224
  crop_pct: float = 0.875
  interpolation: str = 'bilinear'
  paper: Optional[dict[str, Any]] = None  # e.g. {'params_m': 22.2, 'gflops': 3.3, 'top1': 79.2}
  # init_from at another input size: leaf name -> resize(array, target_shape) (lgvit.checkpoint.adapt_variables).
  resize_rules: Mapping[str, Callable] = dataclasses.field(default_factory=dict)


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(name: str, family: str, *, input_size: int = 224, crop_pct: float = 0.875,
                   interpolation: str = 'bilinear', paper: Optional[dict[str, Any]] = None,
                   resize_rules: Optional[Mapping[str, Callable]] = None):
  """Decorator registering ``fn(**overrides) -> nn.Module`` under ``name``."""

  def deco(fn):
    if name in _REGISTRY:
      raise ValueError(f'model {name!r} is registered twice')
    _REGISTRY[name] = ModelInfo(name, family, fn, input_size, crop_pct, interpolation, paper, dict(resize_rules or {}))
    return fn

  return deco


def model_info(name: str) -> ModelInfo:
  if name not in _REGISTRY:
    close = difflib.get_close_matches(name, list(_REGISTRY), n=4, cutoff=0.5)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ''
    raise UnknownModelError(
        f'Unknown model {name!r}.{hint} `python -c "import lgvit.models as m; print(m.list_models())"` lists all.')
  return _REGISTRY[name]


def create_model(name: str, num_classes: int = 1000, **overrides) -> nn.Module:
  """Builds the registered model ``name``; ``overrides`` replace its constructor arguments."""
  info = model_info(name)
  try:
    return info.builder(num_classes=num_classes, **overrides)
  except TypeError as e:
    raise TypeError(f'create_model({name!r}): bad override(s) {sorted(overrides)}: {e}') from None


def list_models(family: Optional[str] = None) -> list[str]:
  return sorted(n for n, i in _REGISTRY.items() if family is None or i.family == family)
