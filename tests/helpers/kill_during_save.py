"""Runs ``main.py`` and SIGKILLs its own process while orbax is writing one checkpoint.

    python tests/helpers/kill_during_save.py STEP main.py-flags...

A watcher thread polls the checkpoint directory every millisecond and kills the process as soon as
the temporary directory of step STEP appears, i.e. in the middle of that save. Used by test_train.py.
"""
import os
import pathlib
import signal
import sys
import threading
import time


def _watch(checkpoints: pathlib.Path, step: int):
  prefix = f'{step}.orbax-checkpoint-tmp'
  while True:
    if checkpoints.is_dir() and any(p.name.startswith(prefix) for p in checkpoints.iterdir()):
      os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.001)


if __name__ == '__main__':
  step, argv = int(sys.argv[1]), sys.argv[2:]
  workdir = next(a.split('=', 1)[1] for a in argv if a.startswith('--workdir='))
  threading.Thread(target=_watch, args=(pathlib.Path(workdir) / 'checkpoints', step), daemon=True).start()
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
  sys.argv = ['main.py', *argv]
  import main  # noqa: E402
  from absl import app  # noqa: E402
  app.run(main.main, flags_parser=main.parse_flags)
