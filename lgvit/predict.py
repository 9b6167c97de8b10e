"""Classify images with a trained, exported or converted lgvit model.

    python -m lgvit.predict --workdir W image1.jpg image2.png            # training workdir of main.py
    python -m lgvit.predict --workdir EXPORT_DIR image.jpg               # written by python -m lgvit.export
    python -m lgvit.predict --workdir CONVERTED_DIR --model nommer_t x.jpg   # written by python -m lgvit.convert
    python -m lgvit.predict --workdir W --segment image.jpg --out mask.png   # an upernet_* model (docs/segmentation.md)
    python -m lgvit.predict --workdir W --detect image.jpg --out boxes.png   # a mask_rcnn_* model (docs/detection.md)

prints the top-5 classes of each image with their names. Images go through the model's own
evaluation transform (its config's or registry entry's image size, crop_pct and interpolation),
without TensorFlow. Class names: ImageNet-1k from ``lgvit/data/imagenet_class_names.txt``, '0'..'9'
for the embedded digits, else the class index (``lgvit.data.classes``).

This module is the command line only; from Python, :func:`lgvit.inference.load` returns the same
model as a :class:`lgvit.inference.LoadedModel` (``classify``, ``segment``, ``detect``, ``intermediates``).
"""
from __future__ import annotations

import argparse
import functools
import os
import pathlib
import sys
from typing import Optional

import numpy as np
from PIL import Image

from lgvit import cli, cpu_kernels, detection, inference, segmentation
from lgvit.data import classes


def _load(args: argparse.Namespace) -> inference.LoadedModel:
  return inference.load(args.workdir, args.model, best=args.best, image_size=args.image_size)


def main(argv=None) -> int:
  cpu_kernels.use()  # before the first JAX computation: XLA reads XLA_FLAGS when its CPU client starts
  parser = argparse.ArgumentParser(prog='python -m lgvit.predict', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  cli.add_source_arguments(parser)
  parser.add_argument('--top', type=int, default=5, help='how many classes to print per image')
  parser.add_argument('--segment', nargs='+', default=None, metavar='IMAGE',
                      help='segmentation models: write the colour-coded class map of each image (ADE20K palette)')
  parser.add_argument('--detect', nargs='+', default=None, metavar='IMAGE',
                      help='detection models: draw the boxes, class names, scores and masks found in each image')
  parser.add_argument('--score-threshold', type=float, default=0.3,
                      help='with --detect: the lowest score drawn and printed (default 0.3)')
  parser.add_argument('--out', default='',
                      help='with --segment or --detect: the PNG to write (one image) or a directory')
  parser.add_argument('--scale', default='', help="with --segment: resize to fit LONGxSHORT first, e.g. 2048x512 "
                      "(mmseg's ADE20K test scale); default: the image's own size")
  parser.add_argument('images', nargs='*', help='image files (JPEG, PNG, GIF, BMP)')
  args = parser.parse_args(argv)
  if args.segment and args.detect:
    parser.error('give either --segment or --detect')
  pictures = args.segment or args.detect
  if not args.images and not pictures:
    parser.error('give image files to classify (or --segment / --detect IMAGE ... for a segmentation or '
                 'detection model)')
  problem = cli.missing_files_error(pictures or args.images) or (picture_usage_error(args, pictures) if pictures
                                                                 else None)
  if problem:
    print(f'error: {problem}', file=sys.stderr)
    return 2
  cli.quiet_logs()
  command = segment_images if args.segment else detect_images if args.detect else classify_images
  return cli.report_errors(functools.partial(command, args))


def classify_images(args: argparse.Namespace):
  loaded = _load(args)
  results = loaded.classify(args.images, k=args.top)
  print(f'{loaded.name} from {loaded.source} ({loaded.image_size}px, crop_pct {loaded.crop_pct}, '
        f'{loaded.interpolation})')
  for image, predictions in zip(args.images, results):
    print(inference.format_predictions(image, predictions))


def _scale(text: str) -> Optional[tuple[int, ...]]:
  return tuple(int(v) for v in text.lower().split('x')) if text else None


def picture_usage_error(args: argparse.Namespace, images: list[str]) -> Optional[str]:
  flag = '--segment' if args.segment else '--detect'
  if not args.out:
    return f'--out is required with {flag} (a .png file, or a directory for several images)'
  if len(images) > 1 and not os.path.isdir(args.out):
    return f'--out {args.out}: give an existing directory for {len(images)} images'
  try:
    _scale(args.scale)
  except ValueError:
    return f'--scale {args.scale!r}: use LONGxSHORT, e.g. 2048x512'
  return None


def _out_path(args: argparse.Namespace, images: list[str], image: str, suffix: str) -> str:
  return os.path.join(args.out, pathlib.Path(image).stem + suffix) if len(images) > 1 else args.out


def detect_images(args: argparse.Namespace):
  """``--detect``: one PNG per image with its objects drawn, and one line per object."""
  loaded = _load(args)
  palette = classes.palette_for(len(loaded.class_names))
  for image in args.detect:
    pixels = inference.read_image(image)
    found = loaded.detect(pixels, args.score_threshold)
    out = _out_path(args, args.detect, image, '_detections.png')
    Image.fromarray(detection.draw(pixels, found.boxes, found.labels, found.names, found.scores, found.masks,
                                   palette)).save(out)
    print(f'{image} -> {out}: {len(found.names)} objects scoring >= {args.score_threshold}')
    for name, score, box in zip(found.names, found.scores, found.boxes):
      print(f"  {name} {score:.3f} at x0 y0 x1 y1 = {' '.join(f'{v:.1f}' for v in box)}")


def segment_images(args: argparse.Namespace):
  """``--segment``: one colour-coded PNG per image, and the classes that cover most of it."""
  loaded = _load(args)
  palette = classes.palette_for(len(loaded.class_names))
  for image in args.segment:
    labels = loaded.segment(image, _scale(args.scale))
    out = _out_path(args, args.segment, image, '_mask.png')
    Image.fromarray(segmentation.colorize(labels, palette)).save(out)
    counts = np.bincount(labels.ravel(), minlength=len(loaded.class_names))
    top = np.argsort(-counts, kind='stable')[:args.top]
    shares = ', '.join(f'{loaded.class_names[i]} {100 * counts[i] / labels.size:.1f}%' for i in top if counts[i])
    print(f'{image} -> {out}: {shares}')


if __name__ == '__main__':
  sys.exit(main())
