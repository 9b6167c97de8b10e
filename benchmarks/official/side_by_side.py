"""lgvit vs the authors' PyTorch code, side by side on this machine: one table of ratios.

    TORCH_PY=/path/to/torch-venv/bin/python \\
    LGVIT_OFFICIAL_NOMMER=... LGVIT_OFFICIAL_COTNET=... LGVIT_OFFICIAL_LESA=... \\
    .venv/bin/python benchmarks/official/side_by_side.py --rounds 3 --out benchmarks/official/results/NAME

Every cell (model x inference/train x 1/2 cores x side) runs in a fresh process; within a round the
two sides of a cell run back to back, and the side that goes first alternates between rounds, so
the machine's drift (tens of percent over minutes on a cloud VM) hits both sides alike. The table
shows the median images/s of the rounds per side and lgvit / official, against the goal of the CPU
issue: inference >= 1.5x the official NomMer, CoTNet and LESA code and >= 1.0x the torchvision and
timm baselines, training >= 1.0x everywhere. Raw rows go to OUT.jsonl as they finish (a rerun with
the same OUT resumes), the table to OUT.md. PyTorch models: benchmarks/official/torch_models.py.
lgvit runs at the default flags a user gets (``--lgvit-flags`` adds XLA flags, for experiments).

The roofline columns put each cell against what the CPU can do at all: the float32 2048^3 matmul
peak per core count, measured once per results file on each side (XLA and torch.mm; the table uses the
higher), and the FLOPs XLA counts in lgvit's compiled step (the same network on both sides). A
cell whose goal needs more than ~90% of the matmul peak for a whole network cannot be met on
that machine by any kernel work.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)
from lgvit import benchmarking, cpu_kernels  # noqa: E402

PAIRS = {'nommer_t': 'NomMer-T (official)', 'cotnet50': 'CoTNet-50 (official)',
         'lesa_resnet50': 'LESA-R50 (official)', 'resnet50': 'torchvision ResNet-50', 'swin_t': 'timm Swin-T'}
BASELINES = ('resnet50', 'swin_t')


def goal(model: str, mode: str) -> float:
  return 1.5 if mode == 'infer' and model not in BASELINES else 1.0


def torch_command(args, threads: int, *options: str) -> list[str]:
  """time_torch.py at this core count; 1 core is pinned to core 0, as lgvit's 1-core cells."""
  cmd = [args.torch_python, os.path.join(HERE, 'time_torch.py'), '--threads', str(threads), *options]
  return ['taskset', '-c', '0'] + cmd if threads == 1 else cmd


def append_row(raw: str, rows: list[dict], row: dict):
  rows.append(row)
  with open(raw, 'a') as f:
    f.write(json.dumps(row) + '\n')


def run_cell(side: str, model: str, mode: str, threads: int, args) -> dict:
  repeats = args.repeats if mode == 'train' else args.infer_repeats
  warmup = 1 if mode == 'train' else 2
  if side == 'torch':
    cmd = torch_command(args, threads, '--model', model, '--mode', mode, '--batch', str(args.batch),
                        '--repeats', str(repeats))
    env = dict(os.environ)
  else:
    env, prefix = benchmarking.cell_env(1 if threads == 1 else 0)
    if args.lgvit_flags:
      env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') + ' ' + args.lgvit_flags).strip()
    env['PYTHONPATH'] = ROOT
    cmd = prefix + benchmarking.cell_command(model, mode, batch=args.batch, size=224, warmup=warmup, repeats=repeats,
                                          peak=1.0)  # the matmul peak is not what this table is about
  t0 = time.perf_counter()
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
  if proc.returncode:
    tail = [l for l in proc.stderr.splitlines() if l.strip()][-1:] or ['?']
    raise SystemExit(f'{side} {model} {mode} {threads}c failed: {tail[0]}')
  row = json.loads(proc.stdout.strip().splitlines()[-1])
  row.update(side=side, model=model, mode=mode, threads=threads, wall_s=round(time.perf_counter() - t0, 1),
             load=round(os.getloadavg()[0], 2))
  return row


def measure_peaks(threads: int, args) -> dict:
  """The matmul peak (GFLOP/s) at this core count on both sides, each in a fresh process, as one row."""
  env, prefix = benchmarking.cell_env(1 if threads == 1 else 0)
  env['PYTHONPATH'] = ROOT
  xla = benchmarking.matmul_peak_in(env, prefix)
  out = subprocess.run(torch_command(args, threads, '--matmul-peak'), capture_output=True, text=True, check=True).stdout
  torch_peak = json.loads(out.strip().splitlines()[-1])['matmul_gflop_per_s']
  return {'side': 'peak', 'threads': threads, 'xla_gflop_per_s': round(xla, 1), 'torch_gflop_per_s': torch_peak,
          'load': round(os.getloadavg()[0], 2)}


def table(rows: list[dict], header: list[str]) -> str:
  cells: dict = {}
  peaks = {}
  commands = [r['command'] for r in rows if r['side'] == 'command']
  if commands:
    header = header + ['Commands, in order (the later ones add rows to the same OUT.jsonl): ' +
                       ', then '.join(f'`{c}`' for c in commands)]
  for r in rows:
    if r['side'] == 'command':
      continue
    if r['side'] == 'peak':
      peaks[r['threads']] = max(r['xla_gflop_per_s'], r['torch_gflop_per_s'])
      continue
    cells.setdefault((r['model'], r['mode'], r['threads']), {}).setdefault(r['side'], []).append(r)
  if peaks:
    header = header + ['', 'Matmul peak (float32 2048^3, the higher of XLA and torch.mm, GFLOP/s): ' + ', '.join(
        f'{peaks[t]:.1f} at {t} core{"s" if t > 1 else ""}' for t in sorted(peaks)) + '. "% of peak" = images/s x '
        "GFLOP/image (XLA's count for lgvit's compiled step) / that peak; \"goal needs\" = the official % x the goal."]
  lines = header + ['', '| model | mode | cores | official img/s | lgvit img/s | lgvit / official | goal | met | rounds |'
                    ' lgvit compile s | peak RSS MB official / lgvit | GFLOP/img | % of peak official / lgvit / goal needs |',
                    '|' + '---|' * 13]
  for model in PAIRS:
    for mode in ('infer', 'train'):
      for threads in (1, 2):
        c = cells.get((model, mode, threads))
        if not c or 'torch' not in c or 'lgvit' not in c:
          continue
        t = statistics.median(r['images_per_s'] for r in c['torch'])
        j = statistics.median(r['images_per_s'] for r in c['lgvit'])
        ratio, target = j / t, goal(model, mode)
        compile_s = statistics.median(r['compile_s'] for r in c['lgvit'])
        rss = f"{max(r['rss_peak_mb'] for r in c['torch']):.0f} / {max(r['rss_peak_mb'] for r in c['lgvit']):.0f}"
        spread = lambda rs: '' if len(rs) < 2 else f" ({min(r['images_per_s'] for r in rs):.2f}-{max(r['images_per_s'] for r in rs):.2f})"
        lines.append(f"| {PAIRS[model]} vs `{model}` | {mode} | {threads} | {t:.2f}{spread(c['torch'])} | "
                     f"{j:.2f}{spread(c['lgvit'])} | **{ratio:.2f}x** | >= {target:.1f}x | "
                     f"{'yes' if ratio >= target else f'no ({ratio / target - 1:+.0%})'} | "
                     f"{min(len(c['torch']), len(c['lgvit']))} | {compile_s:.1f} | {rss} | "
                     f"{roofline(c['lgvit'][0], t, j, target, peaks.get(threads))}")
  return '\n'.join(lines) + '\n'


def roofline(lgvit_row: dict, official: float, ours: float, target: float, peak: float | None) -> str:
  gflop = lgvit_row['gflop_per_step'] / lgvit_row['batch']
  if not peak:
    return f'{gflop:.1f} | |'
  pct = lambda images_per_s: 100 * images_per_s * gflop / peak
  return f'{gflop:.1f} | {pct(official):.0f}% / {pct(ours):.0f}% / {pct(official * target):.0f}% |'


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--models', default=','.join(PAIRS))
  parser.add_argument('--modes', default='infer,train')
  parser.add_argument('--threads', default='1,2')
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--repeats', type=int, default=5, help='timed train steps per cell')
  parser.add_argument('--infer-repeats', type=int, default=9, help='timed forwards per cell')
  parser.add_argument('--torch-python', default=os.environ.get('TORCH_PY', 'python'))
  parser.add_argument('--lgvit-flags', default='', help='extra XLA_FLAGS for the lgvit side (default: none)')
  parser.add_argument('--out', required=True, help='writes OUT.jsonl (raw, resumable) and OUT.md (the table)')
  parser.add_argument('--table-only', action='store_true', help='render OUT.md from OUT.jsonl, run nothing')
  args = parser.parse_args(argv)
  kernels = cpu_kernels.use()  # the choice each lgvit cell's process makes too (same environment)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  raw = args.out + '.jsonl'
  rows = [json.loads(l) for l in open(raw)] if os.path.exists(raw) else []
  done = {(r['round'], r['side'], r['model'], r['mode'], r['threads']) for r in rows if r['side'] in ('torch', 'lgvit')}
  versions = subprocess.run([args.torch_python, '-c', 'import torch; print(torch.__version__)'],
                            capture_output=True, text=True).stdout.strip() or '?'
  import jax, jaxlib  # noqa: E401
  header = [f'CPU: {benchmarking.cpu_model()}; torch {versions} (set_num_threads 1 or 2); jax {jax.__version__}, '
            f'jaxlib {jaxlib.__version__}; lgvit CPU kernels: {kernels} (lgvit.cpu_kernels); '
            f'extra lgvit XLA_FLAGS: {args.lgvit_flags or "(none)"}; batch {args.batch}, '
            f'224x224, float32; 1 core = taskset -c 0 on both sides.']
  if not args.table_only:
    command = 'python benchmarks/official/side_by_side.py ' + ' '.join(argv or sys.argv[1:])
    if command not in [r['command'] for r in rows if r['side'] == 'command']:
      append_row(raw, rows, {'side': 'command', 'command': command})
    models = [m.strip() for m in args.models.split(',') if m.strip()]
    for m in models:
      if m not in PAIRS:
        raise SystemExit(f'no official counterpart for {m!r}; known: {", ".join(PAIRS)}')
    measured = {r['threads'] for r in rows if r['side'] == 'peak'}
    for threads in (int(t) for t in args.threads.split(',')):
      if threads not in measured:
        append_row(raw, rows, measure_peaks(threads, args))
        print(f"matmul peak {threads}c: XLA {rows[-1]['xla_gflop_per_s']}, torch {rows[-1]['torch_gflop_per_s']} GFLOP/s",
              flush=True)
    for rnd in range(args.rounds):
      for threads in (int(t) for t in args.threads.split(',')):
        for mode in args.modes.split(','):
          for model in models:
            sides = ('torch', 'lgvit') if rnd % 2 == 0 else ('lgvit', 'torch')
            for side in sides:
              if (rnd, side, model, mode, threads) in done:
                continue
              row = run_cell(side, model, mode, threads, args)
              row['round'] = rnd
              append_row(raw, rows, row)
              print(f"round {rnd} {side:5s} {model:14s} {mode:5s} {threads}c: {row['images_per_s']:.2f} img/s "
                    f"(load {row['load']})", flush=True)
  text = table(rows, header)
  with open(args.out + '.md', 'w') as f:
    f.write(text)
  print(text)


if __name__ == '__main__':
  main()
