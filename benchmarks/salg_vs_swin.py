"""Train-step time and peak memory of SALG against a Swin of the same width and depth, on CPU.

    PYTHONPATH=. python benchmarks/salg_vs_swin.py                      # SALG-T vs Swin-T, 224, batch 8
    PYTHONPATH=. python benchmarks/salg_vs_swin.py --pairs=salg_st:swin_st --steps=3

A step is forward + softmax cross-entropy + backward + SGD(0.01, momentum 0.9), jitted, in float32
(the method of ``docs/official_code.md``). Each model runs in its own subprocess so that the
process's peak resident memory (ru_maxrss) belongs to that model alone; XLA's own account of the
compiled step (temporary buffers, and arguments + outputs + temporaries) is printed next to it.
Time: 1 warm-up step after compilation, then the median of ``--steps`` timed steps. The models of
each pair run alternately, ``--rounds`` times, so load changes on the shared machine hit both alike.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def measure(model_name: str, image_size: int, batch: int, steps: int) -> dict:
  import resource

  import jax
  import jax.numpy as jnp
  import optax

  from lgvit import cpu_kernels
  from lgvit.models import create_model
  from lgvit.models.layers import count_params

  cpu_kernels.use()  # before the first JAX computation: XLA reads XLA_FLAGS when its CPU client starts

  model = create_model(model_name)
  x = jax.random.normal(jax.random.PRNGKey(0), (batch, image_size, image_size, 3))
  y = jnp.arange(batch) % 1000
  variables = model.init({'params': jax.random.PRNGKey(1)}, x[:1])
  params = variables['params']
  state = {k: v for k, v in variables.items() if k != 'params'}
  tx = optax.sgd(0.01, momentum=0.9)
  opt_state = tx.init(params)

  def loss_fn(params, state, x, y, rng):
    r1, r2 = jax.random.split(rng)
    logits, new_state = model.apply({'params': params, **state}, x, train=True,
                                    rngs={'dropout': r1, 'drop_path': r2}, mutable=list(state))
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new_state

  @jax.jit
  def step(params, state, opt_state, x, y, rng):
    (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, state, x, y, rng)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_state, opt_state, loss

  rng = jax.random.PRNGKey(2)
  t0 = time.perf_counter()
  compiled = step.lower(params, state, opt_state, x, y, rng).compile()
  compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  out = compiled(params, state, opt_state, x, y, rng)  # warm-up
  jax.block_until_ready(out)
  times = []
  for i in range(steps):
    t0 = time.perf_counter()
    out = compiled(params, state, opt_state, x, y, jax.random.fold_in(rng, i))
    jax.block_until_ready(out)
    times.append(time.perf_counter() - t0)
  return {
      'model': model_name,
      'params': count_params(params),
      'step_s': statistics.median(times),
      'steps_s': times,
      'compile_s': compile_s,
      'xla_temp_mib': mem.temp_size_in_bytes / 2**20,
      'xla_total_mib': (mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes -
                        mem.alias_size_in_bytes) / 2**20,
      'rss_peak_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
      'loss': float(out[-1]),
  }


def run_child(model_name: str, args) -> dict:
  cmd = [sys.executable, __file__, f'--child={model_name}', f'--image_size={args.image_size}',
         f'--batch={args.batch}', f'--steps={args.steps}']
  res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, 'PYTHONPATH': os.getcwd()})
  if res.returncode:
    raise RuntimeError(f'{model_name} failed:\n{res.stderr[-3000:]}')
  return json.loads(res.stdout.strip().splitlines()[-1])


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--pairs', default='salg_t:swin_t', help='comma-separated model:baseline pairs')
  p.add_argument('--image_size', type=int, default=224)
  p.add_argument('--batch', type=int, default=8)
  p.add_argument('--steps', type=int, default=5)
  p.add_argument('--rounds', type=int, default=2)
  p.add_argument('--child', default='', help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.child:
    print(json.dumps(measure(args.child, args.image_size, args.batch, args.steps)))
    return

  import platform
  print(f'# {platform.node()} | {os.cpu_count()} CPUs | load average before: {os.getloadavg()}')
  print(f'# image {args.image_size}, batch {args.batch}, float32, median of {args.steps} steps, '
        f'{args.rounds} alternating rounds')
  results = {}
  for _ in range(args.rounds):
    for pair in args.pairs.split(','):
      for name in pair.split(':'):
        r = run_child(name, args)
        results.setdefault(name, []).append(r)
        print(f'#   {name}: step {r["step_s"]:.3f}s, steps {[round(t, 3) for t in r["steps_s"]]}, '
              f'load {os.getloadavg()[0]:.2f}', flush=True)
  print()
  print('| model | params | train step (s) | img/s | XLA temp (MiB) | XLA total (MiB) | peak RSS (MiB) | compile (s) |')
  print('|---|---|---|---|---|---|---|---|')
  best = {}
  for name, rs in results.items():
    step = min(r['step_s'] for r in rs)  # best round: the least disturbed by other jobs
    r = rs[0]
    best[name] = (step, r['xla_total_mib'], max(x['rss_peak_mib'] for x in rs))
    print(f'| {name} | {r["params"]:,} | {step:.3f} | {args.batch / step:.2f} | {r["xla_temp_mib"]:.0f} | '
          f'{r["xla_total_mib"]:.0f} | {best[name][2]:.0f} | {r["compile_s"]:.1f} |')
  print()
  for pair in args.pairs.split(','):
    a, b = pair.split(':')
    print(f'{a} / {b}: time {best[a][0] / best[b][0]:.2f}x, XLA memory {best[a][1] / best[b][1]:.2f}x, '
          f'peak RSS {best[a][2] / best[b][2]:.2f}x')
  print(f'# load average after: {os.getloadavg()}')


if __name__ == '__main__':
  main()
