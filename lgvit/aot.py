"""Compile lgvit's real train step for a TPU topology on a CPU-only host, and report HBM per chip.

    pip install -r requirements-tpu.txt
    python -m lgvit.aot --topology v5e:2x4 --models nommer_b,cotnet50 --dtype bfloat16
    python -m lgvit.aot --topology v4:2x2x1 --models all --batch-per-chip 64 --mode infer
    python -m lgvit.aot --topology v4:2x2x4 --models resnet50 --search none   # 4 hosts, 16 chips

Nothing runs on a TPU: libtpu compiles for compile-only devices of the named topology
(``jax.experimental.topologies``), so this answers "does it fit, and at what batch" before renting
one. For each model the step is exactly what ``main.py`` runs (``lgvit.train.make_train_step`` with
the config's optimiser, EMA, Mixup/CutMix, random erasing, drop-path and Gumbel noise), jitted over
the same ``data`` mesh, with the state replicated and the batch sharded. Arguments are
``jax.ShapeDtypeStruct``s, so nothing is allocated.

Printed per model: compile time; FLOPs per image (XLA's cost analysis of the per-chip program);
per-chip argument, temporary and output bytes and their total (outputs that alias donated
arguments counted once; XLA's buffer assignment, i.e. the HBM the program needs); the chip's HBM;
whether it fits; and the largest per-chip batch that fits. The search uses that total being affine
in the batch (weights and optimiser state are fixed, activations grow linearly). ``--search
verify`` (default): two compiles give the line, a third checks the predicted batch (and a fourth
the next lower step if the prediction was optimistic). ``--search fit``: the line's prediction,
unchecked (two compiles). ``--search one``: no extra compile; all temporaries are taken as growing
with the batch, which underestimates the largest batch (marked with ``>=``). ``--search none``.
Where libtpu refuses the requested batch for HBM, the row says ``fits NO`` with the bytes libtpu
reported it needed, and the search starts from half that batch, halving until a program compiles.

``--batch-per-chip recipe`` (the default) is the config's global batch divided by the number of
chips. TPU kernels: the native path (``docs/kernels.md``) unless ``--kernels cpu``. From Python:
:mod:`lgvit.ahead_of_time` (this module is the command line only).
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional

from lgvit import ahead_of_time, cli, cpu_kernels
from lgvit.errors import UnknownModelError
from lgvit.models import kernels, list_models, model_info

COLUMNS = ('model', 'batch/chip', 'compile s', 'GFLOP/img', 'args GiB', 'temp GiB', 'out GiB', 'total GiB',
           'HBM GiB', 'fits', 'max batch/chip')


def _gib(n: float) -> str:
  return f'{n / ahead_of_time.GIB:.2f}'


def report_row(name: str, c: ahead_of_time.Compiled, hbm: int, max_batch: Optional[str]) -> dict:
  return {'model': name, 'batch/chip': c.batch_per_chip, 'compile s': f'{c.compile_s:.0f}',
          'GFLOP/img': f'{c.flops_per_image / 1e9:.3g}', 'args GiB': _gib(c.argument_bytes),
          'temp GiB': _gib(c.temp_bytes), 'out GiB': _gib(c.output_bytes - c.alias_bytes),
          'total GiB': _gib(c.total_bytes), 'HBM GiB': _gib(hbm), 'fits': 'yes' if c.total_bytes <= hbm else 'NO',
          'max batch/chip': '' if max_batch is None else str(max_batch)}


def refused_row(name: str, refusal: ahead_of_time.DoesNotFit, hbm: int, max_batch: Optional[str]) -> dict:
  """A row for a program libtpu refused: what it said it needed stands in the temporaries column."""
  needed = refusal.needed_bytes
  at_least = '' if needed is None else f'>{_gib(needed)}'
  row = {c: '' for c in COLUMNS}
  row.update({'model': name, 'batch/chip': refusal.batch_per_chip, 'compile s': f'{refusal.compile_s:.0f}',
              'temp GiB': at_least, 'total GiB': at_least, 'HBM GiB': _gib(hbm), 'fits': 'NO',
              'max batch/chip': '' if max_batch is None else str(max_batch)})
  return row


def main(argv=None) -> int:
  cpu_kernels.use()  # before the first JAX computation: XLA reads XLA_FLAGS when its CPU client starts
  parser = argparse.ArgumentParser(prog='python -m lgvit.aot', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--topology', required=True, help='e.g. v5e:2x4 (v5e-8), v4:2x2x1 (v4-8), v4:2x2x4 (4 hosts)')
  parser.add_argument('--models', default='all', help="comma-separated registered names, or 'all'")
  parser.add_argument('--batch-per-chip', default='recipe',
                      help="images per chip, or 'recipe': the config's global batch / chips (default)")
  parser.add_argument('--dtype', choices=('config', 'float32', 'bfloat16'), default='config',
                      help="compute dtype (default: the config's)")
  parser.add_argument('--mode', choices=('train', 'infer'), default='train')
  parser.add_argument('--kernels', choices=('native', 'cpu'), default='native',
                      help='kernel path to compile (docs/kernels.md); cpu measures the XLA:CPU rewrites on TPU')
  parser.add_argument('--config', default='', help='config file (only with one model); default configs/<model>.py')
  parser.add_argument('--search', choices=('verify', 'fit', 'one', 'none'), default='verify',
                      help='largest-batch search: 3-4 compiles, 2 (unchecked), 1 (a lower bound) or none')
  parser.add_argument('--chips-per-host', default='', help='e.g. 2x2x1 (default: the TPU generation\'s hosts)')
  parser.add_argument('--hbm-gib', type=float, default=0.0, help='override the HBM per chip')
  parser.add_argument('--bytes', action='store_true', help='also print bytes accessed per image (cost analysis)')
  args = parser.parse_args(argv)
  cli.quiet_logs()  # TensorFlow (the input pipeline, imported with lgvit.train) logs errors only
  try:
    return _run(args)
  except ahead_of_time.AotError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2


def _run(args) -> int:
  ahead_of_time.check_libtpu()
  bounds = tuple(int(d) for d in args.chips_per_host.split('x')) if args.chips_per_host else None
  devices = ahead_of_time.topology_devices(args.topology, bounds)
  hbm = ahead_of_time.chip_hbm_bytes(devices[0], args.hbm_gib)
  names = (list_models(task='classification') if args.models == 'all'
           else [n.strip() for n in args.models.split(',') if n.strip()])
  if args.config and len(names) != 1:
    raise ahead_of_time.AotError('--config needs exactly one --models name')
  try:
    for n in names:
      model_info(n)
  except UnknownModelError as e:
    raise ahead_of_time.AotError(str(e)) from None
  processes = len({d.process_index for d in devices})
  print(f'{args.topology}: {len(devices)} x {devices[0].device_kind} ({_gib(hbm)} GiB HBM each) on {processes} '
        f'host(s) | {args.mode} step | kernels: {args.kernels}', flush=True)
  columns = COLUMNS + (('MB accessed/img',) if args.bytes else ())
  rows = []
  for name in names:
    config = ahead_of_time.load_config(name, args.config)
    if args.dtype != 'config':
      config.dtype = args.dtype
    per_chip = (config.batch_size // len(devices) if args.batch_per_chip == 'recipe' else int(args.batch_per_chip))
    if per_chip < 1:
      raise ahead_of_time.AotError(f'{name}: batch per chip must be >= 1 (global batch {config.batch_size}, '
                                   f'{len(devices)} chips)')
    with kernels.force(args.kernels):
      measure = lambda b: ahead_of_time.compile_step(config, devices, b, args.mode)  # noqa: E731
      try:
        first = measure(per_chip)
      except ahead_of_time.DoesNotFit as refusal:
        print(f'{name} at {per_chip}/chip does not fit: {refusal.message}', file=sys.stderr, flush=True)
        first = None
        best = None if args.search == 'none' else ahead_of_time.search_below(measure, hbm, refusal, args.search)
        row = refused_row(name, refusal, hbm, best)
      else:
        best = None if args.search == 'none' else ahead_of_time.largest_fitting_batch(measure, hbm, first, args.search)
        row = report_row(name, first, hbm, best)
    row['dtype'] = config.dtype
    if args.bytes:
      row['MB accessed/img'] = '' if first is None else f'{first.bytes_accessed_per_image / 1e6:.0f}'
    rows.append(row)
    print(' | '.join(f'{k} {row[k]}' for k in columns), flush=True)
  print()
  print('| ' + ' | '.join(columns) + ' |')
  print('|' + '---|' * len(columns))
  for row in rows:
    print('| ' + ' | '.join(str(row[c]) for c in columns) + ' |')
  return 0


if __name__ == '__main__':
  sys.exit(main())
