"""lgvit_coco (lgvit/data/coco.py) built from tiny synthetic copies of the official zips: polygon, crowd
(uncompressed RLE) and compressed-RLE masks against pycocotools, labels <-> COCO ids, missing files."""
import io
import json
import zipfile

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image
from pycocotools import mask as mask_utils

from lgvit.data import classes, coco, det_pipeline, det_transforms

SIZES = {1: (40, 60), 7: (50, 30), 3: (32, 32)}  # image id -> (h, w); image 3 has no annotation


def _jpeg(h, w, seed):
  buf = io.BytesIO()
  Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, 'JPEG')
  return buf.getvalue()


def _uncompressed_rle(mask):
  """COCO's crowd format: run lengths of the column-major pixels, starting with a run of zeros."""
  flat = mask.flatten(order='F')
  changes = np.flatnonzero(np.diff(flat)) + 1
  edges = np.concatenate([[0], changes, [flat.size]])
  runs = np.diff(edges).tolist()
  if flat[0]:
    runs = [0] + runs
  return {'counts': runs, 'size': list(mask.shape)}


def _annotations():
  crowd = np.zeros((40, 60), np.uint8)
  crowd[5:20, 30:50] = 1
  crowd[22:24, 0:3] = 1
  triangle = (np.arange(50)[:, None] + np.arange(30)[None] < 20).astype(np.uint8)
  compressed = mask_utils.encode(np.asfortranarray(triangle))
  return [
      {'id': 11, 'image_id': 1, 'category_id': 18, 'iscrowd': 0, 'area': 350.5, 'bbox': [2, 3, 48, 35],
       'segmentation': [[2, 3, 22, 3, 22, 18, 2, 18], [40, 30, 50, 30, 45, 38]]},
      {'id': 10, 'image_id': 1, 'category_id': 1, 'iscrowd': 1, 'area': 306.0, 'bbox': [0, 5, 50, 19],
       'segmentation': _uncompressed_rle(crowd)},
      {'id': 12, 'image_id': 7, 'category_id': 90, 'iscrowd': 0, 'area': 210.0, 'bbox': [0, 0, 20, 20],
       'segmentation': {'counts': compressed['counts'].decode(), 'size': [50, 30]}},
  ]


def write_zips(root, annotations=None):
  cats = [{'id': i, 'name': n, 'supercategory': ''} for i, n in classes.coco_categories()]
  images = [{'id': i, 'file_name': f'{i:012d}.jpg', 'height': h, 'width': w} for i, (h, w) in SIZES.items()]
  with zipfile.ZipFile(root / 'train2017.zip', 'w') as z:
    for i, (h, w) in SIZES.items():
      z.writestr(f'train2017/{i:012d}.jpg', _jpeg(h, w, i))
  with zipfile.ZipFile(root / 'val2017.zip', 'w') as z:
    z.writestr('val2017/000000000005.jpg', _jpeg(20, 24, 5))
  with zipfile.ZipFile(root / 'annotations_trainval2017.zip', 'w') as z:
    z.writestr('annotations/instances_train2017.json',
               json.dumps({'images': images, 'annotations': annotations or _annotations(), 'categories': cats}))
    z.writestr('annotations/instances_val2017.json', json.dumps({
        'images': [{'id': 5, 'file_name': '000000000005.jpg', 'height': 20, 'width': 24}], 'annotations': [],
        'categories': cats}))


@pytest.fixture(scope='module')
def built(tmp_path_factory):
  manual = tmp_path_factory.mktemp('manual')
  write_zips(manual)
  builder = coco.LgvitCoco(config='2017', data_dir=str(tmp_path_factory.mktemp('tfds')))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
  return builder


def test_masks_labels_and_boxes_match_pycocotools(built):
  assert {s: built.info.splits[s].num_examples for s in ('train', 'validation')} == {'train': 3, 'validation': 1}
  examples = {int(ex['image/id']): ex for ex in tfds.as_numpy(built.as_dataset(split='train'))}
  assert sorted(examples) == [1, 3, 7]
  by_id = {a['id']: a for a in _annotations()}
  for image_id, ex in examples.items():
    h, w = SIZES[image_id]
    assert ex['image'].shape == (h, w, 3)
    objects = ex['objects']
    want = sorted((a for a in by_id.values() if a['image_id'] == image_id), key=lambda a: a['id'])
    assert list(objects['id']) == [a['id'] for a in want]  # crowd kept, annotation-id order
    for k, a in enumerate(want):
      seg = a['segmentation']
      rles = (mask_utils.frPyObjects(seg, h, w) if isinstance(seg, list) or isinstance(seg['counts'], list)
              else seg)
      reference = mask_utils.decode(mask_utils.merge(rles) if isinstance(rles, list) else rles)
      np.testing.assert_array_equal(objects['mask'][k][..., 0], reference)
      assert reference.sum() > 0 and objects['is_crowd'][k] == bool(a['iscrowd'])
      assert classes.coco_label_to_category_id()[objects['label'][k]] == a['category_id']
      x, y, bw, bh = a['bbox']
      np.testing.assert_allclose(objects['bbox'][k], [y / h, x / w, (y + bh) / h, (x + bw) / w], rtol=1e-6)
      assert objects['area'][k] == pytest.approx(a['area'])
  assert examples[1]['objects']['label'].tolist() == [0, 16]  # person (crowd), dog
  assert examples[7]['objects']['label'].tolist() == [79]  # toothbrush, id 90
  assert len(examples[3]['objects']['id']) == 0


def test_training_targets_leave_the_crowd_out_and_ground_truth_keeps_it(built):
  ds = built.as_dataset(split='train', decoders=det_pipeline.DECODERS)
  for ex in ds:
    if int(ex['image/id']) != 1:
      continue
    image = det_pipeline.decode_image(ex)
    out = det_transforms.transform(image, ex['objects'], scales=[(60, 40)], pad_size=(64, 64), max_instances=3,
                                   mask_stride=1)
    np.testing.assert_array_equal(out['gt_valid'].numpy(), [True, False, False])
    assert out['gt_labels'].numpy()[0] == 16
    np.testing.assert_allclose(out['gt_boxes'].numpy()[0], [2, 3, 50, 38], atol=1e-4)
  gt = det_pipeline.coco_ground_truth(built, 'train')
  anns = sorted(gt['annotations'], key=lambda a: (a['image_id'], a['category_id']))
  assert [(a['image_id'], a['category_id'], a['iscrowd']) for a in anns] == [(1, 1, 1), (1, 18, 0), (7, 90, 0)]
  assert {c['id'] for c in gt['categories']} == {i for i, _ in classes.coco_categories()}
  crowd = mask_utils.decode(anns[0]['segmentation'])
  assert crowd.sum() == 15 * 20 + 6


def test_missing_files_and_foreign_categories_say_what_to_do(tmp_path):
  builder = coco.LgvitCoco(config='2017', data_dir=str(tmp_path / 'tfds'))
  partial = tmp_path / 'partial'
  partial.mkdir()
  with zipfile.ZipFile(partial / 'train2017.zip', 'w') as z:  # the images, not the annotations
    z.writestr('train2017/000000000001.jpg', _jpeg(8, 8, 0))
  with pytest.raises(FileNotFoundError, match=r'annotations_trainval2017\.zip exists in the manual dir .*partial'):
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(partial)))
  (tmp_path / 'empty').mkdir()  # TFDS's own check names the three files
  with pytest.raises(AssertionError, match=r'train2017\.zip, val2017\.zip and annotations_trainval2017\.zip'):
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / 'empty')))
  with pytest.raises(ValueError, match='not the 80 of COCO 2017'):
    coco.check_categories([{'id': 1, 'name': 'person'}], 'x.json')
  assert len(classes.coco_class_names()) == 80 and classes.coco_category_id_to_label()[90] == 79
