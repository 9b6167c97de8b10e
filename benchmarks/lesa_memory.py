"""Peak memory and time of one LESA training step on CPU (default: batch 8 at 224 px).

    PYTHONPATH=. python benchmarks/lesa_memory.py                       # lesa_resnet50 vs resnet50 baselines
    PYTHONPATH=. python benchmarks/lesa_memory.py --models=lesa_resnet50 --steps=1

The step is the training loop's own (``lgvit.train.make_train_step`` with the model's config: SGD
Nesterov, weight decay, train-mode BatchNorm, cross-entropy). Each model runs in a fresh process so
that its resident-set peak is its own. Columns:

* ``XLA temp``: the step's intermediate buffers as assigned by XLA (``memory_analysis``), i.e.
  activations kept for the backward pass plus scratch, at their peak overlap;
* ``state``: parameters, BatchNorm statistics and optimiser state (donated, updated in place);
* ``run RSS``: the process's peak resident set while running the steps (the peak is reset after
  compiling, via /proc/self/clear_refs); it includes the Python/XLA/TF runtime and the compiled code;
* ``compile RSS``: the peak resident set up to the end of compilation (XLA's compiler, not the step);
* ``step``: median wall time of the timed steps after one warm-up step.

``resnet50_os16`` is torchvision's ResNet-50 with a stride-1 last stage, i.e. LESA-R50 without the
LESA layers: the fair baseline for memory, since the stride-1 stage 4 alone doubles activations.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

MODELS = {
    'lesa_resnet50': ('configs/lesa_resnet50.py', {}),
    'resnet50_os16': ('configs/resnet50.py', {'stage_strides': (1, 2, 2, 1)}),
    'resnet50': ('configs/resnet50.py', {}),
    'sa_resnet50': ('configs/sa_resnet50.py', {}),
    'static_lesa_resnet50': ('configs/static_lesa_resnet50.py', {}),
    'lesa_wrn50': ('configs/lesa_wrn50.py', {}),
}


def _peak_rss_mb() -> float:
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith('VmHWM:'):
        return int(line.split()[1]) / 1024
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak_rss() -> bool:
  try:
    with open('/proc/self/clear_refs', 'w') as f:
      f.write('5')
    return True
  except OSError:
    return False


def measure(name: str, batch: int, size: int, steps: int) -> dict:
  import importlib.util

  import jax
  import jax.numpy as jnp
  import numpy as np

  from lgvit import cpu_kernels, modeling, optim, train
  from lgvit.models.layers import count_params

  cpu_kernels.use()  # before the first JAX computation: XLA reads XLA_FLAGS when its CPU client starts

  path, extra_kwargs = MODELS[name]
  spec = importlib.util.spec_from_file_location('bench_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.unlock()
  config.batch_size, config.data.image_size, config.num_classes = batch, size, 1000
  for k, v in extra_kwargs.items():
    config.model_kwargs[k] = v

  model = modeling.build_model(config)
  variables = modeling.init_variables(model, size, seed=0)
  schedule = optim.lr_schedule(config.schedule, config.batch_size, steps_per_epoch=100, total_steps=10_000)
  tx = optim.make_optimizer(config.optim, variables['params'], schedule)
  state = train.TrainState(step=jnp.zeros((), jnp.int32), params=variables['params'],
                           batch_stats=variables['batch_stats'], opt_state=tx.init(variables['params']))
  rng = np.random.default_rng(0)
  batch_data = {'image': jnp.asarray(rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)),
                'label': jnp.asarray(rng.integers(0, 1000, (batch,), dtype=np.int32))}
  step_fn = jax.jit(train.make_train_step(model, tx, config, schedule), donate_argnums=0)

  t0 = time.perf_counter()
  compiled = step_fn.lower(state, batch_data, jax.random.PRNGKey(0)).compile()
  compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  compile_rss = _peak_rss_mb()
  reset = _reset_peak_rss()
  times = []
  for i in range(steps + 1):
    t0 = time.perf_counter()
    state, metrics = compiled(state, batch_data, jax.random.PRNGKey(i))
    jax.block_until_ready(metrics['loss'])
    if i:  # the first call is a warm-up
      times.append(time.perf_counter() - t0)
  return {
      'model': name,
      'params': count_params(state.params),
      'temp_mb': mem.temp_size_in_bytes / 2**20,
      'state_mb': mem.argument_size_in_bytes / 2**20,
      'compile_rss_mb': compile_rss,
      'run_rss_mb': _peak_rss_mb() if reset else float('nan'),
      'compile_s': compile_s,
      'step_s': float(np.median(times)),
      'loss': float(metrics['loss']),
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--models', default='lesa_resnet50,resnet50_os16,resnet50',
                      help=f'comma-separated, from {sorted(MODELS)}')
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--size', type=int, default=224)
  parser.add_argument('--steps', type=int, default=2, help='timed steps after one warm-up step')
  parser.add_argument('--_child', default='', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args._child:
    print(json.dumps(measure(args._child, args.batch, args.size, args.steps)))
    return

  names = [m for m in args.models.split(',') if m]
  unknown = [m for m in names if m not in MODELS]
  if unknown:
    parser.error(f'unknown model(s) {unknown}; choose from {sorted(MODELS)}')
  rows = []
  for name in names:
    cmd = [sys.executable, __file__, f'--_child={name}', f'--batch={args.batch}', f'--size={args.size}',
           f'--steps={args.steps}']
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=dict(os.environ))
    rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f'  measured {name}', file=sys.stderr, flush=True)
  load = os.getloadavg()[0]
  print(f'\nTrain step, batch {args.batch} at {args.size}px, float32 on CPU ({os.cpu_count()} cores, '
        f'load average {load:.1f})\n')
  print('| model | params | XLA temp (MB) | state (MB) | run RSS (MB) | compile RSS (MB) | compile (s) | step (s) '
        '| img/s |')
  print('|---|---|---|---|---|---|---|---|---|')
  for r in rows:
    print(f"| {r['model']} | {r['params']:,} | {r['temp_mb']:.0f} | {r['state_mb']:.0f} | {r['run_rss_mb']:.0f} | "
          f"{r['compile_rss_mb']:.0f} | {r['compile_s']:.0f} | {r['step_s']:.2f} | {args.batch / r['step_s']:.2f} |")


if __name__ == '__main__':
  main()
