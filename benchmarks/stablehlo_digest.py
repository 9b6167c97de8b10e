"""Digests of the StableHLO that a checkout traces for each model's benchmark programs.

Run it in two checkouts (e.g. before and after a refactor) and compare the lines: equal digests
mean that both trace the same program, so XLA compiles the same executable and speed and memory
cannot have changed, whatever a noisy timing run says. Source locations are dropped before hashing,
since moving code changes them without changing the program.

    PYTHONPATH=. JAX_PLATFORMS=cpu python benchmarks/stablehlo_digest.py --models resnet50,nommer_t > a.txt
    (cd ../other-checkout && PYTHONPATH=. JAX_PLATFORMS=cpu python benchmarks/stablehlo_digest.py ...) > b.txt
    diff a.txt b.txt

The programs are those of ``lgvit.benchmarking`` (inference forward, and a train step with SGD), at the
batch and size given, traced on the default backend with the kernel path it selects
(``docs/kernels.md``); ``LGVIT_KERNELS`` chooses another.
"""
import argparse
import hashlib
import re

from lgvit.benchmarking import benchmark_step
from lgvit.models import list_models

_LOCATIONS = re.compile(r'loc\([^)]*\)|#loc[0-9]*')


def program_text(name: str, mode: str, batch: int, size: int) -> str:
  """The program without its source locations: the ``#locN = loc(...)`` table and every reference to it."""
  fn, args = benchmark_step(name, mode, batch, size)
  lines = (line for line in fn.lower(*args).as_text().splitlines() if not line.startswith('#loc'))
  return _LOCATIONS.sub('', '\n'.join(lines))


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--models', default='all', help="comma-separated names, or 'all' (classification)")
  parser.add_argument('--modes', default='infer,train')
  parser.add_argument('--batch', type=int, default=2)
  parser.add_argument('--size', type=int, default=224)
  args = parser.parse_args()
  names = list_models(task='classification') if args.models == 'all' else args.models.split(',')
  for name in names:
    for mode in args.modes.split(','):
      digest = hashlib.sha256(program_text(name, mode, args.batch, args.size).encode()).hexdigest()[:16]
      print(f'{name} {mode} batch {args.batch} size {args.size}: {digest}', flush=True)


if __name__ == '__main__':
  main()
