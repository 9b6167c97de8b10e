"""Official PyTorch checkpoints -> lgvit variables: the converter machinery the family rules use.

``from_torch(model_name, state_dict, **model_overrides)`` returns ``{'params': ..., 'batch_stats':
...}`` for ``create_model(model_name, **model_overrides)``. Each family registers a *rule* with
:func:`register_converter`; the rule walks the model and moves PyTorch tensors into place with the
helpers of :class:`StateDictConverter` (OIHW -> HWIO, Linear transpose, BN -> scale/bias/mean/var).
Whatever the rule leaves unused, unfilled or mis-shaped is reported all at once.
"""
from __future__ import annotations

import argparse
import os
import pickle
import re
import zipfile
from typing import Any, Callable, Iterable, Mapping, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file as load_safetensors

from lgvit.errors import LgvitError, first_line
from lgvit.models import create_model, model_info


class ConversionError(LgvitError, ValueError):
  """The state_dict does not fit the model; the message lists every offending name."""


class _MissingKey(KeyError):
  pass


def _tolerant(method):
  """Layer helpers record a missing PyTorch key and go on, so one error can list all of them."""

  def wrapper(self, *args, **kwargs):
    try:
      return method(self, *args, **kwargs)
    except _MissingKey:
      return None

  wrapper.__doc__ = method.__doc__
  return wrapper


Path = tuple[str, ...]


class StateDictConverter:
  """Moves PyTorch tensors into a flat ``{(collection, *path): array}`` mapping."""

  def __init__(self, state_dict: Mapping[str, Any]):
    self.sd = {strip_prefix(k): to_numpy(v) for k, v in state_dict.items()}
    self.used: set[str] = set()
    self.out: dict[Path, np.ndarray] = {}
    self.missing: list[str] = []

  # -- low level -------------------------------------------------------------------------------
  def has(self, key: str) -> bool:
    return key in self.sd

  def take(self, key: str) -> np.ndarray:
    if key not in self.sd:
      self.missing.append(key)
      raise _MissingKey(key)
    self.used.add(key)
    return self.sd[key]

  def put(self, path: Iterable[str], value: np.ndarray, collection: str = 'params'):
    self.out[(collection,) + tuple(path)] = np.asarray(value)

  def ignore(self, pattern: str):
    """Marks keys matching the regex as used (buffers that lgvit recomputes)."""
    for k in self.sd:
      if re.search(pattern, k):
        self.used.add(k)

  # -- common layers ---------------------------------------------------------------------------
  @_tolerant
  def conv(self, key: str, path: Iterable[str]):
    """Conv2d ``key.weight`` (O, I/g, kh, kw) [+ ``key.bias``] -> ``path/kernel`` (kh, kw, I/g, O)."""
    path = tuple(path)
    w = self.take(f'{key}.weight')
    if w.ndim == 3:  # Conv1d (O, I, 1) used as a 1x1 conv
      w = w[:, :, None, :]
    self.put(path + ('kernel',), w.transpose(2, 3, 1, 0))
    if self.has(f'{key}.bias'):
      self.put(path + ('bias',), self.take(f'{key}.bias'))

  @_tolerant
  def dense(self, key: str, path: Iterable[str]):
    """Linear ``key.weight`` (O, I) [+ bias] -> Dense ``path/kernel`` (I, O)."""
    path = tuple(path)
    w = self.take(f'{key}.weight')
    if w.ndim == 3:  # Conv1d (O, I, 1)
      w = w[:, :, 0]
    elif w.ndim == 4:  # 1x1 Conv2d used as a Dense
      w = w[:, :, 0, 0]
    self.put(path + ('kernel',), w.T)
    if self.has(f'{key}.bias'):
      self.put(path + ('bias',), self.take(f'{key}.bias'))

  @_tolerant
  def bn(self, key: str, path: Iterable[str]):
    path = tuple(path)
    self.put(path + ('scale',), self.take(f'{key}.weight'))
    self.put(path + ('bias',), self.take(f'{key}.bias'))
    self.put(path + ('mean',), self.take(f'{key}.running_mean'), 'batch_stats')
    self.put(path + ('var',), self.take(f'{key}.running_var'), 'batch_stats')
    if self.has(f'{key}.num_batches_tracked'):
      self.take(f'{key}.num_batches_tracked')

  @_tolerant
  def norm(self, key: str, path: Iterable[str]):
    """LayerNorm / GroupNorm affine -> ``scale``/``bias``."""
    path = tuple(path)
    self.put(path + ('scale',), self.take(f'{key}.weight'))
    self.put(path + ('bias',), self.take(f'{key}.bias'))

  @_tolerant
  def conv_bn(self, conv_key: str, bn_key: str, path: Iterable[str]):
    """An lgvit ``ConvBN`` (submodules ``conv`` and ``bn``)."""
    path = tuple(path)
    self.conv(conv_key, path + ('conv',))
    self.bn(bn_key, path + ('bn',))


Rule = Callable[[StateDictConverter, str, Any], None]
_RULES: dict[str, Rule] = {}
_IMAGE_SIZE_HINTS: dict[str, Callable[[Mapping[str, np.ndarray]], Optional[int]]] = {}


def register_converter(family: str, image_size_hint: Optional[Callable] = None):
  """Registers ``rule(conv, model_name, model)`` for a model family.

  ``image_size_hint(state_dict) -> int | None`` lets a family read the training image size off the
  checkpoint (e.g. a position-embedding grid) so the target variables get the right shapes.
  """

  def deco(fn: Rule):
    _RULES[family] = fn
    if image_size_hint is not None:
      _IMAGE_SIZE_HINTS[family] = image_size_hint
    return fn

  return deco


def strip_prefix(key: str) -> str:
  return key[len('module.'):] if key.startswith('module.') else key


def to_numpy(v) -> np.ndarray:
  if hasattr(v, 'detach'):  # torch.Tensor, without importing torch
    v = v.detach().cpu().numpy()
  return np.asarray(v)


def target_shapes(model, image_size: int) -> dict[Path, tuple[int, ...]]:
  x = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables))
  return {k: tuple(v.shape) for k, v in flat.items()}


def from_torch(model_name: str, state_dict: Mapping[str, Any], *, image_size: Optional[int] = None,
               **model_overrides) -> dict[str, Any]:
  """Converts an official PyTorch ``state_dict`` into the variables of ``create_model(model_name, ...)``.

  Args:
    model_name: a registered lgvit model.
    state_dict: names -> arrays (numpy or torch); a ``module.`` prefix is stripped.
    image_size: the input size the target variables are built for (default: the checkpoint's, where
      the family can tell, else the model's registered input size).
    **model_overrides: passed to ``create_model`` (e.g. ``num_classes=10``, ``stage_depths=...``).
  """
  info = model_info(model_name)
  if info.family not in _RULES:
    raise ConversionError(f'no PyTorch converter is registered for family {info.family!r} ({model_name})')
  conv = StateDictConverter(state_dict)
  if image_size is None and info.family in _IMAGE_SIZE_HINTS:
    image_size = _IMAGE_SIZE_HINTS[info.family](conv.sd)
  image_size = image_size or info.input_size
  model = create_model(model_name, **model_overrides)
  try:
    _RULES[info.family](conv, model_name, model)
  except _MissingKey:
    pass  # reported below with everything else
  expected = target_shapes(model, image_size)
  missing = sorted('/'.join(k) for k in expected if k not in conv.out)
  unexpected_out = sorted('/'.join(k) for k in conv.out if k not in expected)
  misshaped = sorted(f"{'/'.join(k)}: checkpoint {conv.out[k].shape} vs model {expected[k]}"
                     for k in expected if k in conv.out and conv.out[k].shape != expected[k])
  unused = sorted(k for k in conv.sd if k not in conv.used)
  problems = []
  if conv.missing:
    problems.append(f'missing PyTorch keys ({len(conv.missing)}): ' + ', '.join(sorted(set(conv.missing))))
  if missing:
    problems.append(f'missing ({len(missing)}): ' + ', '.join(missing))
  if unused:
    problems.append(f'unexpected PyTorch keys ({len(unused)}): ' + ', '.join(unused))
  if unexpected_out:
    problems.append(f'converter produced unknown names ({len(unexpected_out)}): ' + ', '.join(unexpected_out))
  if misshaped:
    problems.append(f'mis-shaped ({len(misshaped)}): ' + '; '.join(misshaped))
  if problems:
    raise ConversionError(f'state_dict does not fit {model_name}: ' + '; '.join(problems))
  variables = flax.traverse_util.unflatten_dict({k: jnp.asarray(v, jnp.float32) for k, v in conv.out.items()})
  return dict(variables)


def _safe_globals():
  """The non-tensor types that real training checkpoints carry, each harmless to rebuild.

  timm (and so CoTNet) saves its ``argparse.Namespace`` under ``args``; metrics logged as numpy
  scalars pickle as ``numpy.core.multiarray.scalar`` + a dtype (``numpy._core`` under numpy 2).
  """
  out = [argparse.Namespace, np.dtype]
  scalar = getattr(getattr(np, '_core', np.core).multiarray, 'scalar')
  out += [(scalar, f'{m}.multiarray.scalar') for m in ('numpy.core', 'numpy._core')]
  out += [type(np.dtype(t)) for t in ('float64', 'float32', 'int64', 'int32', 'bool')]
  return out


def _torch_load(path: str, trust_pickle: bool):
  """``torch.load`` with weights_only=True (nothing but tensors, containers and the allow-list is
  rebuilt, so a malicious pickle cannot run code); ``trust_pickle`` restores full unpickling."""
  try:
    import torch  # torch: only a .pth needs it, and it is optional and takes seconds to import
  except ImportError:
    raise ConversionError(f'reading {path} needs PyTorch (pip install torch); .npz and .safetensors do '
                          'not') from None
  if trust_pickle:
    return torch.load(path, map_location='cpu', weights_only=False)
  try:
    with torch.serialization.safe_globals(_safe_globals()):
      return torch.load(path, map_location='cpu', weights_only=True)
  except pickle.UnpicklingError:
    try:
      unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - naming them is a courtesy; the refusal stands either way
      unsafe = []
    named = f" (it references {', '.join(unsafe)})" if unsafe else ''
    raise ConversionError(f'refusing to unpickle {path}: it holds objects other than tensors{named}, and '
                          'unpickling them can run arbitrary code. If you trust where the file comes from, '
                          'rerun with --trust-pickle.') from None
  except (RuntimeError, EOFError, OSError) as e:
    raise ConversionError(f'{path} is not a readable PyTorch checkpoint ({first_line(e)})') from None


def load_state_dict_file(path: str, prefer_ema: bool = False, trust_pickle: bool = False) -> dict[str, np.ndarray]:
  """Reads a checkpoint file: ``.pth``/``.pt`` (needs torch), ``.npz``, or ``.safetensors``.

  Training-checkpoint wrappers (``model``, ``state_dict``, ``net``; with ``prefer_ema`` first
  ``state_dict_ema``) are unwrapped; the fixtures'
  ``sd/`` prefix is stripped. A ``.pth`` is read with ``torch.load(weights_only=True)`` unless
  ``trust_pickle`` (which runs whatever code the pickle names).
  """
  if not os.path.isfile(path):
    raise ConversionError(f'checkpoint file {path} not found')
  if path.endswith(('.pth', '.pt', '.bin', '.tar')):
    obj = _torch_load(path, trust_pickle)
    if isinstance(obj, dict):
      keys = ('model', 'state_dict', 'net')
      for key in (('state_dict_ema', 'model_ema') + keys) if prefer_ema else keys:
        if key in obj and isinstance(obj[key], dict):
          obj = obj[key]
          break
    if not isinstance(obj, dict):
      raise ConversionError(f'{path} holds a {type(obj).__name__}, not a state_dict (a dict of tensors)')
    return {k: to_numpy(v) for k, v in obj.items() if hasattr(v, 'shape')}
  if path.endswith('.npz'):
    if not zipfile.is_zipfile(path):  # np.load would try it as a pickle and blame 'object data'
      raise ConversionError(f'{path} is not a .npz archive (truncated, or another format under that name)')
    try:
      with np.load(path, allow_pickle=False) as z:
        keys = list(z.keys())
        if any(k.startswith('sd/') for k in keys):
          return {k[3:]: z[k] for k in keys if k.startswith('sd/')}
        return {k: z[k] for k in keys}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
      raise ConversionError(f'{path} is not a readable .npz archive ({type(e).__name__}: '
                            f'{first_line(e)})') from None
  if path.endswith('.safetensors'):
    try:
      return load_safetensors(path)
    except (SafetensorError, OSError) as e:
      raise ConversionError(f'{path} is not a readable .safetensors file (truncated?): '
                            f'{first_line(e)}') from None
  raise ConversionError(f'unknown checkpoint format {path!r}: use .pth/.pt, .npz or .safetensors')
