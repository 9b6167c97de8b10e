"""CoT local aggregation: shifted slices (what the models use) vs the unfolded-patches formulation.

Prints, per CoTNet-50 stage shape, the median wall time and XLA's memory plan of the compiled
forward and forward+backward (d/dvalue and d/dweights of sum(out * cotangent)):

    PYTHONPATH=. python benchmarks/cot_aggregation.py                 # batch 8, CoTNet-50 at 224
    PYTHONPATH=. python benchmarks/cot_aggregation.py --batch 32 --repeats 20

"peak MiB" is XLA's buffer assignment for the compiled program: temporaries + outputs + arguments
(``compiled.memory_analysis()``), i.e. what the program needs at its peak, on any backend.

On a CPU without AVX-512 (e.g. AMD EPYC Zen 3) run it with ``LGVIT_XLA_CPU_KERNELS=eigen``: jaxlib 0.10.2's
default YNNPACK kernels segfault in the patches form's backward there.
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

from lgvit import cpu_kernels
from lgvit.models.cotnet import SHARE_PLANES, local_aggregation, local_aggregation_patches

# (H, W, C) of the CoT layers of CoTNet-50 at 224: res2..res5.
STAGES = ((56, 56, 64), (28, 28, 128), (14, 14, 256), (7, 7, 512))
IMPLS = {'shifted slices': local_aggregation, 'patches (9x unfold)': local_aggregation_patches}


def peak_mib(compiled) -> float:
  m = compiled.memory_analysis()
  total = m.temp_size_in_bytes + m.output_size_in_bytes + m.argument_size_in_bytes - m.alias_size_in_bytes
  return total / 2**20


def time_ms(fn, args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))  # warm-up
  samples = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    samples.append((time.perf_counter() - t0) * 1e3)
  return statistics.median(samples)


def main():
  cpu_kernels.use()  # before the first JAX computation: XLA reads XLA_FLAGS when its CPU client starts
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--batch', type=int, default=8)
  p.add_argument('--repeats', type=int, default=10)
  p.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16'])
  args = p.parse_args()
  dtype = jnp.dtype(args.dtype)
  print(f'backend {jax.default_backend()} ({jax.devices()[0].device_kind}), batch {args.batch}, {args.dtype}, '
        f'median of {args.repeats}')
  header = f"{'H x W x C':>14} | {'implementation':<20} | {'fwd ms':>8} | {'fwd MiB':>8} | {'fwd+bwd ms':>10} | {'fwd+bwd MiB':>11}"
  print(header)
  print('-' * len(header))
  for h, w, c in STAGES:
    kv, ka, kg = jax.random.split(jax.random.PRNGKey(0), 3)
    v = jax.random.normal(kv, (args.batch, h, w, c), dtype)
    a = jax.random.normal(ka, (args.batch, h, w, 9 * c // SHARE_PLANES), dtype)
    g = jax.random.normal(kg, (args.batch, h, w, c), dtype)
    for label, impl in IMPLS.items():
      fwd = jax.jit(impl)

      def loss(v, a, g, impl=impl):
        return jnp.sum((impl(v, a) * g).astype(jnp.float32))

      bwd = jax.jit(jax.grad(loss, argnums=(0, 1)))
      fwd_mem = peak_mib(fwd.lower(v, a).compile())
      bwd_mem = peak_mib(bwd.lower(v, a, g).compile())
      print(f'{f"{h}x{w}x{c}":>14} | {label:<20} | {time_ms(fwd, (v, a), args.repeats):8.2f} | {fwd_mem:8.1f} | '
            f'{time_ms(bwd, (v, a, g), args.repeats):10.2f} | {bwd_mem:11.1f}')


if __name__ == '__main__':
  main()
