"""COCO 2017 instance segmentation as a TFDS dataset with masks, ``lgvit_coco/2017`` (docs/detection.md, "Data").

TFDS's own ``coco/2017`` keeps each object's box, label, area and ``is_crowd`` but drops its
segmentation (tensorflow_datasets/object_detection/coco.py leaves masks as a TODO), so Mask R-CNN
cannot train on it. This builder reads the official release from a folder you download it to:

    python -m lgvit.data.coco --manual_dir=DIR [--data_dir=~/tensorflow_datasets]

with ``train2017.zip``, ``val2017.zip`` and ``annotations_trainval2017.zip`` (https://cocodataset.org)
in DIR, or their unzipped folders ``train2017/``, ``val2017/`` and ``annotations/``. Splits: ``train``
(118,287 images) and ``validation`` (5,000), in image-id order, images without annotations included.

Features (the embedded demo ``lgvit_digits_det`` has the same layout, lgvit/data/digits_det.py):

* ``image``: the JPEG as it is in the zip; ``image/id``: COCO's image id; ``image/filename``;
* ``objects``: every annotation of the image, in annotation-id order, crowd regions included
  (``is_crowd`` True: training leaves them out, evaluation needs them): ``id`` (COCO's annotation id),
  ``area`` (COCO's float area, the one COCOeval's area ranges use), ``bbox`` (TFDS ``BBoxFeature``:
  ymin, xmin, ymax, xmax of COCO's ``[x, y, w, h]`` divided by the image height / width, clipped to
  [0, 1]), ``label`` (0..79, the position of the category id in
  :func:`lgvit.data.classes.coco_categories`), ``is_crowd`` and ``mask``: the full-image binary mask
  (uint8 0/1, one PNG per object) decoded with pycocotools from the polygons, uncompressed RLE (crowd)
  or compressed RLE, the way mmdetection's ``LoadAnnotations(poly2mask=True)`` decodes them.
"""
from __future__ import annotations

import argparse
import collections
import io
import json
import os

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image
from pycocotools import mask as mask_utils

from lgvit.data import classes

HOMEPAGE = 'https://cocodataset.org/#download'
#: split -> (image folder / zip stem, annotation file inside annotations/)
SPLITS = {'train': ('train2017', 'instances_train2017.json'), 'validation': ('val2017', 'instances_val2017.json')}
ANNOTATIONS = 'annotations_trainval2017'


def decode_segmentation(segmentation, height: int, width: int) -> np.ndarray:
  """An annotation's ``segmentation`` (a list of polygons, an uncompressed RLE with a ``counts`` list, or
  a compressed RLE) -> (height, width) uint8 mask of 0/1."""
  if isinstance(segmentation, list):  # polygons: one RLE each, merged (their union)
    rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
  elif isinstance(segmentation['counts'], list):  # uncompressed RLE (crowd regions)
    rle = mask_utils.frPyObjects(segmentation, height, width)
  else:
    rle = segmentation
  return mask_utils.decode(rle).astype(np.uint8)


def _png(mask: np.ndarray) -> io.BytesIO:
  buf = io.BytesIO()
  Image.fromarray(mask).save(buf, format='PNG', compress_level=1)
  buf.seek(0)
  return buf


def _bbox(box, height: int, width: int) -> tfds.features.BBox:
  x, y, w, h = (float(v) for v in box)
  clip = lambda v: min(max(v, 0.0), 1.0)
  return tfds.features.BBox(ymin=clip(y / height), xmin=clip(x / width), ymax=clip((y + h) / height),
                            xmax=clip((x + w) / width))


def check_categories(categories: list[dict], path: str) -> dict[int, int]:
  """The annotation file's category id -> lgvit label; refuses a file whose categories are not COCO's 80."""
  got = sorted((int(c['id']), c['name']) for c in categories)
  want = list(classes.coco_categories())
  if got != want:
    raise ValueError(f'{path}: its {len(got)} categories are not the 80 of COCO 2017 '
                     f'({classes.COCO_CLASSES_FILE}); first difference: '
                     f'{next(((g, w) for g, w in zip(got, want) if g != w), (got[len(want):], want[len(got):]))}')
  return classes.coco_category_id_to_label()


def example_from_annotations(image_info: dict, annotations: list[dict], image_path, label_of: dict[int, int]) -> dict:
  """The feature dict of one image (the layout of the module docstring)."""
  height, width = int(image_info['height']), int(image_info['width'])
  objects = [{'id': int(a['id']), 'area': float(a['area']), 'bbox': _bbox(a['bbox'], height, width),
              'label': label_of[int(a['category_id'])], 'is_crowd': bool(a.get('iscrowd', 0)),
              'mask': _png(decode_segmentation(a['segmentation'], height, width))}
             for a in sorted(annotations, key=lambda a: a['id'])]
  return {'image': image_path, 'image/id': int(image_info['id']), 'image/filename': image_info['file_name'],
          'objects': objects}


def instance_features(image: tfds.features.Image, class_names, canvas=None) -> tfds.features.FeaturesDict:
  """The feature layout of every lgvit detection dataset (COCO's and the demo's, docs/detection.md): the
  image, its id and file name, and per object its id, area, box, label, crowd flag and a PNG mask of the
  image's size (``canvas`` x ``canvas``, or any size)."""
  return tfds.features.FeaturesDict({
      'image': image,
      'image/id': np.int64,
      'image/filename': tfds.features.Text(),
      'objects': tfds.features.Sequence({
          'id': np.int64,
          'area': np.float32,
          'bbox': tfds.features.BBoxFeature(),
          'label': tfds.features.ClassLabel(names=class_names),
          'is_crowd': np.bool_,
          'mask': tfds.features.Image(shape=(canvas, canvas, 1), encoding_format='png'),
      }),
  })


class LgvitCocoConfig(tfds.core.BuilderConfig):
  pass


class LgvitCoco(tfds.core.GeneratorBasedBuilder):
  """COCO 2017 images with boxes, labels, crowd flags and instance masks (TFDS name ``lgvit_coco/2017``)."""
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = [LgvitCocoConfig(name='2017', description='COCO 2017 train / val instance annotations.')]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f'Download train2017.zip, val2017.zip and {ANNOTATIONS}.zip from {HOMEPAGE} into the manual dir '
      '(or unzip them there: train2017/, val2017/, annotations/).')

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description='COCO 2017 instance segmentation: 80 categories, boxes, crowd flags and per-object masks.',
        features=instance_features(tfds.features.Image(encoding_format='jpeg'), classes.coco_class_names()),
        homepage=HOMEPAGE,
    )

  def _folder(self, dl_manager, stem: str) -> str:
    """``<manual>/<stem>/`` if unzipped, else the extracted ``<manual>/<stem>.zip``'s folder."""
    manual = dl_manager.manual_dir
    folder = os.path.join(manual, stem)
    if os.path.isdir(folder):
      return folder
    archive = os.path.join(manual, f'{stem}.zip')
    if not os.path.exists(archive):
      raise FileNotFoundError(f'neither {folder}/ nor {archive} exists in the manual dir {manual}. '
                              f'{self.MANUAL_DOWNLOAD_INSTRUCTIONS}')
    return dl_manager.extract(archive)

  def _split_generators(self, dl_manager):
    manual = dl_manager.manual_dir
    if not os.path.isdir(os.path.join(manual, 'annotations')):
      annotations = os.path.join(self._folder(dl_manager, ANNOTATIONS), 'annotations')
    else:
      annotations = os.path.join(manual, 'annotations')
    out = {}
    for split, (stem, json_name) in SPLITS.items():
      images = self._folder(dl_manager, stem)
      if os.path.isdir(os.path.join(images, stem)):  # the zip holds one folder of its name
        images = os.path.join(images, stem)
      path = os.path.join(annotations, json_name)
      if not os.path.exists(path):
        raise FileNotFoundError(f'{path} not found (it comes in {ANNOTATIONS}.zip). {self.MANUAL_DOWNLOAD_INSTRUCTIONS}')
      out[split] = self._generate_examples(images, path)
    return out

  def _generate_examples(self, image_dir: str, annotation_path: str):
    with open(annotation_path) as f:
      data = json.load(f)
    label_of = check_categories(data['categories'], annotation_path)
    by_image = collections.defaultdict(list)
    for a in data['annotations']:
      by_image[a['image_id']].append(a)
    for info in sorted(data['images'], key=lambda i: i['id']):
      yield info['file_name'], example_from_annotations(info, by_image.get(info['id'], []),
                                                        os.path.join(image_dir, info['file_name']), label_of)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--manual_dir', required=True)
  parser.add_argument('--data_dir', default=None)
  args = parser.parse_args(argv)
  builder = LgvitCoco(config='2017', data_dir=args.data_dir)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=args.manual_dir))
  print(f'prepared {builder.name}/2017 in {builder.data_dir}: '
        f"{', '.join(f'{k} {v.num_examples}' for k, v in builder.info.splits.items())}")


if __name__ == '__main__':
  main()
