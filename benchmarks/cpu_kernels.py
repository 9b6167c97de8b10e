"""XLA:CPU's kernel libraries on this CPU: a convolution and a matmul under each LGVIT_XLA_CPU_KERNELS choice.

    python benchmarks/cpu_kernels.py            # all cores; --threads 1 pins to core 0

The measurements behind what lgvit's entry points pick per CPU (``lgvit.cpu_kernels.use``,
docs/kernels.md "XLA:CPU's kernel libraries per CPU"). Each choice runs in a fresh process (XLA reads
its flags once), ops are timed after two warm-up calls, median of ``--repeats``. Whole models:
``python -m lgvit.benchmark --cpu-kernels CHOICE``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = r'''
import json, sys, time
from lgvit import cpu_kernels
choice = cpu_kernels.use()
import jax, jax.numpy as jnp
repeats = int(sys.argv[1])
def conv(x, w):
  return jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
k = jax.random.split(jax.random.PRNGKey(0), 4)
x, w = jax.random.normal(k[0], (8, 56, 56, 64)), jax.random.normal(k[1], (3, 3, 64, 64))
a, b = jax.random.normal(k[2], (8 * 56 * 56, 256)), jax.random.normal(k[3], (256, 64))
ops = {'conv 3x3 forward': (jax.jit(conv), (x, w)),
       'conv 3x3 forward + gradients': (jax.jit(jax.grad(lambda x, w: (conv(x, w) ** 2).sum(), argnums=(0, 1))), (x, w)),
       'matmul 25088x256x64': (jax.jit(jnp.matmul), (a, b))}
row = {'choice': choice}
for name, (f, args) in ops.items():
  for _ in range(2):
    jax.block_until_ready(f(*args))
  times = []
  for _ in range(repeats):
    t = time.perf_counter(); jax.block_until_ready(f(*args)); times.append(time.perf_counter() - t)
  row[name] = sorted(times)[len(times) // 2] * 1e3
print(json.dumps(row))
'''


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--choices', default='xla,eigen-conv,eigen')
  parser.add_argument('--threads', type=int, choices=(0, 1), default=0)
  parser.add_argument('--repeats', type=int, default=5)
  args = parser.parse_args(argv)
  sys.path.insert(0, ROOT)
  from lgvit import cpu_kernels
  from lgvit.benchmarking import cell_env, cpu_model
  print(f'CPU: {cpu_model()}; threads: {"1 (core 0)" if args.threads else "all"}; '
        f'auto picks {cpu_kernels.auto_choice(cpu_kernels.has_avx512())} here; median of {args.repeats}, ms')
  rows = []
  for choice in args.choices.split(','):
    env, prefix = cell_env(args.threads, choice)
    env.update(PYTHONPATH=ROOT, JAX_PLATFORMS='cpu')
    out = subprocess.run(prefix + [sys.executable, '-c', CHILD, str(args.repeats)], env=env, capture_output=True,
                         text=True, check=True).stdout
    rows.append(json.loads(out.strip().splitlines()[-1]))
  names = [k for k in rows[0] if k != 'choice']
  print('| LGVIT_XLA_CPU_KERNELS | ' + ' | '.join(names) + ' |')
  print('|---' * (len(names) + 1) + '|')
  for r in rows:
    print(f"| {r['choice']} | " + ' | '.join(f'{r[n]:.1f}' for n in names) + ' |')


if __name__ == '__main__':
  main()
