"""Export trained weights for inference.

    python -m lgvit.export --workdir W --out DIR                        # --format jax (the default)
    python -m lgvit.export --workdir W --out DIR --format savedmodel    # + a TF SavedModel
    python -m lgvit.export --workdir W --out DIR --format all --platforms cpu,cuda

writes, from the latest readable checkpoint of the workdir (EMA weights when the run kept them):

    DIR/variables/         orbax checkpoint of {'params', 'batch_stats'} (no optimizer state);
                           loadable with lgvit.checkpoint.load_variables and config.init_from
    DIR/export.json        model name, dataset, config, input size, which weights and formats were exported
  --format jax (default) or all:
    DIR/variables.npz      the same arrays, flat, named by path ('params/stem/conv/kernel', ...)
    DIR/model.jax          jax.export serialisation of the eval forward, symbolic batch size,
                           input uint8 or float32 NHWC (ImageNet-normalised inside), output logits
  --format savedmodel or all:
    DIR/savedmodel/        TF SavedModel for TF Serving (jax2tf, native serialisation: the forward
                           is the same StableHLO as model.jax, the weights are TF variables).
                           Signatures, batch dimension symbolic (None), output {'logits': float32}:
                           'serving_default': images float32 (B, S, S, 3), RGB on the 0..255 scale;
                           'serving_uint8':   images uint8 (B, S, S, 3).

Both serialised forms run only on the ``--platforms`` they were lowered for (default: this machine's
JAX backend; e.g. ``cpu,cuda`` for TF Serving on either). Neither resizes or crops: feed images through
the eval transform that export.json names (``lgvit.data.transforms.eval_image``). docs/export.md has
the details and the TFLite status. From Python: :mod:`lgvit.exporting` (this module is the command
line only).
"""
from __future__ import annotations

import argparse
import sys

from lgvit import cli, cpu_kernels, exporting


def main(argv=None):
  cpu_kernels.use()  # before the first JAX computation: XLA reads XLA_FLAGS when its CPU client starts
  parser = argparse.ArgumentParser(prog='python -m lgvit.export', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--out', required=True)
  parser.add_argument('--raw', action='store_true', help='export the raw weights even if EMA weights exist')
  parser.add_argument('--format', default='jax', choices=exporting.FORMATS,
                      help='jax: variables.npz + model.jax (default); savedmodel: a TF SavedModel; all: both')
  parser.add_argument('--platforms', default='', help=f"comma-separated subset of {','.join(exporting.PLATFORMS)} "
                      'to lower for (default: this backend)')
  args = parser.parse_args(argv)
  cli.quiet_logs()

  def run():
    platforms = [p for p in args.platforms.split(',') if p] or None
    meta = exporting.export(args.workdir, args.out, prefer_ema=not args.raw, fmt=args.format, platforms=platforms)
    print(f"exported {meta['model']} from {args.workdir} to {args.out}")

  return cli.report_errors(run)


if __name__ == '__main__':
  sys.exit(main())
