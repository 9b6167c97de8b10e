"""Where a CPU train/infer step spends its time: per-HLO-op totals from a ``jax.profiler`` trace.

    XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type= python benchmarks/profile_step.py cotnet50 --mode train

Prints the top ops (by summed wall time over the profiled steps) and totals per op category
(convolution, dot, fusion, copy/transpose, ...), from the Perfetto trace that XLA:CPU's thunk
runtime emits. Op names are those of the optimised HLO (``--hlo`` dumps it for cross-reference).
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import tempfile
import time

import jax

from lgvit import cpu_kernels
from lgvit.benchmarking import benchmark_step


def category(name: str) -> str:
  base = re.sub(r'[._]\d+$', '', name)
  for key in ('convolution', 'dot', 'transpose', 'copy', 'reduce-window', 'select-and-scatter', 'reduce',
              'concatenate', 'pad', 'slice', 'scatter', 'gather'):
    if key in base:
      return key
  if 'fusion' in base:
    return 'fusion (elementwise/reduce)'
  return base


def op_sources(hlo_text: str) -> dict:
  """HLO instruction name -> 'fwd|bwd module/path/primitive' from its metadata, block indices dropped."""
  out = {}
  for m in re.finditer(r'^\s+%?([\w.\-]+) = .*?metadata=\{op_name="([^"]+)"', hlo_text, re.M):
    name, op = m.groups()
    direction = 'bwd' if 'transpose(' in op else 'fwd'
    path = re.sub(r'^jit\([^)]*\)/', '', op)
    path = re.sub(r'\w+\((\w+)\)', r'\1', re.sub(r'\w+\((\w+)\)', r'\1', path))
    path = re.sub(r'layer\d+_\d+', 'layer', path)
    path = re.sub(r'^(ResNet|\w+)/', '', path)
    out[name] = f'{direction} {path}'
  return out


def main():
  cpu_kernels.use()  # before the first JAX computation: XLA reads XLA_FLAGS when its CPU client starts
  ap = argparse.ArgumentParser()
  ap.add_argument('model')
  ap.add_argument('--mode', default='train', choices=['train', 'infer'])
  ap.add_argument('--batch', type=int, default=8)
  ap.add_argument('--size', type=int, default=224)
  ap.add_argument('--steps', type=int, default=2)
  ap.add_argument('--top', type=int, default=40)
  ap.add_argument('--hlo', default='', help='write the optimised HLO text here')
  args = ap.parse_args()
  fn, fargs = benchmark_step(args.model, args.mode, args.batch, args.size, donate=False)
  compiled = fn.lower(*fargs).compile()
  hlo_text = compiled.as_text()
  if args.hlo:
    with open(args.hlo, 'w') as f:
      f.write(hlo_text)
  jax.block_until_ready(compiled(*fargs))
  logdir = tempfile.mkdtemp(prefix='lgvit_prof_')
  t = time.perf_counter()
  with jax.profiler.trace(logdir, create_perfetto_trace=True):
    for _ in range(args.steps):
      jax.block_until_ready(compiled(*fargs))
  wall = (time.perf_counter() - t) / args.steps
  path = glob.glob(os.path.join(logdir, '**', '*.trace.json.gz'), recursive=True)[0]
  with gzip.open(path) as f:
    events = json.load(f)
  events = events['traceEvents'] if isinstance(events, dict) else events
  per_op = collections.Counter()
  count = collections.Counter()
  for e in events:
    if e.get('ph') != 'X' or 'dur' not in e:
      continue
    name = e.get('name', '')
    per_op[name] += e['dur'] / 1e3 / args.steps
    count[name] += 1
  # Keep only HLO-op-looking names (thunks); skip python/runtime spans.
  hlo = {k: v for k, v in per_op.items() if re.match(r'^[a-z][\w\-]*(\.\d+)?$', k) and not k.startswith('pjit')}
  total = sum(hlo.values())
  print(f'{args.model} {args.mode}: wall {wall * 1e3:.0f} ms/step, summed op time {total:.0f} ms/step '
        f'(ops overlap on 2 threads)')
  cats = collections.Counter()
  for k, v in hlo.items():
    cats[category(k)] += v
  print('| category | ms/step | share |\n|---|---|---|')
  for k, v in cats.most_common():
    print(f'| {k} | {v:.1f} | {v / total:.1%} |')
  sources = op_sources(hlo_text)
  by_source = collections.Counter()
  for k, v in hlo.items():
    by_source[sources.get(k, '?')] += v
  print(f'\n| source (layer indices dropped; bwd = transpose) | ms/step | share |\n|---|---|---|')
  for k, v in by_source.most_common(args.top):
    print(f'| {k} | {v:.1f} | {v / total:.1%} |')
  print(f'\n| op | source | ms/step | calls/step |\n|---|---|---|---|')
  for k, v in sorted(hlo.items(), key=lambda kv: -kv[1])[:args.top]:
    print(f'| {k} | {sources.get(k, "?")} | {v:.2f} | {count[k] / args.steps:g} |')


if __name__ == '__main__':
  main()
