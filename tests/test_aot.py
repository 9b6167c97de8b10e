"""``python -m lgvit.aot``: the batch search, the libtpu checks and (where libtpu is installed) a real
deviceless TPU compile of a tiny model's train step."""
import importlib.util
import os
import subprocess
import sys

import pytest

from lgvit import ahead_of_time, aot

HAS_LIBTPU = importlib.util.find_spec('libtpu') is not None
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fake_compiled(batch, per_image, fixed, args=0):
  return ahead_of_time.Compiled(batch, 0.0, 0.0, 0.0, args, fixed + per_image * batch, 0, 0, 0)


@pytest.mark.parametrize('search,want', [('verify', '37'), ('fit', '~37'), ('one', '>=29')])
def test_largest_batch_search_on_an_affine_memory_model(search, want):
  # 1 GiB fixed + 100 MiB per image against 4.7 GiB: 37 images fit, 38 do not.
  measured = []

  def measure(b):
    measured.append(b)
    return fake_compiled(b, 100 * 2**20, 2**30)

  hbm = int(4.7 * 2**30)
  assert ahead_of_time.largest_fitting_batch(measure, hbm, measure(16), search) == want
  assert len(measured) <= 4


def test_search_steps_down_when_the_fit_was_optimistic():
  # Memory grows faster than linearly past 32 images: the fitted guess fails and one step down fits.
  def measure(b):
    return fake_compiled(b, 100 * 2**20 if b <= 32 else 130 * 2**20, 2**30)

  got = int(ahead_of_time.largest_fitting_batch(measure, int(4.7 * 2**30), measure(16)))
  assert measure(got).total_bytes <= 4.7 * 2**30 and got < 37


# What libtpu 0.0.42.1 says (a demo ResNet-50 at 160000 images per chip on v5e:2x2).
LIBTPU_REFUSAL = ('RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries '
                  '(25.12G) exceeds available HBM (15.75G).')


def test_a_refused_compile_becomes_does_not_fit_with_the_bytes_libtpu_reported(monkeypatch):
  class Refused:
    def lower(self, *args):
      return self

    def compile(self):
      raise RuntimeError('jaxlib: ' + LIBTPU_REFUSAL)

  monkeypatch.setattr(ahead_of_time, 'step_and_args', lambda *a, **k: (Refused(), ()))
  monkeypatch.setattr('lgvit.modeling.make_mesh', lambda devices: None)
  with pytest.raises(ahead_of_time.DoesNotFit) as refusal:
    ahead_of_time.compile_step(None, [0] * 8, 64)
  assert refusal.value.batch_per_chip == 64 and refusal.value.message.startswith('RESOURCE_EXHAUSTED')
  assert abs(refusal.value.needed_bytes - 25.12 * 2**30) < 2**20
  assert ahead_of_time.DoesNotFit(8, 0.0, 'RESOURCE_EXHAUSTED: Used 17.5G of 15.75G hbm').needed_bytes == int(17.5 * 2**30)
  assert ahead_of_time.DoesNotFit(8, 0.0, 'RESOURCE_EXHAUSTED: out of memory').needed_bytes is None


def affine_or_refused(calls, limit_bytes):
  """1 GiB fixed + 100 MiB per image; libtpu refuses programs over ``limit_bytes``."""
  def measure(b):
    calls.append(b)
    c = fake_compiled(b, 100 * 2**20, 2**30)
    if c.total_bytes > limit_bytes:
      raise ahead_of_time.DoesNotFit(b, 0.0, f'RESOURCE_EXHAUSTED: HLO temporaries {c.total_bytes / 2**30:.2f}G exceed')
    return c
  return measure


@pytest.mark.parametrize('search,want', [('verify', '37'), ('fit', '~37'), ('one', '>=36')])
def test_search_below_a_refused_batch_halves_until_a_program_compiles(search, want):
  hbm = int(4.7 * 2**30)
  calls = []
  measure = affine_or_refused(calls, hbm)
  with pytest.raises(ahead_of_time.DoesNotFit) as refusal:
    measure(128)
  assert ahead_of_time.search_below(measure, hbm, refusal.value, search) == want
  assert calls[:3] == [128, 64, 32]  # 64 refused too; 32 is where the search starts


def test_search_never_answers_at_or_above_the_refused_batch():
  # Everything up to 37 fits by the bytes, but libtpu refuses from 30 on: the answer is below 30.
  hbm = int(4.7 * 2**30)
  measure = affine_or_refused([], fake_compiled(29, 100 * 2**20, 2**30).total_bytes)
  assert int(ahead_of_time.largest_fitting_batch(measure, hbm, measure(16), 'verify', refused=30)) < 30
  assert ahead_of_time.largest_fitting_batch(measure, hbm, measure(16), 'fit', refused=30) == '~29'
  assert ahead_of_time.largest_fitting_batch(measure, int(9 * 2**30), measure(16), 'one', refused=30) == '16-29'
  assert ahead_of_time.search_below(affine_or_refused([], 0), hbm, ahead_of_time.DoesNotFit(4, 0.0, ''), 'verify') == '0'


def test_the_command_prints_a_no_fit_row_where_libtpu_refuses(monkeypatch, capsys):
  hbm = int(4.7 * 2**30)
  monkeypatch.setattr(ahead_of_time, 'check_libtpu', lambda: None)
  monkeypatch.setattr(ahead_of_time, 'topology_devices', lambda name, bounds: [type('Chip', (), {
      'device_kind': 'TPU v5 lite', 'process_index': 0})()] * 8)
  monkeypatch.setattr(ahead_of_time, 'chip_hbm_bytes', lambda device, override: hbm)
  measure = affine_or_refused([], hbm)
  monkeypatch.setattr(ahead_of_time, 'compile_step', lambda config, devices, b, mode: measure(b))
  assert aot.main(['--topology', 'v5e:2x4', '--models', 'resnet50', '--batch-per-chip', '64',
                   '--search', 'verify', '--bytes']) == 0
  out = capsys.readouterr()
  assert 'resnet50 at 64/chip does not fit: RESOURCE_EXHAUSTED' in out.err
  row = next(l for l in out.out.splitlines() if l.startswith('| resnet50 |'))
  cells = [c.strip() for c in row.strip('|').split('|')]
  header = [c.strip() for c in next(l for l in out.out.splitlines() if l.startswith('| model')).strip('|').split('|')]
  got = dict(zip(header, cells))
  assert got['fits'] == 'NO' and got['batch/chip'] == '64' and got['max batch/chip'] == '37'
  assert got['temp GiB'] == got['total GiB'] == '>7.25' and got['HBM GiB'] == '4.70' and got['args GiB'] == ''


def test_missing_or_mismatched_libtpu_is_a_one_line_error(monkeypatch, capsys):
  import importlib.metadata as md
  real = md.version

  def no_libtpu(name):
    if name == 'libtpu':
      raise md.PackageNotFoundError(name)
    return real(name)

  monkeypatch.setattr(md, 'version', no_libtpu)
  assert aot.main(['--topology', 'v5e:2x2', '--models', 'resnet50']) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith('error: libtpu is not installed') and 'requirements-tpu.txt' in err and '\n' not in err
  monkeypatch.setattr(md, 'version', lambda name: '0.0.1' if name == 'libtpu' else real(name))
  monkeypatch.setattr(ahead_of_time, 'libtpu_requirement', lambda: '==0.0.42.*')
  assert aot.main(['--topology', 'v5e:2x2', '--models', 'resnet50']) == 2
  assert 'libtpu 0.0.1 does not match jax' in capsys.readouterr().err


def test_bad_topology_names_say_what_to_use():
  with pytest.raises(ahead_of_time.AotError, match='v5e:2x4'):
    ahead_of_time.parse_topology('v5litepod-8')
  with pytest.raises(ahead_of_time.AotError, match='GEN:SHAPE'):
    ahead_of_time.parse_topology('v4:2x2')  # v4 slices are 3-D


@pytest.mark.skipif(not HAS_LIBTPU, reason='libtpu not installed (pip install -r requirements-tpu.txt)')
def test_tiny_train_step_compiles_for_a_tpu_topology():
  # A subprocess: the TPU compile-only client needs jax_platforms set before any backend starts.
  # ~40 s on 2 busy cores (the demo ResNet, every part of the real train step).
  cmd = [sys.executable, '-m', 'lgvit.aot', '--topology', 'v5e:2x2', '--models', 'resnet50', '--config',
         os.path.join(REPO, 'configs', 'resnet50.py') + ':demo', '--search', 'one', '--bytes']
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  row = [line for line in proc.stdout.splitlines() if line.startswith('| resnet50 |')]
  assert len(row) == 1, proc.stdout
  cells = [c.strip() for c in row[0].strip('|').split('|')]
  header = [c.strip() for c in next(l for l in proc.stdout.splitlines() if l.startswith('| model')).strip('|').split('|')]
  got = dict(zip(header, cells))
  assert got['batch/chip'] == '16' and got['fits'] == 'yes' and got['HBM GiB'] == '16.00'
  assert float(got['GFLOP/img']) > 0 and float(got['temp GiB']) > 0


def test_native_train_step_lowers_for_cuda():
  # No GPU here: jax.export runs the CUDA lowering rules only. The demo CoTNet has grouped convs,
  # CoT aggregation and BatchNorms: every op with two kernel paths.
  config = ahead_of_time.load_config('cotnet50', os.path.join(REPO, 'configs', 'cotnet50.py') + ':demo')
  config.dtype = 'bfloat16'
  exported = ahead_of_time.export_step(config, 'cuda')
  assert exported.platforms == ('cuda',)
  text = exported.mlir_module()
  assert 'feature_group_count = 4' in text  # the native grouped conv, not the CPU split


def test_detection_and_segmentation_configs_resolve_and_detection_steps_lower_for_tpu():
  """A Mask R-CNN / UperNet name finds its task's config file with its backbone; the detector's train and
  eval steps, on the task's batch shapes (lgvit.data.det_pipeline's contract), lower for TPU."""
  config = ahead_of_time.load_config('mask_rcnn_swin_t')
  assert (config.task, config.model, tuple(config.data.pad_size)) == ('detection', 'mask_rcnn_swin_t', (1344, 1344))
  seg = ahead_of_time.load_config('upernet_nommer_t')
  assert (seg.task, seg.model) == ('segmentation', 'upernet_nommer_t')
  demo = ahead_of_time.load_config('mask_rcnn_resnet50', 'mask_rcnn.py:backbone=resnet50,demo')
  for mode in ('train', 'infer'):
    exported = ahead_of_time.export_step(demo, 'tpu', mode=mode)
    assert exported.platforms == ('tpu',)
    shapes = [(a.shape, str(a.dtype)) for a in exported.in_avals]
    assert ((2, 8, 64, 64), 'uint8') in shapes and ((2, 128, 128, 3), 'uint8') in shapes, shapes  # gt_masks, images
