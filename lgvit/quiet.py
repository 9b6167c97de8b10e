"""Keeping the libraries' start-up noise off lgvit's console: TensorFlow's quiet import, log filters.

Library code (lgvit.data imports TensorFlow through :func:`import_tensorflow`); the command-line side,
``--verbosity`` and one-line errors, is lgvit.cli. See README.md, "Logs".
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
from typing import Iterator

#: TF_CPP_MIN_LOG_LEVEL's levels: INFO (0), WARNING (1), ERROR (2), FATAL (3), and their glog letters.
_GLOG_SEVERITIES = 'IWEF'
#: A glog-style line: severity letter, mmdd, time, thread id, file:line].
_GLOG_LINE = re.compile(r'([IWEF])\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [^\]\s]+:\d+\] ')
#: abseil's banner before its first C++ log line, printed whatever the level (abseil-cpp issue #1718).
_ABSL_BANNER = 'WARNING: All log messages before absl::InitializeLog() is called are written to STDERR'


def _tf_min_log_level() -> int:
  try:
    return int(os.environ.get('TF_CPP_MIN_LOG_LEVEL', '0'))
  except ValueError:
    return 0


def is_tf_noise(line: str, min_level: int) -> bool:
  """Whether ``line`` of TensorFlow's import-time stderr is below ``TF_CPP_MIN_LOG_LEVEL``.

  TensorFlow 2.21 logs through abseil, which writes C++ log lines made before ``absl::InitializeLog()``
  whatever their severity, so ``TF_CPP_MIN_LOG_LEVEL`` no longer hides e.g. the oneDNN notice
  (``I0000 00:00:... port.cc:153] oneDNN custom operations are on...``). A glog-style line
  (``<severity letter><mmdd> <time> <thread> <file>:<line>] ...``) below the level and abseil's
  banner are dropped; every other line is kept.
  """
  if min_level <= 0:
    return False
  if line.strip() == _ABSL_BANNER:
    return True
  m = _GLOG_LINE.match(line)
  return bool(m) and _GLOG_SEVERITIES.index(m.group(1)) < min_level


@contextlib.contextmanager
def _filtered_stderr(min_level: int) -> Iterator[None]:
  """Sends file descriptor 2 (C++ writes too) to a file for the block, then replays the lines that
  :func:`is_tf_noise` keeps (all of them if the block raises)."""
  sys.stderr.flush()
  saved = os.dup(2)
  failed = False
  with tempfile.TemporaryFile(mode='w+b') as capture:
    os.dup2(capture.fileno(), 2)
    try:
      yield
    except BaseException:
      failed = True
      raise
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      capture.seek(0)
      lines = capture.read().decode('utf-8', 'replace').splitlines(keepends=True)
      kept = [l for l in lines if failed or not is_tf_noise(l, min_level)]
      if kept:
        sys.stderr.write(''.join(kept))
        sys.stderr.flush()


def import_tensorflow():
  """``import tensorflow``, without its start-up noise and without importing matplotlib.

  * ``TF_CPP_MIN_LOG_LEVEL`` defaults to 2 (errors only), and the lines TensorFlow writes while it
    loads are filtered by it (:func:`is_tf_noise`); ``TF_CPP_MIN_LOG_LEVEL=0`` shows them all.
  * TensorFlow's ``__init__`` imports Keras eagerly (to register Keras optimizers for SavedModels
    that hold them, which lgvit's never do), and Keras imports scipy and ``matplotlib.pyplot``: about
    3 s of a 8 s import on 2 cores, and on a fresh machine matplotlib's font cache is built in the
    middle of a training run. Both are hidden from that one import (TensorFlow catches the
    ImportError); afterwards they import as usual, and ``tf.keras`` still loads Keras on first use
    (TensorFlow binds it lazily). lgvit.introspection draws with matplotlib.

  Call it before the first ``import tensorflow`` of a process (lgvit.data.pipeline and
  lgvit.data.augment do); once TensorFlow is loaded it only returns the module.
  """
  if 'tensorflow' in sys.modules:
    return sys.modules['tensorflow']
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  hidden = [name for name in _HIDDEN_FROM_TENSORFLOW if name not in sys.modules]
  for name in hidden:
    sys.modules[name] = None  # `import keras...` raises ImportError, which TensorFlow catches
  try:
    with _filtered_stderr(_tf_min_log_level()):
      import tensorflow  # here, not at the top: the filter and the hidden modules must be in place first
  finally:
    for name in hidden:
      if sys.modules.get(name, 0) is None:
        del sys.modules[name]
  return tensorflow


#: What :func:`import_tensorflow` keeps TensorFlow's own import from loading (see its docstring).
_HIDDEN_FROM_TENSORFLOW = ('keras', 'matplotlib')


@contextlib.contextmanager
def drop_log_records(logger_name: str, pattern: str) -> Iterator[None]:
  """Drops the records of ``logger_name`` whose message matches ``pattern`` for the block."""
  regex = re.compile(pattern)

  class _Drop(logging.Filter):

    def filter(self, record: logging.LogRecord) -> bool:
      return not regex.search(record.getMessage())

  logger, drop = logging.getLogger(logger_name), _Drop()
  logger.addFilter(drop)
  try:
    yield
  finally:
    logger.removeFilter(drop)
