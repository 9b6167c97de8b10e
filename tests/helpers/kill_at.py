"""Runs ``main.py`` in this process and SIGKILLs it at a named moment.

    python tests/helpers/kill_at.py MOMENT main.py-flags...

MOMENT is one of

* ``path:GLOB`` -- as soon as a path matching GLOB (relative to the workdir) exists. A watcher
  thread polls every millisecond, so ``path:checkpoints/10.orbax-checkpoint-tmp*`` kills in the
  middle of the save of step 10 and ``path:best/11`` right after ``best/`` finalised step 11.
* ``replace:NAME`` -- when a side file named NAME (``config.json``, ``metrics.jsonl``) is about to
  be replaced by its freshly written temporary file: the moment where a non-atomic write would have
  left half a file. ``replace:NAME:N`` waits for the N-th such replacement (default 1).

Used by test_train.py.
"""
import os
import pathlib
import signal
import sys
import threading
import time


def _die():
  os.kill(os.getpid(), signal.SIGKILL)


def _watch(workdir: pathlib.Path, pattern: str):
  while True:
    if workdir.is_dir() and any(workdir.glob(pattern)):
      _die()
    time.sleep(0.001)


def _kill_on_replace(name: str, nth: int):
  real_replace, seen = os.replace, [0]

  def replace(src, dst, *args, **kwargs):
    if os.path.basename(os.fspath(dst)) == name:
      seen[0] += 1
      if seen[0] == nth:
        _die()
    return real_replace(src, dst, *args, **kwargs)

  os.replace = replace


if __name__ == '__main__':
  moment, argv = sys.argv[1], sys.argv[2:]
  workdir = next(a.split('=', 1)[1] for a in argv if a.startswith('--workdir='))
  kind, _, what = moment.partition(':')
  if kind == 'path':
    threading.Thread(target=_watch, args=(pathlib.Path(workdir), what), daemon=True).start()
  elif kind == 'replace':
    name, _, nth = what.partition(':')
    _kill_on_replace(name, int(nth or 1))
  else:
    raise SystemExit(f'unknown moment {moment!r}: use path:GLOB or replace:NAME[:N]')
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
  sys.argv = ['main.py', *argv]
  import main  # noqa: E402
  from absl import app  # noqa: E402
  app.run(main.main, flags_parser=main.parse_flags)
