"""Checkpoints: orbax managers for training state, the best weights, and loading weights to init from.

Where each lives in a workdir is ``lgvit.workdir``'s business. Orbax finalises a step directory only
after every file is written, so a save killed half-way is never picked up. Before it does, each
training checkpoint gets ``lgvit_checksums.json`` (SHA-256 of every file of its items), so changed
bytes are caught at restore as well as missing or truncated files. A finalised step that fails to
restore or to verify is skipped in favour of the previous one, the fallback is logged, and the bad
step is moved (not deleted) to ``corrupt_checkpoints/`` so that training can write that step again.
A checkpoint whose state has another structure than the run's (another optimiser, EMA switched on)
is refused rather than taken for corrupt. A save that fails (disk full, in orbax's background
thread too) stops the run with a :class:`~lgvit.errors.CheckpointError`.
"""
from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import re
import time
from typing import Any, Callable, Mapping, Optional

import flax
import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from lgvit import workdir as layout
from lgvit.errors import CheckpointError, WorkdirError, first_line

log = logging.getLogger(__name__)

#: leaf name -> ``resize(array, target_shape) -> array``, a model family's rules for init_from at a
#: new input size (``ModelInfo.resize_rules``).
ResizeRules = Mapping[str, Callable[[np.ndarray, tuple[int, ...]], np.ndarray]]


CHECKSUMS = 'lgvit_checksums.json'


def _manager(directory: str, keep: Optional[int], async_save: bool = True,
             after_write: Optional[Callable[[], None]] = None) -> ocp.CheckpointManager:
  async_options = ocp.AsyncOptions(post_finalization_callback=after_write) if async_save and after_write else None
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=async_save,
                                         async_options=async_options)
  return ocp.CheckpointManager(directory, options=options)


def _item_files(step_dir: str) -> list[str]:
  """The files of a step's items (state/, meta/), relative to the step; orbax's own step-level
  metadata is rewritten as the step is finalised, so it is left out."""
  out = []
  for item in sorted(os.listdir(step_dir)):
    if os.path.isdir(os.path.join(step_dir, item)):
      for root, _, files in os.walk(os.path.join(step_dir, item)):
        out += [os.path.relpath(os.path.join(root, f), step_dir) for f in files]
  return sorted(out)


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def write_checksums(step_dir: str):
  sums = {f: _sha256(os.path.join(step_dir, f)) for f in _item_files(step_dir)}
  tmp = os.path.join(step_dir, CHECKSUMS + '.tmp')
  with open(tmp, 'w') as f:
    json.dump(sums, f, indent=1, sort_keys=True)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, os.path.join(step_dir, CHECKSUMS))


def verify_checksums(step_dir: str) -> bool:
  """Raises ValueError naming the first file whose bytes changed; False if the step has no checksums
  (written by an older lgvit, or by a multi-process run)."""
  path = os.path.join(step_dir, CHECKSUMS)
  if not os.path.exists(path):
    return False
  with open(path) as f:
    expected = json.load(f)
  found = _item_files(step_dir)
  for name in sorted(set(expected) | set(found)):
    if name not in found:
      raise ValueError(f'{name} is missing')
    if name not in expected:
      raise ValueError(f'{name} was not part of the checkpoint')
    if _sha256(os.path.join(step_dir, name)) != expected[name]:
      raise ValueError(f'{name} does not match its SHA-256 checksum')
  return True


def _tree_paths(tree) -> dict[str, tuple[int, ...]]:
  """'opt_state/1/0/trace/fc/bias' -> shape, for a state tree or orbax's metadata of one."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    key = '/'.join(str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k)))) for k in path)
    out[key] = tuple(getattr(leaf, 'shape', ()))
  return out


class StateMismatchError(CheckpointError):
  """The checkpoint's state has another structure than the run's (e.g. another optimiser)."""


class _SaveErrors(logging.Handler):
  """Keeps the last error that orbax only logs: a failed background save is logged and skipped."""

  def __init__(self):
    super().__init__(logging.ERROR)
    self.last: Optional[str] = None

  def emit(self, record):
    if record.exc_info and record.exc_info[1] is not None:
      e = record.exc_info[1]
      self.last = f'{type(e).__name__}: {first_line(e)}'


def _save_failed(step: int, reason: str, directory: str, finished: list[int]) -> CheckpointError:
  intact = f'checkpoints {finished} are intact' if finished else 'no earlier checkpoint exists'
  return CheckpointError(f'saving the checkpoint of step {step} in {directory} failed ({reason}); the run stops '
                         f'here. The {intact}: fix the cause (free disk space?) and rerun the same command to resume.')


class TrainCheckpointer:
  """Latest-N training checkpoints with corruption fallback."""

  def __init__(self, workdir: str, keep: int, async_save: bool = True):
    self.workdir = workdir
    self.directory = os.path.join(workdir, layout.CHECKPOINTS)
    self.keep, self.async_save = keep, async_save
    self.pending: Optional[int] = None  # the step whose (async) save has not been confirmed yet
    self.errors = _SaveErrors()
    logging.getLogger('absl').addHandler(self.errors)
    self.manager = self._new_manager()

  def _new_manager(self) -> ocp.CheckpointManager:
    # Checksums are computed in orbax's background thread, after the items are written and before the
    # step directory is renamed into place: a step that exists has its checksums. Multi-process runs
    # write their shards from several hosts, so they go without.
    seal = self._seal_pending if jax.process_count() == 1 else None
    return _manager(self.directory, self.keep, self.async_save, after_write=seal)

  def _seal_pending(self):
    tmp = glob.glob(os.path.join(self.directory, f'{self.pending}.orbax-checkpoint-tmp*'))
    if len(tmp) == 1:
      write_checksums(tmp[0])

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
      multihost_utils.sync_global_devices('lgvit quarantine')
    self.manager.close()
    self.manager = self._new_manager()

  def finished_steps(self) -> list[int]:
    """The steps whose directories orbax has finalised (not those still being written)."""
    if not os.path.isdir(self.directory):
      return []
    return sorted(int(n) for n in os.listdir(self.directory) if n.isdigit())

  def _confirm_pending(self):
    """Raises if the last save did not produce its step directory (orbax only logs such failures)."""
    step, self.pending = self.pending, None
    if step is None or jax.process_index() != 0 or step in self.finished_steps():
      return
    raise _save_failed(step, self.errors.last or 'see the log above', self.directory, self.finished_steps())

  def check(self):
    """Raises now if the pending background save has already failed (instead of at the next save)."""
    if self.pending is not None and not self.manager.is_saving_in_progress():
      self.wait()

  def save(self, step: int, state, meta: dict[str, Any], force: bool = False) -> bool:
    self.wait()
    self.pending = step
    try:
      saved = self.manager.save(
          step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
          force=force)
    except OSError as e:
      self.pending = None
      raise _save_failed(step, f'{type(e).__name__}: {e.strerror or e}', self.directory,
                         self.finished_steps()) from None
    if not saved:
      self.pending = None
    elif not self.async_save and jax.process_count() == 1:
      write_checksums(os.path.join(self.directory, str(step)))
    return saved

  def _check_structure(self, step: int, abstract_state):
    try:
      saved = _tree_paths(ocp.StandardCheckpointer().metadata(
          os.path.join(self.directory, str(step), 'state')).item_metadata)
    except Exception:  # noqa: BLE001 - unreadable metadata: the restore reports it as corrupt
      return
    wanted = _tree_paths(abstract_state)
    if not saved or saved == wanted:  # no metadata (truncated files): the restore reports it as corrupt
      return
    only_saved, only_wanted = sorted(set(saved) - set(wanted)), sorted(set(wanted) - set(saved))
    shapes = sorted(k for k in set(saved) & set(wanted) if saved[k] != wanted[k])
    details = '; '.join(f'{what} ({len(keys)}): {", ".join(keys[:3])}{", ..." if len(keys) > 3 else ""}'
                        for what, keys in (('only in the checkpoint', only_saved), ('only in this run', only_wanted),
                                           ('other shapes', shapes)) if keys)
    raise StateMismatchError(f'checkpoint step {step} in {self.directory} holds a training state of another '
                             f'structure than this config builds ({details})')

  def restore_latest(self, abstract_state) -> tuple[Any, dict[str, Any], int] | None:
    """Restores the newest checkpoint that reads back whole; None if there is none."""
    steps = sorted(self.manager.all_steps(), reverse=True)
    bad = []
    for i, step in enumerate(steps):
      try:
        verify_checksums(os.path.join(self.directory, str(step)))
        self._check_structure(step, abstract_state)
        restored = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
      except StateMismatchError:
        raise  # a healthy checkpoint of another config: falling back would find the same
      except Exception as e:  # noqa: BLE001 - any read failure means this step is unusable
        older = f'falling back to step {steps[i + 1]}' if i + 1 < len(steps) else 'no older checkpoint left'
        log.warning('checkpoint at step %d in %s is unreadable (%s: %s); %s', step, self.directory,
                    type(e).__name__, first_line(e), older)
        reason = f'{type(e).__name__}: {first_line(e)}' if isinstance(e, ValueError) else \
            type(e).__name__
        print(f'WARNING: checkpoint step {step} is corrupt or incomplete ({reason}); {older}.', flush=True)
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
    """Waits for the pending save; raises if it failed."""
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001 - orbax re-raises a failed finalisation here
      step, self.pending = self.pending, None
      raise _save_failed(step, f'{type(e).__name__}: {first_line(e)}', self.directory, self.finished_steps()) from None
    self._confirm_pending()

  def close(self):
    try:
      self.wait()
    finally:
      self.manager.close()
      logging.getLogger('absl').removeHandler(self.errors)


class BestCheckpointer:
  """Keeps the variables (params + batch_stats) with the best eval metric."""

  def __init__(self, workdir: str):
    self.directory = os.path.join(workdir, layout.BEST)
    self.manager = _manager(self.directory, keep=1, async_save=False)

  def save(self, step: int, variables, meta: dict[str, Any]):
    # A best/ step at or after ``step`` was saved by a run killed before its next training checkpoint:
    # this run resumed from an earlier step and has just reached (and recomputed) that eval again.
    # Orbax refuses to save an existing step, and keeping the later one would make max_to_keep=1 drop
    # the step saved now, so the abandoned future goes first.
    for stale in [s for s in self.manager.all_steps() if s >= step]:
      self.manager.delete(stale)
    try:
      self.manager.save(step, args=ocp.args.Composite(variables=ocp.args.StandardSave(variables),
                                                      meta=ocp.args.JsonSave(meta)), force=True)
    except OSError as e:
      raise _save_failed(step, f'{type(e).__name__}: {e.strerror or e}', self.directory,
                         sorted(self.manager.all_steps())) from None

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
      verify_checksums(os.path.join(mngr.directory, str(step)))
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


def describe_weights(path: str) -> dict[str, Any]:
  """What a directory of weights says about the model they belong to, without reading the arrays.

  ``{'model', 'model_kwargs', 'num_classes', 'image_size'}`` from a training workdir's config, an
  export dir's ``export.json`` or a variables dir's meta; a value the directory does not record is
  None (``model_kwargs``: {}). A converted checkpoint records only what ``lgvit.convert`` knew.
  """
  path = os.path.abspath(path)
  kind = layout.kind(path)
  if kind == layout.TRAINING:
    config = layout.read_config(path)
    meta = {'model': config.get('model'), 'model_kwargs': dict(config.get('model_kwargs') or {}),
            'num_classes': config.get('num_classes'), 'image_size': config.data.get('image_size')}
  else:
    meta = layout.read_export_meta(path) if kind == layout.EXPORT else read_meta(path)
  kwargs = {k: _tuples(v) for k, v in (meta.get('model_kwargs') or {}).items()}  # JSON turned tuples into lists
  return {'model': meta.get('model') or None, 'model_kwargs': kwargs, 'num_classes': meta.get('num_classes'),
          'image_size': meta.get('image_size')}


def _tuples(value):
  return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def restore_on_this_host(item_dir: str) -> dict[str, Any]:
  """Reads an orbax pytree onto this process's first device, whatever mesh it was saved from."""
  checkpointer = ocp.StandardCheckpointer()
  tree = checkpointer.metadata(item_dir).item_metadata
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree)
  return checkpointer.restore(item_dir, abstract)


def adapt_variables(loaded: dict[str, Any], target: dict[str, Any], skip: str = '',
                    resize_rules: Optional[ResizeRules] = None, zeros: str = '') -> dict[str, Any]:
  """Fits ``loaded`` variables into the tree of ``target`` (arrays or ShapeDtypeStructs).

  Leaves present in both with equal shapes are copied; leaves named in ``resize_rules`` (the model's
  ``ModelInfo.resize_rules``: position tables) are resampled to the target's shape; leaves matching
  the ``zeros`` regex are zeros (a transfer's new head, docs/transfer.md), those matching ``skip``
  keep the target's (fresh) values. Anything else is an error that names every mismatched parameter.
  """
  resize_rules = resize_rules or {}
  flat_loaded = flax.traverse_util.flatten_dict(flax.core.unfreeze(loaded))
  flat_target = flax.traverse_util.flatten_dict(flax.core.unfreeze(target))
  out, problems = {}, []
  for key, tgt in flat_target.items():
    name = '/'.join(key)
    if zeros and re.search(zeros, name):
      out[key] = np.zeros(tgt.shape, tgt.dtype)
      continue
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
