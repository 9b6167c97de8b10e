"""The converter framework and CLI on a torchvision-layout ResNet state_dict."""
import numpy as np
import pytest

from lgvit import checkpoint
from lgvit.convert import ConversionError, __main__ as cli, from_torch

TINY = dict(stage_depths=(1, 1, 1, 1), stage_planes=(4, 8, 8, 8), stem_width=8, num_classes=3)


def torchvision_state_dict(rng):
  """A torchvision-named state_dict for the TINY ResNet (OIHW weights)."""
  sd = {}

  def conv(name, o, i, k):
    sd[f'{name}.weight'] = rng.normal(size=(o, i, k, k)).astype(np.float32)

  def bn(name, c):
    for p in ('weight', 'bias', 'running_mean'):
      sd[f'{name}.{p}'] = rng.normal(size=c).astype(np.float32)
    sd[f'{name}.running_var'] = rng.uniform(0.5, 2, size=c).astype(np.float32)
    sd[f'{name}.num_batches_tracked'] = np.array(3)

  conv('conv1', 8, 3, 7)
  bn('bn1', 8)
  cin = 8
  for s, planes in enumerate((4, 8, 8, 8)):
    p = f'layer{s + 1}.0'
    conv(f'{p}.conv1', planes, cin, 1), bn(f'{p}.bn1', planes)
    conv(f'{p}.conv2', planes, planes, 3), bn(f'{p}.bn2', planes)
    conv(f'{p}.conv3', planes * 4, planes, 1), bn(f'{p}.bn3', planes * 4)
    conv(f'{p}.downsample.0', planes * 4, cin, 1), bn(f'{p}.downsample.1', planes * 4)
    cin = planes * 4
  sd['fc.weight'] = rng.normal(size=(3, 32)).astype(np.float32)
  sd['fc.bias'] = rng.normal(size=3).astype(np.float32)
  return {f'module.{k}': v for k, v in sd.items()}


def test_from_torch_places_every_tensor():
  sd = torchvision_state_dict(np.random.default_rng(0))
  v = from_torch('resnet50', sd, image_size=64, **TINY)
  np.testing.assert_array_equal(v['params']['stem']['conv']['kernel'], sd['module.conv1.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(v['params']['fc']['kernel'], sd['module.fc.weight'].T)
  np.testing.assert_array_equal(v['batch_stats']['layer2_0']['conv2']['bn']['var'], sd['module.layer2.0.bn2.running_var'])


def test_from_torch_reports_all_problems_at_once():
  sd = torchvision_state_dict(np.random.default_rng(0))
  del sd['module.layer1.0.conv2.weight']
  sd['module.extra.weight'] = np.zeros(3, np.float32)
  sd['module.fc.bias'] = np.zeros(4, np.float32)
  with pytest.raises(ConversionError) as e:
    from_torch('resnet50', sd, image_size=64, **TINY)
  msg = str(e.value)
  assert 'layer1.0.conv2.weight' in msg and 'layer1_0/conv2/conv/kernel' in msg and 'extra.weight' in msg and 'fc/bias' in msg


def test_cli_writes_a_checkpoint_that_loads(tmp_path):
  sd = torchvision_state_dict(np.random.default_rng(1))
  np.savez(tmp_path / 'r.npz', **{f'sd/{k}': v for k, v in sd.items()})
  kwargs = '{"stage_depths": [1, 1, 1, 1], "stage_planes": [4, 8, 8, 8], "stem_width": 8}'
  assert cli.main(['--model', 'resnet50', '--checkpoint', str(tmp_path / 'r.npz'), '--out', str(tmp_path / 'out'),
                   '--image_size', '64', '--model_kwargs', kwargs]) == 0
  loaded = checkpoint.load_variables(str(tmp_path / 'out'))
  np.testing.assert_array_equal(loaded['params']['fc']['bias'], sd['module.fc.bias'])


class _CreatesFileWhenUnpickled:
  """What a malicious checkpoint does, harmlessly: unpickling it calls ``open(path, 'w')``."""

  def __init__(self, path):
    self.path = str(path)

  def __reduce__(self):
    return (open, (self.path, 'w'))


def _torch_checkpoint(tmp_path, name, **extra):
  """A .pth shaped like the official training checkpoints: the state_dict under ``state_dict``."""
  torch = pytest.importorskip('torch')  # requirements-test.txt installs it; skipped only without it
  sd = {k: torch.from_numpy(v) for k, v in torchvision_state_dict(np.random.default_rng(2)).items()}
  path = tmp_path / name
  torch.save({'state_dict': sd, **extra}, path)
  return str(path), sd


def _convert(checkpoint_path, out, *flags):
  kwargs = '{"stage_depths": [1, 1, 1, 1], "stage_planes": [4, 8, 8, 8], "stem_width": 8}'
  return cli.main(['--model', 'resnet50', '--checkpoint', checkpoint_path, '--out', str(out), '--image_size', '64',
                   '--model_kwargs', kwargs, *flags])


def test_pickle_that_would_run_code_is_refused_unless_trusted(tmp_path, capsys):
  marker = tmp_path / 'code_ran'
  path, _ = _torch_checkpoint(tmp_path, 'evil.pth', payload=_CreatesFileWhenUnpickled(marker))
  assert _convert(path, tmp_path / 'out') == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith('error: refusing to unpickle') and '--trust-pickle' in err[0], err
  assert not marker.exists()  # no code ran
  assert not (tmp_path / 'out').exists()
  # The opt-in does what it says: full unpickling, which runs the payload (proving the test's pickle is live).
  assert _convert(path, tmp_path / 'out', '--trust-pickle') == 0
  assert marker.exists()


def test_official_style_training_checkpoint_loads_without_trusting_pickle(tmp_path):
  """timm/CoTNet save ``args`` (argparse.Namespace), the epoch and numpy metrics beside the weights."""
  import argparse
  path, sd = _torch_checkpoint(tmp_path, 'cotnet_style.pth', args=argparse.Namespace(model='resnet50', lr=0.1),
                               epoch=3, metric=np.float64(79.5), optimizer={'state': {}, 'param_groups': []})
  assert _convert(path, tmp_path / 'out') == 0
  loaded = checkpoint.load_variables(str(tmp_path / 'out'))
  np.testing.assert_array_equal(loaded['params']['fc']['bias'], sd['module.fc.bias'].numpy())


@pytest.mark.parametrize('case,expect', [
    ('truncated.npz', 'is not a .npz archive'),
    ('garbage.npz', 'is not a .npz archive'),
    ('truncated.safetensors', 'is not a readable .safetensors file'),
    ('bad_kwargs', '--model_kwargs is not a JSON dict'),
    ('list_kwargs', '--model_kwargs is a JSON list, not a dict'),
    ('existing_out', 'already exists and is not empty'),
    ('other_model', 'state_dict does not fit resnet50'),
])
def test_bad_convert_inputs_are_one_line_errors_and_write_nothing(tmp_path, capsys, case, expect):
  from safetensors.numpy import save_file
  sd = torchvision_state_dict(np.random.default_rng(3))
  np.savez(tmp_path / 'good.npz', **sd)
  save_file(sd, str(tmp_path / 'good.safetensors'))
  checkpoint_file, kwargs = tmp_path / 'good.npz', None
  if case.startswith('truncated'):
    checkpoint_file = tmp_path / case
    checkpoint_file.write_bytes((tmp_path / f'good{checkpoint_file.suffix}').read_bytes()[:3000])
  elif case == 'garbage.npz':
    checkpoint_file = tmp_path / case
    checkpoint_file.write_bytes(b'\x80\x04 not numpy at all' * 50)
  elif case == 'bad_kwargs':
    kwargs = '{stage_depths: 1}'
  elif case == 'list_kwargs':
    kwargs = '[1, 1, 1, 1]'
  elif case == 'other_model':
    kwargs = '{"stage_depths": [2, 2, 2, 2], "stage_planes": [4, 8, 8, 8], "stem_width": 8}'
  out = tmp_path / 'out'
  if case == 'existing_out':
    out.mkdir()
    (out / 'keep.txt').write_text('mine')
  before = sorted(p.name for p in tmp_path.rglob('*'))
  argv = ['--model', 'resnet50', '--checkpoint', str(checkpoint_file), '--out', str(out), '--image_size', '64']
  if kwargs is not None:
    argv += ['--model_kwargs', kwargs]
  else:
    argv += ['--model_kwargs', '{"stage_depths": [1, 1, 1, 1], "stage_planes": [4, 8, 8, 8], "stem_width": 8}']
  assert cli.main(argv) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith('error: ') and expect in err[0], err
  assert sorted(p.name for p in tmp_path.rglob('*')) == before


def test_official_resnet_rs50_names_convert_to_se_resnetd50():
  """CoTNet's models/resnet_rs.py names (deep stem conv1.0/1/3/4/6 + bn1, strided 1x1 downsample.0/1, timm
  SEModule se.fc1/se.fc2 with biases after bn3): every tensor placed, none left over."""
  rng = np.random.default_rng(1)
  sd = {}

  def conv(name, o, i, k, bias=False):
    sd[f'{name}.weight'] = rng.normal(size=(o, i, k, k)).astype(np.float32)
    if bias:
      sd[f'{name}.bias'] = rng.normal(size=o).astype(np.float32)

  def bn(name, c):
    for p in ('weight', 'bias', 'running_mean'):
      sd[f'{name}.{p}'] = rng.normal(size=c).astype(np.float32)
    sd[f'{name}.running_var'] = rng.uniform(0.5, 2, size=c).astype(np.float32)

  conv('conv1.0', 8, 3, 3), bn('conv1.1', 8), conv('conv1.3', 8, 8, 3), bn('conv1.4', 8), conv('conv1.6', 16, 8, 3)
  bn('bn1', 16)
  cin = 16
  for s_, planes in enumerate((8, 8, 8, 8)):  # hidden = planes (timm rounds SE widths to multiples of 8)
    p = f'layer{s_ + 1}.0'
    conv(f'{p}.conv1', planes, cin, 1), bn(f'{p}.bn1', planes)
    conv(f'{p}.conv2', planes, planes, 3), bn(f'{p}.bn2', planes)
    conv(f'{p}.conv3', planes * 4, planes, 1), bn(f'{p}.bn3', planes * 4)
    conv(f'{p}.se.fc1', planes, planes * 4, 1, bias=True), conv(f'{p}.se.fc2', planes * 4, planes, 1, bias=True)
    conv(f'{p}.downsample.0', planes * 4, cin, 1), bn(f'{p}.downsample.1', planes * 4)
    cin = planes * 4
  sd['fc.weight'] = rng.normal(size=(3, 32)).astype(np.float32)
  sd['fc.bias'] = rng.normal(size=3).astype(np.float32)
  v = from_torch('se_resnetd50', sd, image_size=64, **{**TINY, 'stage_planes': (8, 8, 8, 8), 'stem_width': 8})
  se = v['params']['layer3_0']['se']
  np.testing.assert_array_equal(se['fc1']['kernel'], sd['layer3.0.se.fc1.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(se['fc2']['bias'], sd['layer3.0.se.fc2.bias'])
