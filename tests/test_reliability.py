"""What a training workdir survives: two runs at once, bad inputs, a full disk, flipped bytes, config
changes, NaN, signals at awkward moments (issues #20 and #21; docs/reliability.md lists each case).

The kill -9 cases are in test_train.py (test_killed_at_random_points_resumes_and_matches_uninterrupted).
"""
import errno
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import FAST_COMPILE_FLAG, demo_config, subprocess_env
from test_train import DEMO, REPO, _kill_at, _tree_snapshot, run_main

from lgvit import errors, train


def _rows(workdir):
  return [json.loads(l) for l in (pathlib.Path(workdir) / 'metrics.jsonl').read_text().splitlines()]


def _error_line(proc):
  lines = [l for l in proc.stderr.splitlines() if l.startswith('error:')]
  assert proc.returncode == 2 and len(lines) == 1 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  return lines[0]


# ---------------------------------------------------------------------------------------------
# One run per workdir.
# ---------------------------------------------------------------------------------------------


def test_two_runs_started_together_on_one_workdir_only_one_trains(tmp_path):
  args = [f'--config={DEMO}', '--config.num_train_steps=100000', '--config.checkpoint_every_steps=5',
          '--config.log_every_steps=5', f'--config.data.data_dir={tmp_path / "tfds"}']
  run_main(*args[:1], f'--config.data.data_dir={tmp_path / "tfds"}', '--config.num_train_steps=1',
           workdir=tmp_path / 'warm')  # prepares the digits once, so that neither run does it
  workdir = tmp_path / 'run'
  logs = [(open(tmp_path / f'out{i}', 'w+'), open(tmp_path / f'err{i}', 'w+')) for i in range(2)]
  procs = [subprocess.Popen([sys.executable, 'main.py', f'--workdir={workdir}', *args], cwd=REPO, env=subprocess_env(),
                            stdout=out, stderr=err, text=True) for out, err in logs]
  try:
    # The refused one exits on its own; the other trains until SIGTERM asks it to checkpoint and stop.
    while all(p.poll() is None for p in procs):
      time.sleep(0.2)
    loser = next(p for p in procs if p.returncode is not None)
    winner = procs[1 - procs.index(loser)]
    winner_out = tmp_path / f'out{procs.index(winner)}'
    while winner.poll() is None and 'step 10/' not in winner_out.read_text():
      time.sleep(0.2)
    winner.send_signal(signal.SIGTERM)
    winner.wait(timeout=600)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  assert winner.returncode == 75, winner_out.read_text()[-2000:]
  i = procs.index(loser)
  fake = subprocess.CompletedProcess(loser.args, loser.returncode, (tmp_path / f'out{i}').read_text(),
                                     (tmp_path / f'err{i}').read_text())
  err = _error_line(fake)
  assert 'is in use by another run' in err and f'pid {winner.pid} on ' in err and 'started' in err, err
  assert not any(l.startswith('step ') for l in fake.stdout.splitlines())  # it never trained
  steps = [r['step'] for r in _rows(workdir) if 'loss' in r]
  assert steps == list(range(5, steps[-1] + 1, 5))  # one run's rows, in order, none twice
  assert (workdir / 'lock').read_text() == ''  # released when the winner stopped


# ---------------------------------------------------------------------------------------------
# Bad inputs: one line, exit 2, nothing written.
# ---------------------------------------------------------------------------------------------


def _workdir_case(kind, tmp_path):
  """A workdir in state ``kind``; returns (path given to main.py, root whose files must not change)."""
  if kind in ('corrupt_config', 'empty_config', 'list_config'):
    w = tmp_path / 'w'
    w.mkdir()
    (w / 'config.json').write_text({'corrupt_config': '{"model": "resnet50", "num_cl', 'empty_config': '',
                                    'list_config': '[1, 2, 3]'}[kind])
    return str(w), tmp_path
  if kind == 'is_a_file':
    (tmp_path / 'f').write_text('x')
    return str(tmp_path / 'f'), tmp_path
  if kind == 'under_a_file':
    (tmp_path / 'f').write_text('x')
    return str(tmp_path / 'f' / 'run'), tmp_path
  if kind == 'empty':
    return '', tmp_path
  return str(tmp_path / 'w'), tmp_path


@pytest.mark.parametrize('workdir_kind,overrides,expect', [
    ('corrupt_config', {}, 'config.json is not valid JSON'),
    ('empty_config', {}, 'config.json is not valid JSON'),
    ('list_config', {}, 'holds a JSON list, not a config dict'),
    ('is_a_file', {}, 'is a file, not a directory'),
    ('under_a_file', {}, 'cannot be created'),
    ('empty', {}, '--workdir is empty'),
    ('read_only', {}, 'not writable'),
    ('new', {'batch_size': 0}, 'batch_size must be a positive number'),
    ('new', {'batch_size': -8}, 'batch_size must be a positive number'),
    ('new', {'eval_batch_size': 0}, 'eval_batch_size must be a positive number'),
    ('new', {'data__image_size': -1}, 'data.image_size must be a positive number'),
    ('new', {'log_every_steps': 0}, 'log_every_steps must be a positive number'),
    ('new', {'checkpoint_every_steps': 0}, 'checkpoint_every_steps must be a positive number'),
    ('new', {'optim__optimizer': 'adam'}, "optim.optimizer must be one of 'sgd', 'adamw'"),
    ('new', {'data__interpolation': 'cubic'}, "data.interpolation must be one of 'bilinear', 'bicubic'"),
    ('new', {'data__dataset': 'lgvit_digit'}, "unknown TFDS dataset 'lgvit_digit'"),
])
def test_bad_config_or_workdir_is_refused_before_anything_is_written(digits_dir, tmp_path, monkeypatch, workdir_kind,
                                                                     overrides, expect):
  workdir, root = _workdir_case(workdir_kind, tmp_path)
  before = _tree_snapshot(root), sorted(root.rglob('*'))
  if workdir_kind == 'read_only':  # as root, permissions do not stop writes: the check itself is what is tested
    real_access = os.access
    monkeypatch.setattr(os, 'access', lambda p, mode, **k: False if str(p) == str(tmp_path) else real_access(p, mode))
  with pytest.raises(errors.LgvitError) as info:
    train.train_and_evaluate(demo_config(digits_dir, **overrides), workdir)
  message = str(info.value)
  assert expect in message and '\n' not in message, message
  assert (_tree_snapshot(root), sorted(root.rglob('*'))) == before  # not a file, not a directory more


# ---------------------------------------------------------------------------------------------
# Logs: every step in its row, a cut-off row, a rerun of a finished run.
# ---------------------------------------------------------------------------------------------


def test_log_rows_cover_every_step_since_the_last_row_across_evals_checkpoints_and_resume(digits_dir, tmp_path,
                                                                                             capsys):
  """Rows every 10 steps with checkpoints every 7 (and a kill right after step 14's): each row is the
  mean of its 10 steps, as a run that logs every step measures them."""
  every_step = tmp_path / 'every_step'
  train.train_and_evaluate(demo_config(digits_dir, num_train_steps=20, log_every_steps=1, checkpoint_every_steps=100,
                                        eval_every_epochs=100.0), str(every_step), async_checkpoints=False)
  per_step = {r['step']: r for r in _rows(every_step) if 'loss' in r}

  config = demo_config(digits_dir, num_train_steps=20, log_every_steps=10, checkpoint_every_steps=7,
                        eval_every_epochs=100.0)
  workdir = tmp_path / 'run'
  # The same run as `config` in a process of its own, under this process's XLA flags.
  flags = [f'--config={DEMO}', f'--config.data.data_dir={digits_dir}', '--config.num_train_steps=20',
           '--config.log_every_steps=10', '--config.checkpoint_every_steps=7', '--config.eval_every_epochs=100']
  _kill_at('path:checkpoints/14', flags, workdir, XLA_FLAGS=FAST_COMPILE_FLAG)
  with open(workdir / 'metrics.jsonl', 'a') as f:
    f.write('{"step": 15, "loss": 2.4, "gra')  # what a power loss leaves: half a row
  capsys.readouterr()
  train.train_and_evaluate(config, str(workdir))
  out = capsys.readouterr().out
  assert 'from step 14' in out and 'is not a complete JSON row' in out, out[-2000:]
  rows = [r for r in _rows(workdir) if 'loss' in r]
  assert [r['step'] for r in rows] == [10, 20]
  for row in rows:
    steps = range(row['step'] - 9, row['step'] + 1)
    np.testing.assert_allclose(row['loss'], np.mean([per_step[s]['loss'] for s in steps]), rtol=1e-12)
    np.testing.assert_allclose(row['lr'], np.mean([per_step[s]['lr'] for s in steps]), rtol=1e-12)
    assert row['data_fingerprint'] == train.combine_fingerprints(per_step[s]['data_fingerprint'] for s in steps)

  before = (workdir / 'metrics.jsonl').read_text()
  result = train.train_and_evaluate(config, str(workdir))  # a finished run: nothing to train, nothing new to log
  assert result['step'] == 20 and (workdir / 'metrics.jsonl').read_text() == before


# ---------------------------------------------------------------------------------------------
# Checkpoints: changed bytes, a failed save, a changed config.
# ---------------------------------------------------------------------------------------------


def _flip_middle_bytes(data: pathlib.Path):
  raw = bytearray(data.read_bytes())
  middle = len(raw) // 2
  raw[middle:middle + 8] = bytes(b ^ 0xFF for b in raw[middle:middle + 8])
  data.write_bytes(bytes(raw))  # same size, same names: only the content tells


def _truncate_every_file(state: pathlib.Path):
  for f in state.rglob('*'):
    if f.is_file():
      f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_one_and_is_kept(digits_dir, tmp_path, capsys):
  """The latest checkpoint with flipped bytes in its largest file, or with every file cut in half."""
  trained = tmp_path / 'trained'
  train.train_and_evaluate(demo_config(digits_dir, num_train_steps=10, checkpoint_every_steps=5, log_every_steps=5),
                           str(trained), async_checkpoints=False)
  damages = {
      'flipped': (lambda state: _flip_middle_bytes(max((f for f in state.rglob('*') if f.is_file()),
                                                       key=lambda f: f.stat().st_size)), 'does not match its SHA-256'),
      'truncated': (_truncate_every_file, 'corrupt or incomplete'),
  }
  for name, (damage, reason) in damages.items():
    workdir = tmp_path / name
    shutil.copytree(trained, workdir)
    damage(workdir / 'checkpoints' / '10' / 'state')
    capsys.readouterr()
    result = train.train_and_evaluate(demo_config(digits_dir, num_train_steps=15, checkpoint_every_steps=5,
                                                   log_every_steps=5), str(workdir), async_checkpoints=False)
    out = capsys.readouterr().out
    assert 'checkpoint step 10 is corrupt or incomplete' in out and reason in out, (name, out[-2000:])
    assert 'falling back to step 5' in out and 'from step 5' in out and result['step'] == 15, (name, out[-2000:])
    assert len(list((workdir / 'corrupt_checkpoints').iterdir())) == 1, name  # kept, not deleted


def test_failed_background_save_stops_the_run_and_a_rerun_resumes(digits_dir, tmp_path, monkeypatch):
  """Disk full while orbax finalises step 10 in its background thread (an injected ENOSPC)."""
  from orbax.checkpoint._src.path import atomicity
  real_finalize = atomicity.AtomicRenameTemporaryPath.finalize

  async def finalize(self):
    final = self.get_final()
    if final.name == '10' and final.parent.name == 'checkpoints':
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return await real_finalize(self)

  monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, 'finalize', finalize)
  workdir = str(tmp_path / 'run')
  config = demo_config(digits_dir, num_train_steps=20, checkpoint_every_steps=5, log_every_steps=5)
  with pytest.raises(errors.CheckpointError) as info:
    train.train_and_evaluate(config, workdir)
  message = str(info.value)
  assert 'saving the checkpoint of step 10' in message and 'No space left on device' in message, message
  assert 'checkpoints [5] are intact' in message and 'rerun the same command' in message, message
  assert '\n' not in message
  assert sorted(p.name for p in (tmp_path / 'run' / 'checkpoints').iterdir() if p.name.isdigit()) == ['5']
  # It stopped at its first look after the failure: the next flush or, at the latest, the next save.
  assert [r['step'] for r in _rows(workdir)] in ([5, 10], [5, 10, 15])

  monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, 'finalize', real_finalize)  # space freed
  result = train.train_and_evaluate(config, workdir)
  assert result['status'] == train.FINISHED and result['step'] == 20
  assert [r['step'] for r in _rows(workdir) if 'loss' in r] == [5, 10, 15, 20]


def test_config_changes_at_resume_are_logged_kept_and_impossible_ones_refused(digits_dir, tmp_path, capsys):
  def config(**overrides):
    return demo_config(digits_dir, checkpoint_every_steps=2, log_every_steps=2, **overrides)

  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(config(num_train_steps=4), workdir, async_checkpoints=False)
  first = json.loads((tmp_path / 'run' / 'config.json').read_text())

  capsys.readouterr()
  train.train_and_evaluate(config(num_train_steps=6, batch_size=32, schedule__lr=0.05), workdir, async_checkpoints=False)
  out = capsys.readouterr().out
  assert 'Config changed at resume (step 4): batch_size: 64 -> 32 (steps per epoch' in out, out[-2000:]
  assert 'Config changed at resume (step 4): num_train_steps: 4 -> 6' in out
  assert 'Config changed at resume (step 4): schedule.lr: 0.1 -> 0.05 (the LR follows the new schedule' in out
  assert json.loads((tmp_path / 'run' / 'config_history' / '4.json').read_text()) == first  # kept, not overwritten
  assert json.loads((tmp_path / 'run' / 'config.json').read_text())['batch_size'] == 32

  before = _tree_snapshot(tmp_path / 'run')
  with pytest.raises(errors.LgvitError) as info:
    train.train_and_evaluate(config(num_train_steps=8, optim__optimizer='adamw'), workdir)
  err = str(info.value)
  assert 'holds a training state of another structure' in err and "optim.optimizer: 'sgd' -> 'adamw'" in err, err
  assert 'corrupt' not in err and '--config.init_from=' in err and '\n' not in err
  assert _tree_snapshot(tmp_path / 'run') == before  # config.json and the checkpoints untouched


# ---------------------------------------------------------------------------------------------
# NaN and signals.
# ---------------------------------------------------------------------------------------------


def test_nan_stop_names_a_finished_checkpoint_and_exits_cleanly(tmp_path):
  args = [f'--config={DEMO}', '--config.num_train_steps=200', '--config.checkpoint_every_steps=2',
          '--config.log_every_steps=1', '--config.schedule.lr=1e6', '--config.schedule.warmup_epochs=0',
          f'--config.data.data_dir={tmp_path / "tfds"}']
  workdir = tmp_path / 'run'
  proc = run_main(*args, workdir=workdir, check=False)
  err = _error_line(proc)
  assert 'loss became' in err and 'last good checkpoint: ' in err, err
  named = err.split('last good checkpoint: ')[1].split(')')[0]
  assert os.path.isdir(named) and not named.endswith('tmp'), err
  assert not list((workdir / 'checkpoints').glob('*.orbax-checkpoint-tmp*'))  # the pending save finished
  assert 'asyncio' not in proc.stderr and 'Exception in thread' not in proc.stderr  # no tracebacks after it


@pytest.mark.parametrize('losses,warned', [((2.3, 1.9, 4e15), True), ((2.3, 1.9, float('nan')), True),
                                            ((2.3, 2.0, 1.5), False), ((2.3, 40.0, 1.5), False)])
def test_nan_stop_warns_when_the_last_checkpoint_already_diverged(tmp_path, losses, warned):
  from lgvit import bookkeeping
  rows = [{'step': 2 * i + 2, 'loss': loss} for i, loss in enumerate(losses)]
  rows.insert(1, {'step': 4, 'eval_top1': 0.5, 'eval_loss': 1e9})  # eval rows do not count
  (tmp_path / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows) + '{"step": 8, "lo')
  log = bookkeeping.MetricsLog(str(tmp_path), resume_step=100, enabled=True)
  warning = log.divergence_before(6)  # the checkpoint of step 6, whose row is the third loss
  assert (warning is not None) == warned, warning
  if warned:
    assert 'step 6' in warning and '--config.init_from' in warning
  assert log.divergence_before(2) is None  # one row: nothing to compare


@pytest.mark.slow  # three main.py runs each (~1.5 min); SIGTERM at a step boundary: test_train.py, topologies: test_distributed.py
def test_sigterm_right_after_resuming_exits_75(tmp_path):
  args = [f'--config={DEMO}', '--config.checkpoint_every_steps=2', '--config.log_every_steps=2',
          f'--config.data.data_dir={tmp_path / "tfds"}']
  workdir = tmp_path / 'run'
  run_main(*args, '--config.num_train_steps=2', workdir=workdir)
  proc = subprocess.Popen([sys.executable, 'main.py', f'--workdir={workdir}', *args, '--config.num_train_steps=50'],
                          cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
  for line in proc.stdout:
    if line.startswith('Resuming'):
      break
  proc.send_signal(signal.SIGTERM)  # while it builds the steps and compiles
  out, _ = proc.communicate(timeout=600)
  assert proc.returncode == 75, out[-2000:]
  assert 'Preempted: saved step' in out
  resumed = run_main(*args, '--config.num_train_steps=50', workdir=workdir)
  assert 'step 50/50' in resumed.stdout


# ---------------------------------------------------------------------------------------------
# Another topology.
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow  # three main.py runs each (~1.5 min); SIGTERM at a step boundary: test_train.py, topologies: test_distributed.py
def test_resume_on_another_device_count_continues_the_data_stream(tmp_path):
  """Checkpointed on 4 devices, resumed on 1: restored with the new shardings, and every later batch is
  the one an uninterrupted 1-device run sees (same global batch; data_fingerprint per row)."""
  args = [f'--config={DEMO}', '--config.num_train_steps=20', '--config.checkpoint_every_steps=5',
          '--config.log_every_steps=5', '--config.eval_every_epochs=100', f'--config.data.data_dir={tmp_path / "tfds"}']
  reference = tmp_path / 'reference'
  run_main(*args, workdir=reference)
  workdir = tmp_path / 'moved'
  _kill_at('path:checkpoints/10', args, workdir, XLA_FLAGS='--xla_force_host_platform_device_count=4')
  resumed = run_main(*args, workdir=workdir)
  assert 'from step 10' in resumed.stdout and '| 1 devices on 1 process(es)' in resumed.stdout
  # Losses differ by round-off between 4 and 1 devices (docs/determinism.md); the batches do not.
  fingerprints = [[(r['step'], r['data_fingerprint']) for r in _rows(w) if 'loss' in r] for w in (reference, workdir)]
  assert fingerprints[0] == fingerprints[1] and len(fingerprints[0]) == 4
