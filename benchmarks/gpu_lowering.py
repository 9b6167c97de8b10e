"""Lowers every model's train step (and inference step) for CUDA on this host, with the native kernels.

    PYTHONPATH=. python benchmarks/gpu_lowering.py [--models all] [--mode train|infer] [--dtype bfloat16]

No GPU is needed: ``jax.export`` with ``platforms=['cuda']`` runs JAX's CUDA lowering rules, so a
model that uses an op without one fails here. Compiling (cuDNN autotuning, memory) needs a GPU.
Prints one line per model: the StableHLO size and the lowering time.
"""
import argparse
import sys
import time

from lgvit import ahead_of_time
from lgvit.models import list_models


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--models', default='all')
  parser.add_argument('--mode', choices=('train', 'infer'), default='train')
  parser.add_argument('--dtype', choices=('float32', 'bfloat16'), default='bfloat16')
  parser.add_argument('--batch', type=int, default=2)
  args = parser.parse_args(argv)
  names = list_models(task='classification') if args.models == 'all' else args.models.split(',')
  failed = 0
  print(f'| model | {args.mode} step lowers for cuda | StableHLO chars | seconds |\n|---|---|---|---|')
  for name in names:
    t0 = time.perf_counter()
    try:
      config = ahead_of_time.load_config(name)
      config.dtype = args.dtype
      exported = ahead_of_time.export_step(config, 'cuda', args.batch, args.mode)
      size, ok = len(exported.mlir_module()), 'yes'
    except Exception as e:  # noqa: BLE001 - report every model, then fail
      size, ok, failed = 0, f'NO: {str(e).splitlines()[0][:120]}', failed + 1
    print(f'| {name} | {ok} | {size:,} | {time.perf_counter() - t0:.0f} |', flush=True)
  return 1 if failed else 0


if __name__ == '__main__':
  sys.exit(main())
