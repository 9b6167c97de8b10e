"""What a training run keeps besides the model: its log files, its workdir's identity, and SIGTERM.

* :class:`MetricsLog` writes console-independent rows to ``metrics.jsonl`` (deterministic values
  only, so that a resumed run's file equals an uninterrupted run's) and to TensorBoard.
* :func:`check_workdir_config` refuses to resume a workdir that holds another architecture and
  says which fields changed; :func:`record_config` saves the config once the run is known to work,
  keeping the earlier ones in ``config_history/``.
* :class:`WorkdirLock` lets one run at a time train in a workdir.
* :class:`SigtermFlag` and :func:`preemption_requested` turn SIGTERM (how schedulers announce a
  preemption) into a step at which every process checkpoints and stops.
"""
from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import signal
import socket
import sys
import time
from typing import Any, Optional

import jax
import numpy as np
from jax.experimental import multihost_utils

from lgvit import schema
from lgvit import workdir as layout
from lgvit.errors import ConfigError, WorkdirError

#: The config fields that define the architecture of a run (and so of its checkpoints).
ARCH_KEYS = ('model', 'model_kwargs', 'num_classes')
#: Logged to metrics.jsonl for comparisons between runs, but not a curve worth a TensorBoard plot.
NOT_PLOTTED = ('data_fingerprint',)


class MetricsLog:
  """Console-independent metrics: ``metrics.jsonl`` (one JSON row per write) and TensorBoard scalars."""

  def __init__(self, workdir: str, resume_step: int, enabled: bool):
    self.enabled = enabled
    self.path = os.path.join(workdir, layout.METRICS)
    self.tb = None
    self.rows: list[dict[str, Any]] = []  # the rows kept from earlier runs (up to resume_step)
    if not enabled:
      return
    if os.path.exists(self.path):  # drop rows written after the checkpoint we resume from
      with open(self.path) as f:
        lines = f.read().splitlines()
      kept = []
      for number, line in enumerate(lines, 1):
        try:
          row = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:
          # What a power loss or a full disk leaves: the row of a step that the resume recomputes anyway.
          print(f'WARNING: {self.path} line {number} is not a complete JSON row (a write cut short); dropped it.',
                flush=True)
          continue
        if isinstance(row, dict) and row.get('step', 0) <= resume_step:
          kept.append(line)
          self.rows.append(row)
      layout.write_text(self.path, ''.join(line + '\n' for line in kept))
    try:
      # TensorFlow: only the TensorBoard copy needs it; importing bookkeeping costs no TF start-up (seconds)
      import tensorflow as tf
      self.tb = tf.summary.create_file_writer(os.path.join(workdir, layout.TENSORBOARD))
      self._tf_summary = tf.summary
    except Exception:  # noqa: BLE001 - TensorBoard is a convenience
      self.tb = None

  def eval_row(self, step: int) -> Optional[dict[str, Any]]:
    """The eval row already logged at ``step`` by an earlier run, if any."""
    rows = [r for r in self.rows if r.get('step') == step and any(k.startswith('eval_') for k in r)]
    return rows[-1] if rows else None

  def divergence_before(self, step: int, factor: float = 10.0) -> Optional[str]:
    """A warning if the last train loss logged at or before ``step`` is ``factor`` x the first one.

    After a NaN stop the rerun resumes from the last checkpoint; when the loss had already blown up
    by then (a run with too high a LR can reach 1e15 before the NaN), that checkpoint diverges again.
    """
    if not self.enabled or not os.path.exists(self.path):
      return None
    with open(self.path) as f:
      losses = []
      for line in f:
        try:
          row = json.loads(line)
        except json.JSONDecodeError:
          continue
        if isinstance(row, dict) and 'loss' in row and row.get('step', 0) <= step:
          losses.append((row['step'], row['loss']))
    if len(losses) < 2:
      return None
    (_, first), (last_step, last) = losses[0], losses[-1]
    if math.isfinite(last) and last <= factor * first:
      return None
    return (f'the loss was already {last:.3g} at step {last_step} (first logged: {first:.3g}), so the '
            f'checkpoint of step {step} probably holds a diverged state and resuming from it may diverge '
            'again; start over from an earlier checkpoint (--config.init_from) in a new workdir')

  def write(self, step: int, row: dict[str, float], extra: Optional[dict[str, float]] = None):
    """Appends ``row`` to metrics.jsonl; ``extra`` (e.g. images/s, not reproducible) goes to TensorBoard only."""
    if not self.enabled:
      return
    try:
      with open(self.path, 'a') as f:
        f.write(json.dumps({'step': step, **row}) + '\n')
    except OSError as e:
      raise WorkdirError(f'cannot append to {self.path} at step {step}: {e.strerror or e}; the checkpoints are '
                         'intact, free space (or fix the disk) and rerun the same command to resume') from None
    if self.tb is not None:
      with self.tb.as_default(step=step):
        for k, v in {**row, **(extra or {})}.items():
          if k not in NOT_PLOTTED:
            self._tf_summary.scalar(k, v)
      self.tb.flush()


def _flatten(tree: dict, prefix: str = '') -> dict[str, Any]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict) and v:
      out.update(_flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


#: What a change of a config field at resume means for the run (fields not named: nothing special).
CHANGE_EFFECTS = {
    'batch_size': 'steps per epoch, the position in the data stream, the logged epoch and the scaled LR change',
    'data.image_size': 'the pipeline crops to the new size from here on',
    'num_train_steps': 'the run ends at the new length and the LR schedule is recomputed for it',
    'num_epochs': 'the run ends at the new length and the LR schedule is recomputed for it',
    'seed': 'the data order and the random augmentation differ from the original run from here on',
    'data.shards': 'the data stream is sharded differently: batches differ from the original run',
}


def config_changes(saved: dict, current: dict) -> list[str]:
  """One line per config field that differs, with what it means for a resumed run."""
  old, new = _flatten(saved), _flatten(current)
  lines = []
  for key in sorted(set(old) | set(new)):
    if old.get(key) != new.get(key):
      effect = CHANGE_EFFECTS.get(key) or ('the LR follows the new schedule from here on'
                                           if key.startswith('schedule.') else '')
      lines.append(f'{key}: {old.get(key)!r} -> {new.get(key)!r}' + (f' ({effect})' if effect else ''))
  return lines


def check_workdir_config(config, workdir: str, force: bool) -> list[str]:
  """Refuses to resume a workdir whose saved architecture differs from the command's (writes nothing).

  Returns the changed fields (see :func:`config_changes`), empty for a new workdir.
  """
  current = json.loads(config.to_json_best_effort())
  saved = layout.read_saved_config_json(workdir)
  if saved is None:
    return []
  saved = schema.upgrade(saved)
  diff = [k for k in ARCH_KEYS if saved.get(k) != current.get(k)]
  if diff and not force:
    details = '; '.join(f'{k}: saved {saved.get(k)!r} vs now {current.get(k)!r}' for k in diff)
    raise ConfigError(f'{workdir} holds a run of another architecture ({details}). Use a new --workdir, '
                      'or pass --force_config to resume anyway.')
  return config_changes(saved, current)


def record_config(config, workdir: str, step: int):
  """Saves the config as config.json; a different earlier one moves to ``config_history/<step>.json``."""
  if jax.process_index() != 0:
    return
  current = json.loads(config.to_json_best_effort())
  path = os.path.join(workdir, layout.CONFIG)
  saved = layout.read_saved_config_json(workdir)
  if saved == current:
    return
  if saved is not None:
    layout.write_json(os.path.join(workdir, layout.CONFIG_HISTORY, f'{step}.json'), saved)
  layout.write_json(path, current)


class WorkdirLock:
  """One run per workdir: process 0 holds an exclusive lock on ``<workdir>/lock`` while it trains.

  The lock is ``flock`` on the file, which the kernel drops when its process dies however it dies
  (kill -9 included), so a crashed run never blocks its rerun. The file names the holder (host, pid,
  start time, command) for the refusal message. The file stays when the run ends (deleting it would
  race with a process that opened it a moment earlier); its content is cleared instead. On a
  filesystem without locks the holder's pid is checked instead: a dead pid on this host is stale.
  """

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.path = os.path.join(workdir, layout.LOCK)
    self.fd: Optional[int] = None

  def __enter__(self):
    error = self._acquire() if jax.process_index() == 0 else None
    if jax.process_count() > 1:
      refused = multihost_utils.broadcast_one_to_all(np.int32(error is not None))
      if refused and error is None:
        error = f'{self.workdir} is in use by another run (process 0 could not take {self.path})'
    if error:
      raise WorkdirError(error)
    return self

  def _acquire(self) -> Optional[str]:
    if '://' in self.workdir:
      return None  # object stores have no locks; one run per bucket path is the user's to ensure
    os.makedirs(self.workdir, exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):  # no locks on this filesystem
        holder = _read_holder(self.path)
        if holder and not _is_stale(holder):
          os.close(fd)
          return self._refusal(holder)
      else:
        holder = _read_holder(self.path, wait_s=1.0)  # the holder writes its name right after locking
        os.close(fd)
        return self._refusal(holder)
    me = {'host': socket.gethostname(), 'pid': os.getpid(), 'pid_start': _process_start(os.getpid()),
          'started': time.strftime('%Y-%m-%d %H:%M:%S %Z'), 'command': ' '.join(sys.argv)}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(me).encode(), 0)
    os.fsync(fd)
    self.fd = fd
    return None

  def _refusal(self, holder: Optional[dict]) -> str:
    who = (f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"
           if holder else 'a process that is starting')
    return (f'{self.workdir} is in use by another run ({who}); wait for it to end or stop it, or use another '
            f'--workdir (lock: {self.path})')

  def __exit__(self, *exc):
    if self.fd is not None:
      try:
        os.ftruncate(self.fd, 0)
      except OSError:
        pass
      os.close(self.fd)  # releases the flock
      self.fd = None


def _read_holder(path: str, wait_s: float = 0.0) -> Optional[dict]:
  deadline = time.time() + wait_s
  while True:
    try:
      with open(path) as f:
        text = f.read()
      if text.strip():
        return json.loads(text)
    except (OSError, ValueError):
      pass
    if time.time() >= deadline:
      return None
    time.sleep(0.05)


def _process_start(pid: int) -> Optional[str]:
  """The kernel's start time of ``pid`` (field 22 of /proc/<pid>/stat): tells a reused pid apart."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      return f.read().rsplit(')', 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def _is_stale(holder: dict) -> bool:
  if holder.get('host') != socket.gethostname():
    return False  # cannot tell from here whether a process on another host lives
  pid = int(holder.get('pid', 0))
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return True
  except PermissionError:
    pass
  return holder.get('pid_start') not in (None, _process_start(pid))


class SigtermFlag:
  """Context manager: ``.set`` becomes True once SIGTERM arrives (the previous handler comes back on exit)."""

  def __init__(self):
    self.set = False
    self._old = None

  def __enter__(self):
    try:
      self._old = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not in the main thread
      self._old = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.set = True

  def __exit__(self, *exc):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)


def preemption_requested(sigterm: SigtermFlag, checkpointer, step: int) -> bool:
  """Whether to checkpoint and stop after ``step``; every process gets the same answer at the same step."""
  if jax.process_count() == 1:
    return sigterm.set
  if step % 10:  # agreeing costs a collective: ask every 10 steps
    return False
  flags = multihost_utils.process_allgather(np.array([sigterm.set], np.int32))
  return bool(np.any(flags)) or checkpointer.manager.reached_preemption(step)


def format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, m, s = seconds // 3600, seconds // 60 % 60, seconds % 60
  return f'{h}h{m:02d}m' if h else f'{m}m{s:02d}s'
