"""What lives where in the directories lgvit writes, and how to tell them apart.

A training workdir (``main.py --workdir``)::

    config.json                   the config of the latest run (checked on resume)
    config_history/<step>.json    each earlier config, named by the step it trained up to
    lock                          who is training in it now (host, pid, start time); one run at a time
    checkpoints/<step>/...        the latest training states (lgvit.checkpoint.TrainCheckpointer)
    best/<step>/{variables,meta}  the weights with the best eval metric
    corrupt_checkpoints/          unreadable checkpoints, moved aside (never deleted)
    metrics.jsonl, tensorboard/   the logs

An export dir (``python -m lgvit.export``)::

    export.json                   model name, class count, input size, transform, model_kwargs
    variables/<step>/...          orbax {'params', 'batch_stats'} + meta
    variables.npz, model.jax      flat arrays; the serialised eval forward (--format jax)
    savedmodel/                   the eval forward as a TF SavedModel (--format savedmodel)

A variables dir (``python -m lgvit.convert``, ``lgvit.checkpoint.save_variables``) is the orbax
directory alone; its meta may name the model.
"""
from __future__ import annotations

import json
import os

import ml_collections

from lgvit import schema
from lgvit.errors import WorkdirError

CONFIG = 'config.json'
CONFIG_HISTORY = 'config_history'
LOCK = 'lock'
CHECKPOINTS = 'checkpoints'
BEST = 'best'
CORRUPT = 'corrupt_checkpoints'
METRICS = 'metrics.jsonl'
TENSORBOARD = 'tensorboard'
EXPORT_META = 'export.json'
EXPORT_VARIABLES = 'variables'
EXPORT_NPZ = 'variables.npz'
EXPORT_FUNCTION = 'model.jax'
EXPORT_SAVEDMODEL = 'savedmodel'

TRAINING, EXPORT, VARIABLES = 'training workdir', 'export dir', 'variables dir'


def kind(path: str) -> str:
  """:data:`TRAINING`, :data:`EXPORT` or :data:`VARIABLES` (anything else that is a directory)."""
  if not os.path.isdir(path):
    raise WorkdirError(f'{path} is not a directory: give a training workdir of main.py, an export dir of '
                       '`python -m lgvit.export` or a checkpoint dir of `python -m lgvit.convert`')
  if os.path.exists(os.path.join(path, CONFIG)) or os.path.isdir(os.path.join(path, CHECKPOINTS)):
    return TRAINING
  if os.path.exists(os.path.join(path, EXPORT_META)):
    return EXPORT
  return VARIABLES


def _load_config_json(path: str) -> dict:
  """A workdir's config.json as a dict; anything else (empty, cut short, a list) is a WorkdirError."""
  try:
    with open(path) as f:
      value = json.load(f)
  except json.JSONDecodeError as e:
    raise WorkdirError(f'{path} is not valid JSON ({e}); restore it from {CONFIG_HISTORY}/ or a backup, or '
                       'use a new --workdir') from None
  except OSError as e:
    raise WorkdirError(f'cannot read {path}: {e.strerror or e}') from None
  if not isinstance(value, dict):
    raise WorkdirError(f'{path} holds a JSON {type(value).__name__}, not a config dict; restore it or use a new '
                       '--workdir')
  return value


def read_config(workdir: str):
  """The ``ml_collections.ConfigDict`` saved in a training workdir, in today's layout (``lgvit.schema.upgrade``)."""
  path = os.path.join(workdir, CONFIG)
  if not os.path.exists(path):
    raise WorkdirError(f'{path} not found: is {workdir} a training workdir of main.py?')
  return ml_collections.ConfigDict(schema.upgrade(_load_config_json(path)))


def read_saved_config_json(workdir: str) -> dict | None:
  """The raw ``config.json`` of a workdir as a dict, or None for a new workdir."""
  path = os.path.join(workdir, CONFIG)
  if not os.path.exists(path):
    return None
  return _load_config_json(path)


def check_writable_workdir(workdir: str) -> None:
  """Refuses, before anything is written, a training workdir that cannot become a directory we write to."""
  if not workdir or not workdir.strip():
    raise WorkdirError('--workdir is empty: give the directory for checkpoints and logs')
  if '://' in workdir:
    return  # remote storage: the first write says what is wrong
  path = os.path.abspath(workdir)
  if os.path.exists(path) and not os.path.isdir(path):
    raise WorkdirError(f'--workdir {workdir} is a file, not a directory')
  existing = path
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise WorkdirError(f'--workdir {workdir} cannot be created: {existing} is a file')
  if not os.access(existing, os.W_OK | os.X_OK):
    what = 'is' if existing == path else f'would be created in {existing}, which is'
    raise WorkdirError(f'--workdir {workdir} {what} not writable')


def write_json(path: str, value) -> None:
  """Writes JSON atomically (a crash leaves the old file or the new one, never half of one)."""
  write_text(path, json.dumps(value, indent=2, sort_keys=True))


def write_text(path: str, text: str) -> None:
  """Replaces ``path`` by ``text`` atomically and durably: a temporary file, fsync, rename."""
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  tmp = f'{path}.tmp'
  with open(tmp, 'w') as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def read_export_meta(export_dir: str) -> dict:
  with open(os.path.join(export_dir, EXPORT_META)) as f:
    return json.load(f)
