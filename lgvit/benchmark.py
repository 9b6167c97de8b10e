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
half-batches side by side instead of one batch on XLA's intra-op thread pool.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Optional

import lgvit.cpu_kernels

FIELDS = ['model', 'mode', 'dtype', 'batch', 'size', 'compile_s', 'images_per_s', 'step_ms', 'gflop_per_step',
          'gflop_per_s', 'peak_fraction', 'xla_mem_mb', 'rss_peak_mb', 'params_m']


def measure_matmul_peak(n: int = 2048, repeats: int = 5) -> float:
  """float32 GFLOP/s of an n^3 matmul on the default device."""
  import jax
  import jax.numpy as jnp
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda a: a @ a)
  f(a).block_until_ready()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    f(a).block_until_ready()
    times.append(time.perf_counter() - t)
  return 2 * n**3 / min(times) / 1e9


def matmul_peak_in(env: dict[str, str], prefix: list[str]) -> float:
  """:func:`measure_matmul_peak` in a fresh process with a benchmark cell's environment (:func:`cell_env`)."""
  proc = subprocess.run(
      prefix + [sys.executable, '-c', 'import json, lgvit.benchmark as b, lgvit.cpu_kernels as k; k.use(); '
                'print(json.dumps(b.measure_matmul_peak()))'],
      capture_output=True, text=True, env=env, check=True)
  return float(json.loads(proc.stdout.strip().splitlines()[-1]))


def _cost(compiled) -> tuple[float, float]:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  mem = compiled.memory_analysis()
  mem_mb = float('nan')
  if mem is not None:
    mem_mb = (mem.argument_size_in_bytes + mem.temp_size_in_bytes + mem.output_size_in_bytes) / 2**20
  return float(cost.get('flops', float('nan'))), mem_mb


def benchmark_step(name: str, mode: str, batch: int, size: int, dtype: str = 'float32',
                   model_kwargs: Optional[dict] = None, donate: bool = True, devices: int = 1):
  """The jitted function that a benchmark times and its arguments: an inference forward pass, or a
  train step (forward, cross-entropy, backward, SGD with momentum) on random images. ``devices > 1``
  shards the batch over the first ``devices`` devices and replicates everything else."""
  import jax
  import jax.numpy as jnp
  import optax
  from lgvit.models import create_model, model_info
  from lgvit.segmentation import upernet_loss
  compute = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}[dtype]
  segmentation = model_info(name).task == 'segmentation'  # UperNet: per-pixel loss, its default classes
  model = create_model(name, **({} if segmentation else {'num_classes': 1000}), **(model_kwargs or {}), dtype=compute)
  x = jnp.asarray(jax.random.normal(jax.random.PRNGKey(0), (batch, size, size, 3)), compute)
  labels = jnp.arange(batch) % 1000
  if segmentation:
    labels = jax.random.randint(jax.random.PRNGKey(1), (batch, size, size), 0, model.num_classes)
  variables = jax.jit(lambda x: model.init(jax.random.PRNGKey(0), x, train=False))(x)
  params, state = variables['params'], {k: v for k, v in variables.items() if k != 'params'}
  rngs = {s: jax.random.PRNGKey(i) for i, s in enumerate(('dropout', 'drop_path', 'gumbel'))}
  if mode == 'infer':
    fn = jax.jit(lambda p, s, x: model.apply({'params': p, **s}, x, train=False))
    args = (params, state, x)
  else:
    tx = optax.sgd(0.01, momentum=0.9)

    def step(p, s, opt, x):
      def loss_fn(p):
        logits, new_s = model.apply({'params': p, **s}, x, train=True, rngs=rngs, mutable=list(s.keys()))
        if segmentation:
          return upernet_loss(logits, labels)[0], new_s
        onehot = jax.nn.one_hot(labels, logits.shape[-1])
        return -jnp.mean(jnp.sum(onehot * jax.nn.log_softmax(logits.astype(jnp.float32)), -1)), new_s

      (loss, new_s), g = jax.value_and_grad(loss_fn, has_aux=True)(p)
      updates, opt = tx.update(g, opt, p)
      return optax.apply_updates(p, updates), new_s, opt, loss

    fn = jax.jit(step, donate_argnums=(0, 1, 2) if donate else ())
    args = (params, state, tx.init(params), x)
  if devices > 1:
    args = _shard_batch(args, devices)
  return fn, args


def _shard_batch(args: tuple, devices: int) -> tuple:
  """Places the last argument (the images) split along its batch axis over the first ``devices``
  devices, on the training mesh, and the others replicated."""
  import jax
  from jax.sharding import NamedSharding, PartitionSpec as P
  from lgvit.modeling import make_mesh
  if len(jax.devices()) < devices:
    raise SystemExit(f'--host-devices {devices}: jax sees only {len(jax.devices())} device(s); on CPU the flag '
                     'must be in XLA_FLAGS before jax starts (the benchmark\'s child processes set it).')
  mesh = make_mesh(jax.devices()[:devices])
  return (*jax.device_put(args[:-1], NamedSharding(mesh, P())), jax.device_put(args[-1], NamedSharding(mesh, P('data'))))


def bench_one(name: str, mode: str, batch: int, size: int, dtype: str, warmup: int, repeats: int,
              peak_gflops: float, model_kwargs: Optional[dict] = None, devices: int = 1) -> dict:
  import jax
  from lgvit.models.layers import count_params
  fn, args = benchmark_step(name, mode, batch, size, dtype, model_kwargs, devices=devices)
  t0 = time.perf_counter()
  compiled = fn.lower(*args).compile()
  compile_s = time.perf_counter() - t0
  flops, mem_mb = _cost(compiled)

  def run(args):
    out = compiled(*args)
    jax.block_until_ready(out)
    return out

  times = []
  for i in range(warmup + repeats):
    t = time.perf_counter()
    out = run(args)
    dt = time.perf_counter() - t
    if mode == 'train':
      args = (*out[:3], args[3])
    if i >= warmup:
      times.append(dt)
  step_s = statistics.median(times)
  rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  return {
      'model': name, 'mode': mode, 'dtype': dtype, 'batch': batch, 'size': size, 'compile_s': round(compile_s, 2),
      'images_per_s': round(batch / step_s, 2), 'step_ms': round(step_s * 1e3, 1),
      'gflop_per_step': round(flops / 1e9, 2), 'gflop_per_s': round(flops / step_s / 1e9, 1),
      'peak_fraction': round(flops / step_s / 1e9 / peak_gflops, 3) if peak_gflops else float('nan'),
      'xla_mem_mb': round(mem_mb, 1), 'rss_peak_mb': round(rss_mb, 1),
      'params_m': round(count_params(args[0]) / 1e6, 2),
      'host_devices': len(args[-1].sharding.device_set),  # the images' placement: what really ran
  }



def cpu_model() -> str:
  """This CPU as lscpu names it (model, family, model number, CPU count), for benchmark headers."""
  try:
    out = subprocess.run(['lscpu'], capture_output=True, text=True).stdout
    fields = dict(l.split(':', 1) for l in out.splitlines() if ':' in l)
    get = lambda k: fields.get(k, '?').strip()
    return f"{get('Model name')} (family {get('CPU family')}, model {get('Model')}; {get('CPU(s)')} CPUs)"
  except OSError:
    return platform.processor() or '?'


def cell_env(threads: int, cpu_kernels: str = '', host_devices: int = 1) -> tuple[dict[str, str], list[str]]:
  """The environment and command prefix of one benchmark process: ``threads=1`` pins it to core 0
  with single-threaded XLA (as the baselines in docs/official_code.md), 0 leaves XLA its defaults;
  ``host_devices > 1`` makes XLA:CPU present that many devices; ``cpu_kernels`` overrides lgvit's choice of
  XLA:CPU kernel library (``LGVIT_XLA_CPU_KERNELS``, see lgvit.cpu_kernels)."""
  env = {**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '3'}
  if host_devices > 1:
    env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') + f' --xla_force_host_platform_device_count={host_devices}').strip()
  if cpu_kernels:
    env['LGVIT_XLA_CPU_KERNELS'] = cpu_kernels  # each child's lgvit.cpu_kernels.use() adds the flag
  prefix = []
  if threads == 1:
    # The XLA flag alone still lets Eigen use every core; pinning is what makes it one core.
    env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') +
                        ' --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1').strip()
    prefix = ['taskset', '-c', '0']
  return env, prefix


def cell_command(name: str, mode: str, *, batch: int, size: int, dtype: str = 'float32', warmup: int = 2,
                 repeats: int = 5, peak: float = 0.0, kwargs: str = '', host_devices: int = 1) -> list[str]:
  """The command that times one model in a fresh process; it prints the row as JSON on its last line."""
  return [sys.executable, '-m', 'lgvit.benchmark', '--single', '--models', name, '--batch', str(batch), '--size',
          str(size), '--mode', mode, '--dtype', dtype, '--warmup', str(warmup), '--repeats', str(repeats),
          '--peak', str(peak), '--kwargs', kwargs, '--host-devices', str(host_devices)]

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
    import jax
    peak = args.peak or measure_matmul_peak()
    row = bench_one(args.models, args.mode, args.batch, args.size, args.dtype, args.warmup, args.repeats, peak,
                    json.loads(args.kwargs) if args.kwargs else None, devices=args.host_devices)
    row['peak_gflops'] = round(peak, 1)
    row['threads'] = args.threads
    row['xla_flags'] = os.environ.get('XLA_FLAGS', '')  # as this process ran, after lgvit's own
    row['cpu_kernels'] = cpu_kernels
    row['device'] = jax.devices()[0].device_kind
    print(json.dumps(row))
    return 0

  from lgvit.models import list_models, model_info
  names = (list_models(task='classification') if args.models == 'all'
           else [n.strip() for n in args.models.split(',') if n.strip()])
  for n in names:
    model_info(n)  # unknown names fail here, before any work
  if args.host_devices < 1 or args.batch % args.host_devices:
    parser.error(f'--batch {args.batch} must be a positive multiple of --host-devices {args.host_devices}')
  env, prefix = cell_env(args.threads, args.cpu_kernels, args.host_devices)
  peak = matmul_peak_in(env, prefix)
  rows = []
  for name in names:
    size = args.size or model_info(name).input_size
    cmd = prefix + cell_command(name, args.mode, batch=args.batch, size=size, dtype=args.dtype, warmup=args.warmup,
                                repeats=args.repeats, peak=peak, kwargs=args.kwargs, host_devices=args.host_devices)
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
      w = csv.DictWriter(f, fieldnames=FIELDS + ['host_devices', 'device'], extrasaction='ignore')
      w.writeheader()
      w.writerows(rows)
    with open(args.out + '.json', 'w') as f:
      json.dump({'peak_gflops': peak, 'args': vars(args), 'rows': rows}, f, indent=2)
  return 0


if __name__ == '__main__':
  sys.exit(main())
