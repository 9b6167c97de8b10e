"""A first run's console holds lgvit's lines only; ``--verbosity`` brings the libraries' logs back.

The noise this keeps out (issue #18.5): TensorFlow's C++ start-up lines (abseil's banner, oneDNN,
CPU-feature notices), TFDS's "Variant folder ... has no dataset_info.json" and "Downloading and
preparing dataset Unknown size ..." for the embedded digits, and matplotlib's font-cache lines, which
appeared because TensorFlow imports Keras, which imports matplotlib.pyplot (lgvit/quiet.py).
"""
import os
import re
import subprocess
import sys

import pytest
from conftest import REPO, subprocess_env

from lgvit import quiet

NOISE = [
    r'absl::InitializeLog', r'oneDNN', r'cpu_feature_guard', r'This TensorFlow binary is optimized',
    r'Variant folder', r'dataset_info\.json', r'Downloading and preparing', r'downloaded and prepared',
    r'Unknown size', r'fontManager', r'font cache', r'^[IW]\d{4} ',
]
DEMO = ['main.py', '--config=configs/resnet50.py:demo', '--config.num_train_steps=1', '--config.log_every_steps=1']


def first_run_env(tmp_path, **extra):
  """A new user's environment: nothing quietened, no TFDS data and no matplotlib cache yet. JAX on CPU:
  libtpu (requirements-tpu.txt, not the quickstart's) would add its own lines on a host without a TPU."""
  env = subprocess_env(TFDS_DATA_DIR=str(tmp_path / 'tfds'), MPLCONFIGDIR=str(tmp_path / 'mpl'),
                       JAX_PLATFORMS='cpu', **extra)
  env.pop('TF_CPP_MIN_LOG_LEVEL')
  return env


def run_demo(tmp_path, *flags):
  result = subprocess.run([sys.executable, *DEMO, f'--workdir={tmp_path / "w"}', *flags], cwd=REPO,
                          env=first_run_env(tmp_path), capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout + result.stderr


def test_a_first_demo_run_prints_lgvit_lines_only(tmp_path):
  console = run_demo(tmp_path)
  noise = [l for l in console.splitlines() if any(re.search(p, l) for p in NOISE)]
  assert not noise, '\n'.join(noise)
  built = f"building the embedded digits dataset (once) in {tmp_path / 'tfds' / 'lgvit_digits' / '1.0.0'}"
  lines = console.splitlines()
  assert lines[0] == built and lines.count(built) == 1, console
  assert lines[-1].startswith('done: step 1 | top-1 ')
  assert not (tmp_path / 'mpl').exists(), 'matplotlib was imported on the training path'
  assert (tmp_path / 'tfds' / 'lgvit_digits' / '1.0.0' / 'dataset_info.json').exists()


def test_verbosity_brings_the_libraries_logs_back(tmp_path):
  console = run_demo(tmp_path, '--verbosity=0')
  assert 'building the embedded digits dataset (once)' in console
  assert re.search(r'^I\d{4} .*Generating dataset lgvit_digits', console, re.M), console[-3000:]  # TFDS, absl info


def test_importing_train_imports_neither_matplotlib_nor_prints(tmp_path):
  code = ('import sys, lgvit.train; assert "tensorflow" in sys.modules; '
          'assert "matplotlib" not in sys.modules, "matplotlib imported"; '
          'import matplotlib; print("matplotlib importable afterwards")')
  result = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, env=first_run_env(tmp_path),
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  assert result.stdout == 'matplotlib importable afterwards\n' and result.stderr == ''


@pytest.mark.parametrize('line, level, noise', [
    ('I0000 00:00:1796183304.929909   17897 port.cc:153] oneDNN custom operations are on.', 2, True),
    ('W1202 03:48:30.451540 140150 file_utils.py:394] a warning', 2, True),
    ('W1202 03:48:30.451540 140150 file_utils.py:394] a warning', 1, False),
    ('E0000 00:00:17961.1   17897 common_lib.cc:554] INVALID_ARGUMENT: ...', 2, False),
    ('I1202 04:02:04.244539 140393192663936 dataset_builder.py:711] Generating dataset', 1, True),
    ('I0000 00:00:1796183304.929909   17897 port.cc:153] oneDNN custom operations are on.', 0, False),
    (quiet._ABSL_BANNER + '\n', 1, True),
    (quiet._ABSL_BANNER, 0, False),
    ('Traceback (most recent call last):', 3, False),
    ('I1202 is how a sentence could start', 2, False),  # not glog's "<letter><mmdd> " + time
])
def test_is_tf_noise_follows_tf_cpp_min_log_level(line, level, noise):
  assert quiet.is_tf_noise(line, level) is noise


def test_filtered_stderr_keeps_what_is_not_noise(capfd):
  with quiet._filtered_stderr(2):
    os.write(2, b'I0000 00:00:1.0   1 port.cc:153] oneDNN custom operations are on.\n')
    os.write(2, b'E0000 00:00:1.0   1 x.cc:1] a real error\n')
    os.write(2, b'a line of its own\n')
  assert capfd.readouterr().err == 'E0000 00:00:1.0   1 x.cc:1] a real error\na line of its own\n'


def test_filtered_stderr_replays_everything_when_the_block_raises(capfd):
  with pytest.raises(ImportError):
    with quiet._filtered_stderr(2):
      os.write(2, b'I0000 00:00:1.0   1 loader.cc:1] what the failed import said\n')
      raise ImportError('broken')
  assert 'what the failed import said' in capfd.readouterr().err
