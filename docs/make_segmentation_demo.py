"""Trains the UperNet digits demo and draws docs/images/segmentation_demo.png (image | truth | prediction).

    PYTHONPATH=. python docs/make_segmentation_demo.py [--workdir /tmp/seg_demo] [--backbone nommer_t] [--data-dir D]

Runs ``main.py --config=configs/upernet.py:backbone=B,demo`` (resumes or skips when the workdir is
finished), then draws the first ``--rows`` validation canvases of ``lgvit_digits_seg`` through
whole-image inference of the trained weights, each row image | ground truth | prediction in the demo
palette (ADE20K's first 11 colours), upscaled 3x. Prints the run's final mIoU for the docs' caption.
"""
from __future__ import annotations

import argparse
import sys

import demo_pictures
from demo_pictures import ROOT


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--workdir', default='/tmp/lgvit_seg_demo')
  parser.add_argument('--backbone', default='nommer_t')
  parser.add_argument('--data-dir', default=None, help="TFDS data dir (default: TFDS's own)")
  parser.add_argument('--rows', type=int, default=4)
  parser.add_argument('--out', default=str(ROOT / 'docs' / 'images' / 'segmentation_demo.png'))
  args = parser.parse_args(argv)
  demo_pictures.train(f'configs/upernet.py:backbone={args.backbone},demo', args.workdir, args.data_dir)

  import jax
  import jax.numpy as jnp
  import numpy as np
  import tensorflow_datasets as tfds
  from lgvit import checkpoint as ckpt
  from lgvit import cpu_kernels, segmentation
  from lgvit.data import classes, pipeline
  from lgvit.modeling import build_model, normalize
  sys.path.insert(0, str(ROOT))
  from configs import upernet
  cpu_kernels.use()  # before the first JAX computation: XLA reads XLA_FLAGS when its CPU client starts
  c = upernet.get_config(f'backbone={args.backbone},demo')
  if args.data_dir:
    c.unlock()
    c.data.data_dir = args.data_dir
  model, variables = build_model(c), ckpt.load_variables(args.workdir)
  apply = jax.jit(lambda x: model.apply(variables, x, train=False))  # normalised images (lgvit.segmentation)
  builder = pipeline.get_builder('lgvit_digits_seg', c.data.data_dir)
  ex = next(iter(tfds.as_numpy(builder.as_dataset(split='validation', shuffle_files=False).batch(args.rows))))
  pred = np.asarray(jnp.argmax(segmentation.infer_whole(apply, normalize(jnp.asarray(ex['image']))), -1))
  palette = classes.palette_for(c.num_classes)
  rows = [segmentation.comparison_picture(ex['image'][i], ex['annotation'][i, ..., 0], pred[i], palette)
          for i in range(args.rows)]
  demo_pictures.save(rows, args.out)
  last = demo_pictures.last_eval(args.workdir, 'eval_mIoU')
  print(f"wrote {args.out}; step {last['step']}: mIoU {last['eval_mIoU']:.4f} | aAcc {last['eval_aAcc']:.4f} | "
        f"mAcc {last['eval_mAcc']:.4f}")


if __name__ == '__main__':
  main()
