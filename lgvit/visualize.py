"""Pictures of what a model does with one image, from the values its layers sow.

    python -m lgvit.visualize --workdir W --image photo.jpg --out DIR
    python -m lgvit.visualize --workdir CONVERTED_DIR --model nommer_t --image photo.jpg --out DIR

``--workdir`` takes what ``python -m lgvit.predict`` takes (training workdir, export dir, or a
converted checkpoint dir with ``--model``). The image goes through the model's evaluation transform;
the pictures show that crop. Which pictures depends on the model's family:

* NomMer: the nomination map of every S-NomMer layer ("Layer B_L" = layer L of stage B, as the
  paper's Fig. 4) over the crop, red = CNN, green = local window MHSA, blue = compressed global
  context (the paper's colours): ``nommer_nomination_stage{B}_block{L-1}.png`` (crop overlay |
  flat map) and the grid ``nommer_nominations.png``.
* SALG: the region segmentation of every SALG stage (the paper's Fig. 4): ``salg_regions_stage{s}.png``.
* LESA family: the unary and binary weights of every layer as the paper's Tables 1 and 2 define them
  (LESA: 1/(1+w), w/(1+w) of the fusion gate; SA: the softmax weight S[i,i] a position puts on itself,
  and 1 - S[i,i]; static LESA: 0.5 each), ``lesa_unary_binary.png``, and where the binary term gets
  its weight, ``lesa_binary_maps.png`` (LESA and SA); the mean over the layers is also printed.
* CoTNet: the static (K1) vs dynamic (K2) fusion weight of every CoT layer and stage,
  ``cotnet_static_dynamic.png``.

Every run also writes ``summary.json`` with the numbers behind the pictures. From Python:
:func:`lgvit.introspection.pictures` (this module is the command line only).
"""
from __future__ import annotations

import argparse
import os
import sys

from lgvit import cli, cpu_kernels, inference, introspection


def main(argv=None) -> int:
  cpu_kernels.use()  # before the first JAX computation: XLA reads XLA_FLAGS when its CPU client starts
  parser = argparse.ArgumentParser(prog='python -m lgvit.visualize', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  cli.add_source_arguments(parser)
  parser.add_argument('--image', required=True, help='image file (JPEG, PNG, GIF, BMP)')
  parser.add_argument('--out', required=True, help='directory for the PNG files and summary.json')
  args = parser.parse_args(argv)
  missing = cli.missing_files_error([args.image])
  if missing:
    print(f'error: {missing}', file=sys.stderr)
    return 2
  cli.quiet_logs()

  def run():
    loaded = inference.load(args.workdir, args.model, best=args.best, image_size=args.image_size)
    pics, summary = introspection.pictures(loaded, args.image)
    for path, pic in zip(introspection.save(pics, summary, args.out), pics):
      print(f'{path}  {pic.image.width}x{pic.image.height}  {pic.title}')
    print(f"{os.path.join(args.out, 'summary.json')}  top-5: {', '.join(summary['top5'])}")
    if 'mean_unary' in summary:  # LESA family: the paper's Tables 1/2 "Weights (%)" of this image
      print(f"unary / binary weight: {summary['mean_unary']:.1%} / {summary['mean_binary']:.1%}  "
            f"({summary['definition']}; mean over {len(summary['unary_binary'])} layers)")

  return cli.report_errors(run)


if __name__ == '__main__':
  sys.exit(main())
