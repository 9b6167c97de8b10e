"""Throughput benchmark for registered models.

    python -m lgvit.benchmark --models nommer_t,cotnet50 --batch 8 --size 224 --mode infer
    python -m lgvit.benchmark --models all --mode train --dtype bfloat16 --out benchmarks/gpu_train

For each model: compile time, steady-state images/s (median of ``--repeats`` timed runs after
warm-up, each synchronised with ``block_until_ready``), achieved GFLOP/s from XLA's cost analysis,
its ratio to a float32 matmul peak measured in the same run, XLA's memory estimate (arguments +
temporaries + outputs) and, on CPU, the peak resident memory of the model's own process. Every model
runs in a fresh subprocess so that memory and caches do not leak between rows. A train step is
forward + cross-entropy + backward + SGD(momentum 0.9), in train mode (batch statistics, drop-path,
Gumbel noise), as in ``docs/official_code.md`` (CPU baselines).

``--host-devices N`` (CPU) splits the host into N XLA devices and shards the batch over them
(parameters replicated, as ``main.py`` does over a mesh): on a 2-core host this runs two
half-batches side by side instead of one batch on XLA's intra-op thread pool. The measurements
themselves are :mod:`lgvit.benchmarking` (this module is the command line only).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys

import jax

import lgvit.cpu_kernels
from lgvit import benchmarking
from lgvit.models import list_models, model_info


def print_table(rows: list[dict], peak: float, header: str = ''):
  cols = ['model', 'mode', 'dtype', 'compile_s', 'images_per_s', 'step_ms', 'gflop_per_s', 'peak_fraction',
          'xla_mem_mb', 'rss_peak_mb', 'params_m']
  if header:
    print(header)
  print(f'matmul peak (float32, measured): {peak:.1f} GFLOP/s')
  print('| ' + ' | '.join(cols) + ' |')
  print('|' + '---|' * len(cols))
  for r in rows:
    print('| ' + ' | '.join(str(r.get(c, '')) for c in cols) + ' |')


def main(argv=None):
  parser = argparse.ArgumentParser(prog='python -m lgvit.benchmark', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--models', default='all', help="comma-separated names, or 'all'")
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--size', type=int, default=0, help='input size (0: each model\'s registered size)')
  parser.add_argument('--mode', choices=['infer', 'train'], default='infer')
  parser.add_argument('--dtype', choices=['float32', 'bfloat16'], default='float32')
  parser.add_argument('--warmup', type=int, default=2)
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--kwargs', default='',
                      help='JSON dict of model overrides, e.g. a configs/X.py demo model: '
                      '\'{"embed_dim": 32, "depths": [1, 1, 1, 1]}\'')
  parser.add_argument('--threads', type=int, choices=(0, 1), default=0,
                      help='CPU only: 1 pins each run to core 0 with single-threaded XLA (as the baselines in '
                      'docs/official_code.md); 0 leaves XLA its defaults (all cores)')
  parser.add_argument('--cpu-kernels', choices=lgvit.cpu_kernels.CHOICES, default='',
                      help='CPU: XLA:CPU\'s kernel library for dots/convs (default: LGVIT_XLA_CPU_KERNELS, else auto; '
                      'see lgvit.cpu_kernels)')
  parser.add_argument('--host-devices', type=int, default=1,
                      help='CPU: split the host into N XLA devices and shard the batch over them (the batch must '
                      'be a multiple of N)')
  parser.add_argument('--out', default='', help='write OUT.csv and OUT.json')
  parser.add_argument('--peak', type=float, default=0.0, help=argparse.SUPPRESS)
  parser.add_argument('--single', action='store_true', help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  cpu_kernels = lgvit.cpu_kernels.use()  # before the first JAX computation (XLA reads XLA_FLAGS once)

  if args.single:  # child process: one model, JSON on the last line
    peak = args.peak or benchmarking.measure_matmul_peak()
    row = benchmarking.bench_one(args.models, args.mode, args.batch, args.size, args.dtype, args.warmup, args.repeats,
                                 peak, json.loads(args.kwargs) if args.kwargs else None, devices=args.host_devices)
    row['peak_gflops'] = round(peak, 1)
    row['threads'] = args.threads
    row['xla_flags'] = os.environ.get('XLA_FLAGS', '')  # as this process ran, after lgvit's own
    row['cpu_kernels'] = cpu_kernels
    row['device'] = jax.devices()[0].device_kind
    print(json.dumps(row))
    return 0

  names = (list_models(task='classification') if args.models == 'all'
           else [n.strip() for n in args.models.split(',') if n.strip()])
  for n in names:
    model_info(n)  # unknown names fail here, before any work
  if args.host_devices < 1 or args.batch % args.host_devices:
    parser.error(f'--batch {args.batch} must be a positive multiple of --host-devices {args.host_devices}')
  env, prefix = benchmarking.cell_env(args.threads, args.cpu_kernels, args.host_devices)
  peak = benchmarking.matmul_peak_in(env, prefix)
  rows = []
  for name in names:
    size = args.size or model_info(name).input_size
    cmd = prefix + benchmarking.cell_command(name, args.mode, batch=args.batch, size=size, dtype=args.dtype,
                                             warmup=args.warmup, repeats=args.repeats, peak=peak, kwargs=args.kwargs,
                                             host_devices=args.host_devices)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
      err = [l for l in proc.stderr.strip().splitlines() if l.strip()][-1:] or ['?']
      print(f'{name}: failed: {err[0]}', file=sys.stderr)
      rows.append({'model': name, 'mode': args.mode, 'dtype': args.dtype, 'images_per_s': 'failed'})
      continue
    rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(f"{name}: {rows[-1]['images_per_s']} img/s ({rows[-1]['step_ms']} ms/step, compile {rows[-1]['compile_s']} s)",
          flush=True)
  print()
  threads = '1 core' if args.threads == 1 else 'default threads'
  if args.host_devices > 1:
    threads += f', {args.host_devices} host devices'
  first = rows[0] if rows else {}
  print_table(rows, peak, f"batch {args.batch}, {args.mode}, {args.dtype}, {threads}, "
              f"XLA_FLAGS={first.get('xla_flags', '')!r}, device: {first.get('device', '?')}")
  if args.out:
    os.makedirs(os.path.dirname(args.out) or '.', exist_ok=True)
    with open(args.out + '.csv', 'w', newline='') as f:
      w = csv.DictWriter(f, fieldnames=benchmarking.FIELDS + ['host_devices', 'device'], extrasaction='ignore')
      w.writeheader()
      w.writerows(rows)
    with open(args.out + '.json', 'w') as f:
      json.dump({'peak_gflops': peak, 'args': vars(args), 'rows': rows}, f, indent=2)
  return 0


if __name__ == '__main__':
  sys.exit(main())
