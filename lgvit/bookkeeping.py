"""What a training run keeps besides the model: its log files, its workdir's identity, and SIGTERM.

* :class:`MetricsLog` writes console-independent rows to ``metrics.jsonl`` (deterministic values
  only, so that a resumed run's file equals an uninterrupted run's) and to TensorBoard.
* :func:`check_workdir_config` refuses to resume a workdir that holds another architecture, and
  records the config of a new one.
* :class:`SigtermFlag` and :func:`preemption_requested` turn SIGTERM (how schedulers announce a
  preemption) into a step at which every process checkpoints and stops.
"""
from __future__ import annotations

import json
import os
import signal
from typing import Optional

import jax
import numpy as np

from lgvit import workdir as layout
from lgvit.errors import ConfigError

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
    if not enabled:
      return
    if os.path.exists(self.path):  # drop rows written after the checkpoint we resume from
      with open(self.path) as f:
        rows = [line for line in f if line.strip() and json.loads(line).get('step', 0) <= resume_step]
      with open(self.path + '.tmp', 'w') as f:
        f.writelines(rows)
      os.replace(self.path + '.tmp', self.path)
    try:
      import tensorflow as tf
      self.tb = tf.summary.create_file_writer(os.path.join(workdir, layout.TENSORBOARD))
    except Exception:  # noqa: BLE001 - TensorBoard is a convenience
      self.tb = None

  def write(self, step: int, row: dict[str, float], extra: Optional[dict[str, float]] = None):
    """Appends ``row`` to metrics.jsonl; ``extra`` (e.g. images/s, not reproducible) goes to TensorBoard only."""
    if not self.enabled:
      return
    with open(self.path, 'a') as f:
      f.write(json.dumps({'step': step, **row}) + '\n')
    if self.tb is not None:
      import tensorflow as tf
      with self.tb.as_default(step=step):
        for k, v in {**row, **(extra or {})}.items():
          if k not in NOT_PLOTTED:
            tf.summary.scalar(k, v)
      self.tb.flush()


def check_workdir_config(config, workdir: str, force: bool):
  """Refuses to resume a workdir whose saved architecture differs from the command's; saves the config."""
  current = json.loads(config.to_json_best_effort())
  saved = layout.read_saved_config_json(workdir)
  if saved is not None:
    diff = [k for k in ARCH_KEYS if saved.get(k) != current.get(k)]
    if diff and not force:
      details = '; '.join(f'{k}: saved {saved.get(k)!r} vs now {current.get(k)!r}' for k in diff)
      raise ConfigError(f'{workdir} holds a run of another architecture ({details}). Use a new --workdir, '
                        'or pass --force_config to resume anyway.')
  if jax.process_index() == 0:
    layout.write_json(os.path.join(workdir, layout.CONFIG), current)


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
  from jax.experimental import multihost_utils
  if step % 10:  # agreeing costs a collective: ask every 10 steps
    return False
  flags = multihost_utils.process_allgather(np.array([sigterm.set], np.int32))
  return bool(np.any(flags)) or checkpointer.manager.reached_preemption(step)


def format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, m, s = seconds // 3600, seconds // 60 % 60, seconds % 60
  return f'{h}h{m:02d}m' if h else f'{m}m{s:02d}s'
