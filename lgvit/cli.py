"""What every lgvit command-line tool does the same way: quiet logs and one-line errors."""
from __future__ import annotations

import os
import sys
from typing import Callable

from lgvit.errors import LgvitError


def quiet_logs(absl_level: str = 'error'):
  """Keeps TensorFlow's C++ logs (it may feed data) and absl's info lines off the console."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  from absl import logging as absl_logging
  absl_logging.set_verbosity({'error': absl_logging.ERROR, 'warning': absl_logging.WARNING}[absl_level])


def report_errors(run: Callable[[], int | None]) -> int:
  """Runs ``run()``; an :class:`~lgvit.errors.LgvitError` becomes ``error: ...`` on stderr and status 2."""
  try:
    return run() or 0
  except LgvitError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
