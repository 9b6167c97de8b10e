"""What every lgvit command-line tool does the same way: quiet logs and one-line errors.

A run's console holds lgvit's own lines (progress, warnings, errors); the libraries' start-up chatter
is kept off it unless ``--verbosity`` (main.py) asks for it (TensorFlow's quiet import: lgvit.quiet). See
README.md, "Logs". Only the command-line modules import this one.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Optional, Sequence

from absl import logging as absl_logging

from lgvit.errors import LgvitError


def quiet_logs(absl_level: str = 'error'):
  """Keeps TensorFlow's C++ logs (it may feed data) and absl's info lines off the console."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  absl_logging.set_verbosity({'error': absl_logging.ERROR, 'warning': absl_logging.WARNING}[absl_level])


def report_errors(run: Callable[[], int | None]) -> int:
  """Runs ``run()``; an :class:`~lgvit.errors.LgvitError` becomes ``error: ...`` on stderr and status 2."""
  try:
    return run() or 0
  except LgvitError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2


def add_source_arguments(parser: argparse.ArgumentParser):
  """The flags that say where a model comes from (lgvit.predict, lgvit.visualize): the arguments of
  :func:`lgvit.inference.load`."""
  parser.add_argument('--workdir', required=True, help='training workdir, export dir or converted checkpoint dir')
  parser.add_argument('--model', default=None, help='registered model name (for a converted checkpoint dir)')
  parser.add_argument('--best', action='store_true', help='use the best checkpoint of a training workdir')
  parser.add_argument('--image_size', type=int, default=None, help='input size for a converted checkpoint dir')


def missing_files_error(paths: Sequence[str]) -> Optional[str]:
  """What is wrong with image file arguments (a directory, a missing file), or None."""
  folders = [p for p in paths if os.path.isdir(p)]
  if folders:
    return f"{', '.join(folders)}: a directory, not an image file (give the image files, e.g. {folders[0]}/*.jpg)"
  missing = [p for p in paths if not os.path.isfile(p)]
  return f"no such image file: {', '.join(missing)}" if missing else None
