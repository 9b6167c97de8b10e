"""BatchNorm training forward+backward on XLA:CPU: three ways to reduce over the batch and pixels.

    python benchmarks/batchnorm_cpu.py [--batch 8] [--repeats 20]

Rows are ResNet-50's BatchNorm shapes at 224 px. Columns: milliseconds for jax.grad of a BatchNorm
whose statistics come from
  * ``autodiff``  -- jnp.mean / jnp.var, differentiated by JAX (XLA reduce ops);
  * ``matvec``    -- one ones-vector matvec over all B*H*W rows (fast, but its rows accumulate in sequence);
  * ``lgvit``     -- :func:`lgvit.models.kernels.channel_sums`: the matvec over ~sqrt(rows) blocks.
and the worst relative error of each one's channel sums against float64 (inputs with mean 3, std 1).
"""
import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lgvit import cpu_kernels
from lgvit.models import kernels

SHAPES = [(112, 112, 64), (56, 56, 64), (56, 56, 256), (28, 28, 128), (28, 28, 512), (14, 14, 256),
          (14, 14, 1024), (7, 7, 512), (7, 7, 2048)]


def autodiff_bn(x, scale, bias):
  mean = jnp.mean(x, axis=(0, 1, 2))
  var = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2))
  return (x - mean) * lax.rsqrt(var + 1e-5) * scale + bias


def matvec_sums(x):
  rows = x.reshape(-1, x.shape[-1])
  return jnp.dot(jnp.ones((rows.shape[0],), x.dtype), rows, precision=lax.Precision.HIGHEST)


def custom_bn(sums):
  original = kernels.channel_sums

  def bn(x, scale, bias):
    kernels.channel_sums = sums  # traced once, under jit, right here
    try:
      return kernels._batch_norm_train_cpu(x, scale, bias, 1e-5, jnp.float32)[0]
    finally:
      kernels.channel_sums = original

  return bn


def time_grad(bn, x, scale, bias, repeats):
  probe = jnp.asarray(np.random.default_rng(1).normal(size=x.shape), jnp.float32)
  step = jax.jit(jax.grad(lambda x, s, b: jnp.sum(bn(x, s, b) * probe), (0, 1, 2)))
  jax.block_until_ready(step(x, scale, bias))
  best = float('inf')
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(step(x, scale, bias))
    best = min(best, time.perf_counter() - t)
  return 1e3 * best


def main():
  cpu_kernels.use()  # before the first JAX computation: XLA reads XLA_FLAGS when its CPU client starts
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--repeats', type=int, default=20)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  ways = {'autodiff': (autodiff_bn, lambda x: jnp.sum(x, (0, 1, 2))), 'matvec': (custom_bn(matvec_sums), matvec_sums),
          'lgvit': (custom_bn(kernels.channel_sums), kernels.channel_sums)}
  print(f'jax {jax.__version__} | {jax.devices()[0].platform} | batch {args.batch} | fwd+bwd ms (best of {args.repeats}) '
        '| sum rel. error vs float64')
  print(f"| shape (H, W, C) | {' | '.join(f'{w} ms' for w in ways)} | {' | '.join(f'{w} err' for w in ways)} |")
  print('|' + '---|' * (1 + 2 * len(ways)))
  for h, w, c in SHAPES:
    x = jnp.asarray(rng.normal(3.0, 1.0, size=(args.batch, h, w, c)), jnp.float32)
    scale, bias = jnp.ones((c,)), jnp.zeros((c,))
    exact = np.asarray(x, np.float64).sum((0, 1, 2))
    times = [time_grad(bn, x, scale, bias, args.repeats) for bn, _ in ways.values()]
    errors = [np.abs(np.asarray(jax.jit(s)(x), np.float64) - exact).max() / np.abs(exact).max() for _, s in ways.values()]
    print(f"| {(h, w, c)} | {' | '.join(f'{t:.2f}' for t in times)} | {' | '.join(f'{e:.1e}' for e in errors)} |")


if __name__ == '__main__':
  main()
