"""The side-by-side table of benchmarks/official (ratios, goal, roofline), from synthetic rows."""
import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_side_by_side():
  spec = importlib.util.spec_from_file_location('side_by_side', os.path.join(ROOT, 'benchmarks/official/side_by_side.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def cell(side, ips, **extra):
  row = dict(side=side, model='nommer_t', mode='infer', threads=1, images_per_s=ips, rss_peak_mb=1000.0, round=0)
  if side == 'lgvit':
    row.update(compile_s=3.0, gflop_per_step=80.0, batch=8)
  return {**row, **extra}


def test_table_puts_each_cell_against_the_goal_and_the_matmul_peak():
  sbs = load_side_by_side()
  rows = [{'side': 'command', 'command': 'python side_by_side.py --rounds 1'},
          {'side': 'peak', 'threads': 1, 'xla_gflop_per_s': 100.0, 'torch_gflop_per_s': 90.0},
          cell('torch', 5.0), cell('lgvit', 6.0)]
  text = sbs.table(rows, ['CPU: test'])
  line = next(l for l in text.splitlines() if l.startswith('| NomMer-T'))
  # 6 / 5 = 1.2x against the 1.5x inference goal: 20% short. 10 GFLOP/img at a 100 GFLOP/s peak
  # (the higher side's): 5 img/s = 50%, 6 img/s = 60%, the goal 7.5 img/s = 75%.
  assert '**1.20x**' in line and '>= 1.5x' in line and 'no (-20%)' in line
  assert line.rstrip().endswith('| 10.0 | 50% / 60% / 75% |')
  assert '`python side_by_side.py --rounds 1`' in text and '100.0 at 1 core' in text


def test_table_without_a_peak_row_leaves_the_roofline_empty():
  sbs = load_side_by_side()
  text = sbs.table([cell('torch', 4.0), cell('lgvit', 4.0, mode='train')], [])
  assert 'NomMer-T' not in text  # the two sides are different cells: no ratio
  text = sbs.table([cell('torch', 4.0, mode='train'), cell('lgvit', 4.0, mode='train')], [])
  line = next(l for l in text.splitlines() if l.startswith('| NomMer-T'))
  assert '**1.00x**' in line and '| yes |' in line and line.rstrip().endswith('| 10.0 | |')
