"""Trains the Mask R-CNN digits demo and draws docs/images/detection_demo.png (truth | prediction).

    PYTHONPATH=. python docs/make_detection_demo.py [--workdir /tmp/det_demo] [--backbone resnet50] [--data-dir D]

Runs ``main.py --config=configs/mask_rcnn.py:backbone=B,demo`` (resumes, or does nothing when the
workdir is finished), then draws the first ``--images`` validation canvases of ``lgvit_digits_det``
twice: the ground truth (boxes, masks, names) and what ``LoadedModel.detect`` finds there (the
``python -m lgvit.predict --detect`` path; scores of at least ``--threshold``), upscaled 3x. Prints
the run's last box and mask AP for the docs' caption.
"""
from __future__ import annotations

import argparse

import demo_pictures
from demo_pictures import ROOT


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--workdir', default='/tmp/lgvit_det_demo')
  parser.add_argument('--backbone', default='resnet50')
  parser.add_argument('--data-dir', default=None, help="TFDS data dir (default: TFDS's own)")
  parser.add_argument('--images', type=int, default=4)
  parser.add_argument('--threshold', type=float, default=0.5)
  parser.add_argument('--out', default=str(ROOT / 'docs' / 'images' / 'detection_demo.png'))
  args = parser.parse_args(argv)
  demo_pictures.train(f'configs/mask_rcnn.py:backbone={args.backbone},demo', args.workdir, args.data_dir)

  import numpy as np
  import tensorflow_datasets as tfds
  from lgvit import cpu_kernels, detection, inference
  from lgvit.data import classes, pipeline
  cpu_kernels.use()  # before the first JAX computation: XLA reads XLA_FLAGS when its CPU client starts
  loaded = inference.load(args.workdir)
  palette = classes.palette_for(len(loaded.class_names))
  builder = pipeline.get_builder('lgvit_digits_det', args.data_dir)
  split = builder.as_dataset(split='validation', shuffle_files=False).take(args.images)
  rows = []
  for ex in tfds.as_numpy(split):
    image, objects = ex['image'], ex['objects']
    h, w = image.shape[:2]
    truth_boxes = objects['bbox'][:, [1, 0, 3, 2]] * np.array([w, h, w, h], np.float32)  # TFDS yxyx -> x1y1x2y2
    truth = detection.draw(image, truth_boxes, objects['label'], [loaded.class_names[i] for i in objects['label']],
                           None, objects['mask'][..., 0].astype(bool), palette)
    found = loaded.detect(image, score_threshold=args.threshold)
    predicted = detection.draw(image, found.boxes, found.labels, found.names, found.scores, found.masks, palette)
    gap = np.full((h, 4, 3), 255, np.uint8)
    rows.append(np.concatenate([truth, gap, predicted], axis=1))
  demo_pictures.save(rows, args.out)
  last = demo_pictures.last_eval(args.workdir, 'eval_bbox_AP')
  print(f"wrote {args.out}; step {last['step']}: bbox AP {last['eval_bbox_AP']:.4f} | AP50 "
        f"{last['eval_bbox_AP50']:.4f} | segm AP {last['eval_segm_AP']:.4f}")


if __name__ == '__main__':
  main()
