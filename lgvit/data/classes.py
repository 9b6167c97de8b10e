"""What the labels of lgvit's datasets mean: class names, WordNet synsets and colour maps.

Read from the files committed next to this module (no TensorFlow, no download):

* ``imagenet_class_names.txt``: the 1000 ImageNet-1k synsets with their WordNet lemmas, in TFDS label order;
* ``imagenet_a_synsets.txt``, ``imagenet_r_synsets.txt``: the 200 classes of ImageNet-A / ImageNet-R
  (docs/evaluation.md);
* ``ade20k_classes.tsv``: ADE20K's 150 classes and mmseg's colour map for them (docs/segmentation.md);
* ``coco_classes.tsv``: COCO's 80 instance categories with their original ids (docs/detection.md).
"""
from __future__ import annotations

import functools
import pathlib
from typing import Optional

import numpy as np

DATA_DIR = pathlib.Path(__file__).parent
IMAGENET_CLASS_NAMES_FILE = DATA_DIR / 'imagenet_class_names.txt'
ADE20K_CLASSES_FILE = DATA_DIR / 'ade20k_classes.tsv'
COCO_CLASSES_FILE = DATA_DIR / 'coco_classes.tsv'
#: The 200-class ImageNet variants whose synsets are committed as ``<subset>_synsets.txt``.
IMAGENET_SUBSETS = ('imagenet_a', 'imagenet_r')
#: The embedded segmentation demo's classes (``lgvit_digits_seg``, lgvit/data/digits_seg.py).
DEMO_CLASS_NAMES = ('background',) + tuple(str(d) for d in range(10))
#: The embedded detection demo's categories (``lgvit_digits_det``, lgvit/data/digits_det.py): label k is digit k
#: (no background entry: detection labels are the 0-based object classes, docs/detection.md).
DET_DEMO_CLASS_NAMES = tuple(str(d) for d in range(10))


def _rows(path: pathlib.Path) -> list[str]:
  return [line for line in path.read_text().splitlines() if line.strip() and not line.startswith('#')]


@functools.lru_cache(maxsize=None)
def imagenet_synsets_and_lemmas() -> tuple[tuple[str, str], ...]:
  """(synset, 'lemma, lemma, ...') for the 1000 ImageNet labels in TFDS order."""
  rows = tuple(tuple(line.split('\t', 1)) for line in _rows(IMAGENET_CLASS_NAMES_FILE))
  if len(rows) != 1000:
    raise RuntimeError(f'{IMAGENET_CLASS_NAMES_FILE} holds {len(rows)} classes, expected 1000')
  return rows


def imagenet_class_names() -> list[str]:
  """Short ImageNet names (the first WordNet lemma of each label), e.g. 'tabby' for label 281."""
  return [lemmas.split(', ')[0] for _, lemmas in imagenet_synsets_and_lemmas()]


@functools.lru_cache(maxsize=None)
def imagenet_subset_labels(subset: str) -> np.ndarray:
  """The ImageNet-1k labels (TFDS order) of the 200 classes of ``subset`` ('imagenet_a' or 'imagenet_r'), sorted."""
  if subset not in IMAGENET_SUBSETS:
    raise ValueError(f'subset must be one of {IMAGENET_SUBSETS}, got {subset!r}')
  path = DATA_DIR / f'{subset}_synsets.txt'
  label_of = {synset: i for i, (synset, _) in enumerate(imagenet_synsets_and_lemmas())}
  labels = np.array(sorted(label_of[line.strip()] for line in _rows(path)), np.int32)
  if len(labels) != 200 or len(set(labels.tolist())) != 200:
    raise RuntimeError(f'{path} holds {len(set(labels.tolist()))} distinct classes, expected 200')
  return labels


def ade20k_classes() -> tuple[list[str], np.ndarray]:
  """ADE20K's 150 class names (0..149, after reduce_zero_label) and its (150, 3) uint8 colour map."""
  names, colours = [], []
  for line in _rows(ADE20K_CLASSES_FILE):
    name, rgb = line.split('\t')
    names.append(name)
    colours.append([int(v) for v in rgb.split()])
  return names, np.asarray(colours, np.uint8)


@functools.lru_cache(maxsize=None)
def coco_categories() -> tuple[tuple[int, str], ...]:
  """COCO's 80 (original category id, name) pairs in id order; the position is lgvit's 0-based label."""
  rows = tuple((int(i), name) for i, name in (line.split('\t') for line in _rows(COCO_CLASSES_FILE)))
  if len(rows) != 80 or [i for i, _ in rows] != sorted({i for i, _ in rows}):
    raise RuntimeError(f'{COCO_CLASSES_FILE} must hold 80 categories with increasing ids')
  return rows


def coco_class_names() -> list[str]:
  """The 80 COCO names in label order ('person' is 0, 'toothbrush' 79)."""
  return [name for _, name in coco_categories()]


def coco_label_to_category_id() -> np.ndarray:
  """(80,) int64: lgvit's contiguous label -> COCO's original category id (what COCO results files hold)."""
  return np.array([i for i, _ in coco_categories()], np.int64)


def coco_category_id_to_label() -> dict[int, int]:
  """COCO's original category id -> lgvit's contiguous label (0..79)."""
  return {i: k for k, (i, _) in enumerate(coco_categories())}


def palette_for(num_classes: int) -> np.ndarray:
  """ADE20K's colour map, cut to ``num_classes`` (cycled beyond 150)."""
  colours = ade20k_classes()[1]
  return colours[np.arange(num_classes) % len(colours)]


def class_names(dataset: Optional[str], num_classes: int) -> list[str]:
  """Human-readable names of the labels of ``dataset`` (the class index where none are known)."""
  if dataset == 'lgvit_digits' and num_classes == 10:
    return [str(i) for i in range(10)]
  if num_classes == 1000 and (dataset is None or dataset.startswith('imagenet2012')):
    return imagenet_class_names()
  if num_classes == 150 and dataset in (None, 'lgvit_ade20k', 'scene_parse150'):
    return ade20k_classes()[0]
  if dataset == 'lgvit_digits_seg' and num_classes == 11:
    return list(DEMO_CLASS_NAMES)
  if dataset == 'lgvit_digits_det' and num_classes == 10:
    return list(DET_DEMO_CLASS_NAMES)
  if num_classes == 80 and dataset is not None and dataset.split('/')[0] in ('lgvit_coco', 'coco'):
    return coco_class_names()
  return [f'class {i}' for i in range(num_classes)]
