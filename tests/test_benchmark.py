"""The benchmark command runs and writes its table."""
import json

from lgvit import benchmark


def test_benchmark_cli_writes_rows(tmp_path, capsys):
  out = tmp_path / 'bench'
  assert benchmark.main(['--models', 'resnet50', '--batch', '1', '--size', '32', '--mode', 'infer', '--warmup', '0',
                         '--repeats', '1', '--out', str(out)]) == 0
  rows = json.loads((tmp_path / 'bench.json').read_text())['rows']
  assert rows[0]['model'] == 'resnet50' and rows[0]['images_per_s'] > 0 and rows[0]['params_m'] == 25.56
  assert rows[0]['gflop_per_step'] > 0
  assert '| resnet50 | infer |' in capsys.readouterr().out
