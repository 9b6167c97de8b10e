"""Checkpoints: orbax managers for training state, the best weights, and loading weights to init from.

Where each lives in a workdir is ``lgvit.workdir``'s business. Orbax finalises a step directory only
after every file is written, so a save killed half-way is never picked up. A finalised step that
fails to restore (truncated or corrupt files) is skipped in favour of the previous one, the fallback
is logged, and the bad step is moved (not deleted) to ``corrupt_checkpoints/`` so that training can
write that step again.
"""
from __future__ import annotations

import logging
import os
import re
import time
from typing import Any, Callable, Mapping, Optional

import flax
import jax
import numpy as np
import orbax.checkpoint as ocp

from lgvit import workdir as layout
from lgvit.errors import CheckpointError, WorkdirError

log = logging.getLogger(__name__)

#: leaf name -> ``resize(array, target_shape) -> array``, a model family's rules for init_from at a
#: new input size (``ModelInfo.resize_rules``).
ResizeRules = Mapping[str, Callable[[np.ndarray, tuple[int, ...]], np.ndarray]]


def _manager(directory: str, keep: Optional[int], async_save: bool = True) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=async_save)
  return ocp.CheckpointManager(directory, options=options)


class TrainCheckpointer:
  """Latest-N training checkpoints with corruption fallback."""

  def __init__(self, workdir: str, keep: int, async_save: bool = True):
    self.workdir = workdir
    self.directory = os.path.join(workdir, layout.CHECKPOINTS)
    self.keep, self.async_save = keep, async_save
    self.manager = _manager(self.directory, keep, async_save)

  def _quarantine(self, steps: list[int]):
    """Moves unreadable steps to ``corrupt_checkpoints/`` (kept for inspection, never deleted)."""
    if jax.process_index() == 0:
      target = os.path.join(self.workdir, layout.CORRUPT)
      os.makedirs(target, exist_ok=True)
      for step in steps:
        dest = os.path.join(target, f'{step}.{int(time.time())}')
        os.replace(os.path.join(self.directory, str(step)), dest)
        print(f'Moved the unreadable checkpoint of step {step} to {dest}.', flush=True)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices('lgvit quarantine')
    self.manager.close()
    self.manager = _manager(self.directory, self.keep, self.async_save)

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def save(self, step: int, state, meta: dict[str, Any], force: bool = False) -> bool:
    return self.manager.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
        force=force)

  def restore_latest(self, abstract_state) -> tuple[Any, dict[str, Any], int] | None:
    """Restores the newest checkpoint that reads back whole; None if there is none."""
    steps = sorted(self.manager.all_steps(), reverse=True)
    bad = []
    for i, step in enumerate(steps):
      try:
        restored = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
      except Exception as e:  # noqa: BLE001 - any read failure means this step is unusable
        older = f'falling back to step {steps[i + 1]}' if i + 1 < len(steps) else 'no older checkpoint left'
        log.warning('checkpoint at step %d in %s is unreadable (%s: %s); %s', step, self.directory,
                    type(e).__name__, str(e).splitlines()[0][:200], older)
        print(f'WARNING: checkpoint step {step} is corrupt or incomplete ({type(e).__name__}); {older}.', flush=True)
        bad.append(step)
        continue
      if bad:
        self._quarantine(bad)
      return restored['state'], dict(restored['meta']), step
    if steps:
      raise CheckpointError(f'none of the checkpoints {steps} in {self.directory} could be read; move the '
                            'directory away to start from scratch (nothing was deleted).')
    return None

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


class BestCheckpointer:
  """Keeps the variables (params + batch_stats) with the best eval metric."""

  def __init__(self, workdir: str):
    self.manager = _manager(os.path.join(workdir, layout.BEST), keep=1, async_save=False)

  def save(self, step: int, variables, meta: dict[str, Any]):
    # A best/ step at or after ``step`` was saved by a run killed before its next training checkpoint:
    # this run resumed from an earlier step and has just reached (and recomputed) that eval again.
    # Orbax refuses to save an existing step, and keeping the later one would make max_to_keep=1 drop
    # the step saved now, so the abandoned future goes first.
    for stale in [s for s in self.manager.all_steps() if s >= step]:
      self.manager.delete(stale)
    self.manager.save(step, args=ocp.args.Composite(variables=ocp.args.StandardSave(variables),
                                                    meta=ocp.args.JsonSave(meta)), force=True)

  def close(self):
    self.manager.close()


def save_variables(directory: str, variables: dict[str, Any], meta: Optional[dict[str, Any]] = None):
  """Writes ``{'params', 'batch_stats'}`` as an orbax checkpoint loadable by :func:`load_variables`."""
  directory = os.path.abspath(directory)
  mngr = _manager(directory, keep=None, async_save=False)
  mngr.save(0, args=ocp.args.Composite(variables=ocp.args.StandardSave(variables),
                                        meta=ocp.args.JsonSave(meta or {})), force=True)
  mngr.wait_until_finished()
  mngr.close()


def load_variables(path: str, prefer_ema: bool = True) -> dict[str, Any]:
  """Reads ``{'params', 'batch_stats'}`` from any directory of ``lgvit.workdir``'s three kinds.

  For a training workdir the latest readable checkpoint's EMA weights are used when present (and
  ``prefer_ema``), else its raw weights.
  """
  path = os.path.abspath(path)
  try:
    kind = layout.kind(path)
  except WorkdirError:
    raise CheckpointError(f'{path} does not exist; give a directory written by `python -m lgvit.convert`, '
                          '`python -m lgvit.export`, or a training workdir') from None
  if kind == layout.TRAINING:
    return _latest_training_variables(path, prefer_ema)
  if kind == layout.EXPORT:
    path = os.path.join(path, layout.EXPORT_VARIABLES)
  mngr = _manager(path, keep=None, async_save=False)
  steps = mngr.all_steps()
  if not steps:
    raise CheckpointError(f'{path} holds no orbax checkpoint (expected <dir>/<step>/variables)')
  variables = restore_on_this_host(os.path.join(mngr.directory, str(max(steps)), 'variables'))
  return {'params': variables['params'], 'batch_stats': variables.get('batch_stats') or {}}


def _latest_training_variables(workdir: str, prefer_ema: bool) -> dict[str, Any]:
  mngr = _manager(os.path.join(workdir, layout.CHECKPOINTS), keep=None, async_save=False)
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      state = restore_on_this_host(os.path.join(mngr.directory, str(step), 'state'))
    except Exception as e:  # noqa: BLE001
      print(f'WARNING: {workdir} checkpoint step {step} unreadable ({type(e).__name__}); trying an older one.')
      continue
    ema = state.get('ema_params') if prefer_ema else None
    if ema:
      return {'params': ema, 'batch_stats': state.get('ema_batch_stats') or {}}
    return {'params': state['params'], 'batch_stats': state.get('batch_stats') or {}}
  raise CheckpointError(f'no readable checkpoint under {workdir}/{layout.CHECKPOINTS}')


def read_meta(directory: str) -> dict[str, Any]:
  """The JSON ``meta`` item of the newest step of an orbax variables directory ({} if it has none)."""
  mngr = ocp.CheckpointManager(os.path.abspath(directory))
  try:
    step = mngr.latest_step()
    if step is None or not os.path.isdir(os.path.join(directory, str(step), 'meta')):
      return {}
    return dict(mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta'])
  finally:
    mngr.close()


def restore_on_this_host(item_dir: str) -> dict[str, Any]:
  """Reads an orbax pytree onto this process's first device, whatever mesh it was saved from."""
  checkpointer = ocp.StandardCheckpointer()
  tree = checkpointer.metadata(item_dir).item_metadata
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree)
  return checkpointer.restore(item_dir, abstract)


def adapt_variables(loaded: dict[str, Any], target: dict[str, Any], skip: str = '',
                    resize_rules: Optional[ResizeRules] = None) -> dict[str, Any]:
  """Fits ``loaded`` variables into the tree of ``target`` (arrays or ShapeDtypeStructs).

  Leaves present in both with equal shapes are copied; leaves named in ``resize_rules`` (the model's
  ``ModelInfo.resize_rules``: position tables) are resampled to the target's shape; leaves matching
  the ``skip`` regex keep the target's (fresh) values. Anything else is an error that names every
  mismatched parameter.
  """
  resize_rules = resize_rules or {}
  flat_loaded = flax.traverse_util.flatten_dict(flax.core.unfreeze(loaded))
  flat_target = flax.traverse_util.flatten_dict(flax.core.unfreeze(target))
  out, problems = {}, []
  for key, tgt in flat_target.items():
    name = '/'.join(key)
    if skip and re.search(skip, name):
      out[key] = tgt
      continue
    if key not in flat_loaded:
      problems.append(f'{name}: missing in checkpoint')
      continue
    src = np.asarray(flat_loaded[key])
    if src.shape == tuple(tgt.shape):
      out[key] = src
    elif key[-1] in resize_rules and src.ndim == len(tgt.shape):
      out[key] = resize_rules[key[-1]](src, tuple(tgt.shape))
      print(f'init_from: resampled {name} {src.shape} -> {tuple(tgt.shape)}')
    else:
      problems.append(f'{name}: checkpoint {src.shape} vs model {tuple(tgt.shape)}')
  if problems:
    raise CheckpointError('init_from does not fit the model (use --config.init_skip=REGEX to keep fresh values, '
                          'e.g. for a new head): ' + '; '.join(problems))
  return flax.traverse_util.unflatten_dict(out)
