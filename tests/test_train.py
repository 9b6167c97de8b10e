"""End-to-end runs of main.py: ImageNet via TFDS's own builder, kill + resume, bad inputs (multi-device: test_distributed.py)."""
import json
import os
import pathlib
import queue
import random
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from conftest import FAST_COMPILE_FLAG, build_tiny_imagenet, demo_config, subprocess_env

REPO = pathlib.Path(__file__).resolve().parents[1]
DEMO = 'configs/resnet50.py:demo'


def run_main(*args, workdir, check=True, timeout=600, **env):
  cmd = [sys.executable, 'main.py', f'--workdir={workdir}', *args]
  proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env(**env), capture_output=True, text=True, timeout=timeout)
  if check and proc.returncode != 0:
    raise AssertionError(f'{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}')
  return proc


@pytest.fixture(scope='module')
def tiny_imagenet(tmp_path_factory):
  """imagenet2012 prepared by TFDS's own builder from a synthetic manual_dir (3 synsets, 7 val images)."""
  return build_tiny_imagenet(tmp_path_factory.mktemp('imagenet'))


def test_main_trains_and_evaluates_on_tfds_imagenet(tiny_imagenet, tmp_path):
  """Also: unreadable images (2 of 20 train, 1 of 8 validation) are skipped and counted, not a crash."""
  workdir = tmp_path / 'run'
  proc = run_main(f'--config={DEMO}', '--config.data.dataset=imagenet2012', '--config.num_classes=1000',
                  f'--config.data.data_dir={tiny_imagenet}', '--config.batch_size=5', '--config.eval_batch_size=4',
                  '--config.num_train_steps=8', '--config.log_every_steps=2', '--config.checkpoint_every_steps=8',
                  workdir=workdir)
  assert 'step 8/8' in proc.stdout
  rows = [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]
  evals = [r for r in rows if 'eval_count' in r]
  # Every readable validation image exactly once (2 batches of 4), the unreadable one counted apart.
  assert evals and evals[-1]['eval_count'] == 7 and evals[-1]['eval_skipped'] == 1
  # 8 steps x 5 = 2 epochs of the 20 train images: each unreadable one was met twice.
  assert sum(r.get('skipped_images', 0) for r in rows if 'loss' in r) == 4
  assert 'WARNING: skipped' in proc.stdout and 'unreadable image' in proc.stdout
  assert all(np.isfinite(r['loss']) for r in rows if 'loss' in r)
  assert (workdir / 'checkpoints' / '8').is_dir()


def _final_params(workdir):
  from lgvit import checkpoint
  return checkpoint.load_variables(str(workdir), prefer_ema=False)


def _kill_at_random_moment(args, workdir, rng, max_delay_s):
  """Starts main.py, waits until it trains, then SIGKILLs it after a random delay; returns the delay and
  whether the kill landed (on a fast machine the run can finish all its steps first)."""
  proc = subprocess.Popen([sys.executable, 'main.py', f'--workdir={workdir}', *args], cwd=REPO, env=subprocess_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
  lines: queue.Queue = queue.Queue()
  threading.Thread(target=lambda: [lines.put(l) for l in proc.stdout], daemon=True).start()
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    try:
      if lines.get(timeout=0.05).startswith(('step ', 'eval @')):
        break
    except queue.Empty:
      pass
  delay = rng.uniform(0.0, max_delay_s)
  time.sleep(delay)
  proc.send_signal(signal.SIGKILL)
  killed = proc.wait() == -signal.SIGKILL
  return delay, killed


def _kill_at(moment, args, workdir, **env):
  """Runs main.py under tests/helpers/kill_at.py, which SIGKILLs it at ``moment``; returns the process."""
  proc = subprocess.run([sys.executable, 'tests/helpers/kill_at.py', moment, f'--workdir={workdir}', *args],
                        cwd=REPO, env=subprocess_env(**env), capture_output=True, text=True, timeout=600)
  assert proc.returncode == -signal.SIGKILL, (moment, proc.stdout[-2000:], proc.stderr[-2000:])
  return proc


def _assert_same_run(reference, workdir, context=None):
  """Final params, best/ and metrics.jsonl of ``workdir`` equal ``reference``'s bit for bit."""
  import jax
  from lgvit import checkpoint
  for ref, got in ((_final_params(reference), _final_params(workdir)),
                   (checkpoint.load_variables(str(reference / 'best')), checkpoint.load_variables(str(workdir / 'best')))):
    for a, b in zip(jax.tree_util.tree_leaves(ref), jax.tree_util.tree_leaves(got)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(context))
  assert (reference / 'metrics.jsonl').read_text() == (workdir / 'metrics.jsonl').read_text(), context


def test_killed_mid_save_and_after_a_best_save_resumes_to_the_uninterrupted_run(digits_dir, tmp_path):
  """The default suite's share of the kill -9 cases (all of them: the slow test below): SIGKILL in the
  middle of the save of step 10, then right after best/ saved step 11, which no checkpoint covers."""
  from lgvit import train
  config = demo_config(digits_dir, num_train_steps=20, checkpoint_every_steps=5, log_every_steps=5,
                       eval_every_epochs=0.5)  # evals at steps 11 and 20 (22 steps per epoch)
  reference = tmp_path / 'reference'
  train.train_and_evaluate(config, str(reference), async_checkpoints=False)

  args = [f'--config={DEMO}', f'--config.data.data_dir={digits_dir}', '--config.num_train_steps=20',
          '--config.checkpoint_every_steps=5', '--config.log_every_steps=5', '--config.eval_every_epochs=0.5']
  workdir = tmp_path / 'killed'
  checkpoints = workdir / 'checkpoints'
  # main.py under this process's XLA flags: the same executables, so the same bits.
  _kill_at('path:checkpoints/10.orbax-checkpoint-tmp*', args, workdir, XLA_FLAGS=FAST_COMPILE_FLAG)
  assert not (checkpoints / '10').exists() and (checkpoints / '5').is_dir()
  _kill_at('path:best/11', args, workdir, XLA_FLAGS=FAST_COMPILE_FLAG)
  assert (workdir / 'best' / '11').is_dir() and max(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit()) < 11
  assert train.train_and_evaluate(config, str(workdir))['step'] == 20
  _assert_same_run(reference, workdir)


@pytest.mark.slow  # seven runs of main.py (~2 min on 2 cores); the test above is the default suite's share
def test_killed_at_random_points_resumes_and_matches_uninterrupted(tmp_path):
  """SIGKILL while config.json is written, in the middle of a checkpoint save, right after a best/ save
  that the next checkpoint does not cover yet, while metrics.jsonl is rewritten, in the middle of a
  best/ save, then at a random moment; the final params, best/ and metrics.jsonl equal an
  uninterrupted run's bit for bit. Each rerun also finds the killed run's lock, which must not stop it."""
  # Evals at steps 11, 22, 33 and 40 (half an epoch of 22 steps), checkpoints every 5 steps: every eval
  # that improves saves best/ between two checkpoints.
  args = [f'--config={DEMO}', '--config.num_train_steps=40', '--config.checkpoint_every_steps=5',
          '--config.log_every_steps=5', '--config.eval_every_epochs=0.5', f'--config.data.data_dir={tmp_path / "tfds"}']
  reference = tmp_path / 'reference'
  run_main(*args, workdir=reference)

  workdir = tmp_path / 'killed'
  checkpoints = workdir / 'checkpoints'
  # While config.json is written (a fresh workdir), then while the save of step 10 is in flight.
  _kill_at('replace:config.json', args, workdir)
  assert not (workdir / 'config.json').exists() and json.loads((workdir / 'lock').read_text())['pid']  # a stale lock
  _kill_at('path:checkpoints/10.orbax-checkpoint-tmp*', args, workdir)
  assert any(p.name.startswith('10.orbax-checkpoint-tmp') for p in checkpoints.iterdir())  # killed mid-save
  assert not (checkpoints / '10').exists() and (checkpoints / '5').is_dir()
  # The rerun resumes from step 5 and saves best/ at step 11; the kill leaves a best/ newer than every
  # checkpoint, which the next rerun, resuming from step 10, must save again.
  _kill_at('path:best/11', args, workdir)
  assert (workdir / 'best' / '11').is_dir() and max(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit()) < 11
  # While metrics.jsonl is rewritten at resume, then in the middle of that best/ save of step 11.
  _kill_at('replace:metrics.jsonl', args, workdir)
  _kill_at('path:best/*.orbax-checkpoint-tmp*', args, workdir)

  seed = int(os.environ.get('LGVIT_KILL_SEED', time.time_ns() % 2**31))
  rng = random.Random(seed)
  delay, killed = _kill_at_random_moment(args, workdir, rng, max_delay_s=3.0)

  resumed = run_main(*args, workdir=workdir)
  # A random kill that came after the last step leaves a finished run: the rerun resumes at step 40.
  assert 'Resuming' in resumed.stdout, (seed, delay, resumed.stdout[-2000:])
  assert ('step 40/40' in resumed.stdout) or (not killed and 'from step 40 ' in resumed.stdout), (
      seed, delay, resumed.stdout[-2000:])

  _assert_same_run(reference, workdir, f'LGVIT_KILL_SEED={seed} delay={delay}')
  assert sorted(p.name for p in (workdir / 'best').iterdir()) == ['40']
  # metrics.jsonl holds every step's data_fingerprint: the resumed run saw the same data stream.
  rows = [json.loads(l) for l in (reference / 'metrics.jsonl').read_text().splitlines()]
  assert len({r['data_fingerprint'] for r in rows if 'loss' in r}) == 8


@pytest.mark.parametrize('overrides,expect', [
    (['--config.model=resnet5'], "Unknown model 'resnet5'. Did you mean 'resnet50'"),
    (['--config.batch_sizee=8'], 'Did you mean "batch_size"'),
    (['--config.data.image_size=16'], 'at least 32x32'),
    (['--config.data.dataset=imagenet2012', '--config.num_classes=1000'], 'tfds build imagenet2012 --manual_dir'),
    (['--config.evals.ema.dataset=imagenet_v2/matched-frequency', '--config.evals.ema.split=test',
      '--config.ema_decay=0.99'], 'evaluator ema: dataset'),  # before training (docs/evaluation.md)
    (['--config.batch_size=7'], None),  # checked below with 2 devices
])
def test_bad_inputs_give_one_line_errors(tmp_path, overrides, expect):
  env = {}
  if expect is None:
    env['XLA_FLAGS'] = '--xla_force_host_platform_device_count=2'
    expect = 'not divisible by the 2 devices'
  proc = run_main(f'--config={DEMO}', f'--config.data.data_dir={tmp_path / "tfds"}', *overrides,
                  workdir=tmp_path / 'w', check=False, **env)
  assert proc.returncode == 2, proc.stderr[-2000:]
  errors = [l for l in proc.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1 and expect in errors[0], proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr


def test_sigterm_checkpoints_at_the_step_boundary_and_resumes(tmp_path):
  # 60 steps: the signal is handled at the first step boundary after it arrives (~step 6).
  args = [f'--config={DEMO}', '--config.num_train_steps=60', '--config.checkpoint_every_steps=1000',
          '--config.log_every_steps=1', f'--config.data.data_dir={tmp_path / "tfds"}']
  workdir = tmp_path / 'run'
  proc = subprocess.Popen([sys.executable, 'main.py', f'--workdir={workdir}', *args], cwd=REPO, env=subprocess_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
  for line in proc.stdout:  # wait until training is under way
    if line.startswith('step 5/'):
      break
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 75, out[-2000:]
  stopped = int(out.split('Preempted: saved step ')[1].split(';')[0])
  assert 5 <= stopped < 60
  assert (workdir / 'checkpoints' / str(stopped)).is_dir()
  resumed = run_main(*args, workdir=workdir)
  assert f'from step {stopped}' in resumed.stdout and 'step 60/60' in resumed.stdout


def _tree_snapshot(root: pathlib.Path) -> dict[str, bytes]:
  return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob('*')) if p.is_file()}


def test_other_architecture_is_refused_and_init_from_names_mismatches(digits_dir, tmp_path):
  """A workdir of another architecture is refused untouched; init_from with other shapes names them."""
  from lgvit import errors, train
  workdir = tmp_path / 'run'
  train.train_and_evaluate(demo_config(digits_dir), str(workdir), async_checkpoints=False)
  before = _tree_snapshot(workdir)
  assert any(k.startswith('checkpoints/2/state/') for k in before)

  with pytest.raises(errors.LgvitError) as info:
    train.train_and_evaluate(demo_config(digits_dir, model_kwargs__stem_width=32), str(workdir))
  err = str(info.value)
  assert 'holds a run of another architecture' in err and 'model_kwargs' in err and '--force_config' in err, err
  assert _tree_snapshot(workdir) == before  # nothing written, moved or deleted

  with pytest.raises(errors.LgvitError) as info:
    train.train_and_evaluate(demo_config(digits_dir, model_kwargs__stem_width=32, init_from=str(workdir)),
                             str(tmp_path / 'finetune'))
  err = str(info.value)
  assert 'init_from does not fit the model' in err and '--config.init_skip' in err, err
  assert 'stem/conv/kernel: checkpoint (7, 7, 3, 16) vs model (7, 7, 3, 32)' in err, err
  assert 'layer1_0/conv1/conv/kernel: checkpoint (1, 1, 16, 16) vs model (1, 1, 32, 16)' in err, err
  assert _tree_snapshot(workdir) == before
