"""Throughput measurements of registered models: the steps that ``python -m lgvit.benchmark`` times.

:func:`benchmark_step` builds the jitted inference forward or train step of a model on random images,
:func:`bench_one` compiles and times it, :func:`measure_matmul_peak` gives the float32 matmul peak the
rates are compared with. A benchmark runs every model in a fresh process: :func:`cell_env` and
:func:`cell_command` are that process's environment and command (also used by the scripts in benchmarks/).
"""
from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Optional

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lgvit.modeling import make_mesh
from lgvit.models import create_model, model_info
from lgvit.models.layers import count_params
from lgvit.segmentation import upernet_loss

FIELDS = ['model', 'mode', 'dtype', 'batch', 'size', 'compile_s', 'images_per_s', 'step_ms', 'gflop_per_step',
          'gflop_per_s', 'peak_fraction', 'xla_mem_mb', 'rss_peak_mb', 'params_m']


def measure_matmul_peak(n: int = 2048, repeats: int = 5) -> float:
  """float32 GFLOP/s of an n^3 matmul on the default device."""
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
      prefix + [sys.executable, '-c', 'import json, lgvit.benchmarking as b, lgvit.cpu_kernels as k; k.use(); '
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
  if len(jax.devices()) < devices:
    raise SystemExit(f'--host-devices {devices}: jax sees only {len(jax.devices())} device(s); on CPU the flag '
                     'must be in XLA_FLAGS before jax starts (the benchmark\'s child processes set it).')
  mesh = make_mesh(jax.devices()[:devices])
  return (*jax.device_put(args[:-1], NamedSharding(mesh, P())), jax.device_put(args[-1], NamedSharding(mesh, P('data'))))


def bench_one(name: str, mode: str, batch: int, size: int, dtype: str, warmup: int, repeats: int,
              peak_gflops: float, model_kwargs: Optional[dict] = None, devices: int = 1) -> dict:
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
