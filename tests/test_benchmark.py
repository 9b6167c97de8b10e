"""The benchmark command runs and writes its table."""
import json

import pytest

from lgvit import benchmark


def test_benchmark_cli_writes_rows(tmp_path, capsys):
  out = tmp_path / 'bench'
  assert benchmark.main(['--models', 'resnet50', '--batch', '1', '--size', '32', '--mode', 'infer', '--warmup', '0',
                         '--repeats', '1', '--out', str(out)]) == 0
  rows = json.loads((tmp_path / 'bench.json').read_text())['rows']
  assert rows[0]['model'] == 'resnet50' and rows[0]['images_per_s'] > 0 and rows[0]['params_m'] == 25.56
  assert rows[0]['gflop_per_step'] > 0
  assert '| resnet50 | infer |' in capsys.readouterr().out


def test_benchmark_host_devices_shards_the_batch(tmp_path):
  out = tmp_path / 'bench'
  assert benchmark.main(['--models', 'resnet50', '--batch', '2', '--size', '32', '--mode', 'train', '--warmup', '0',
                         '--repeats', '1', '--host-devices', '2', '--out', str(out)]) == 0
  row = json.loads((tmp_path / 'bench.json').read_text())['rows'][0]
  assert row['host_devices'] == 2 and row['images_per_s'] > 0
  assert '--xla_force_host_platform_device_count=2' in row['xla_flags']


def test_benchmark_host_devices_rejects_an_odd_batch(capsys):
  with pytest.raises(SystemExit):
    benchmark.main(['--models', 'resnet50', '--batch', '3', '--host-devices', '2'])
  assert 'multiple of --host-devices 2' in capsys.readouterr().err
