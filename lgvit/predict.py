"""Classify images with a trained, exported or converted lgvit model.

    python -m lgvit.predict --workdir W image1.jpg image2.png            # training workdir of main.py
    python -m lgvit.predict --workdir EXPORT_DIR image.jpg               # written by python -m lgvit.export
    python -m lgvit.predict --workdir CONVERTED_DIR --model nommer_t x.jpg   # written by python -m lgvit.convert
    python -m lgvit.predict --workdir W --segment image.jpg --out mask.png   # an upernet_* model (docs/segmentation.md)

prints the top-5 classes of each image with their names. Images go through the model's own
evaluation transform (its config's or registry entry's image size, crop_pct and interpolation),
``lgvit.data.transforms.eval_image``, which needs no TensorFlow; neither does the rest of this module. Class names: ImageNet-1k from ``lgvit/data/imagenet_class_names.txt``,
'0'..'9' for the embedded digits, else the class index.

From Python, :func:`load` returns a :class:`LoadedModel` with ``classify``, ``preprocess`` and
``intermediates`` (the values a model sows, e.g. NomMer's nomination maps).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import pathlib
import sys
from typing import Any, Optional, Sequence

import numpy as np

from lgvit import cli, cpu_kernels
from lgvit import workdir as layout
from lgvit.errors import LgvitError

IMAGENET_CLASS_NAMES = pathlib.Path(__file__).parent / 'data' / 'imagenet_class_names.txt'


class LoadError(LgvitError, ValueError):
  pass


class ImageError(LgvitError, ValueError):
  pass


# ---------------------------------------------------------------------------------------------
# Class names.
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def imagenet_synsets_and_lemmas() -> tuple[tuple[str, str], ...]:
  """(synset, 'lemma, lemma, ...') for the 1000 ImageNet labels in TFDS order."""
  rows = []
  for line in IMAGENET_CLASS_NAMES.read_text().splitlines():
    if line.strip() and not line.startswith('#'):
      synset, lemmas = line.split('\t', 1)
      rows.append((synset, lemmas))
  if len(rows) != 1000:
    raise RuntimeError(f'{IMAGENET_CLASS_NAMES} holds {len(rows)} classes, expected 1000')
  return tuple(rows)


def imagenet_class_names() -> list[str]:
  """Short ImageNet names (the first WordNet lemma of each label), e.g. 'tabby' for label 281."""
  return [lemmas.split(', ')[0] for _, lemmas in imagenet_synsets_and_lemmas()]


def class_names(dataset: Optional[str], num_classes: int) -> list[str]:
  """Human-readable names of the labels of ``dataset`` (the class index where none are known)."""
  if dataset == 'lgvit_digits' and num_classes == 10:
    return [str(i) for i in range(10)]
  if num_classes == 1000 and (dataset is None or dataset.startswith('imagenet2012')):
    return imagenet_class_names()
  if num_classes == 150 and dataset in (None, 'lgvit_ade20k', 'scene_parse150'):
    from lgvit.segmentation import ade20k_classes
    return ade20k_classes()[0]
  if dataset == 'lgvit_digits_seg' and num_classes == 11:
    from lgvit.segmentation import DEMO_CLASS_NAMES
    return list(DEMO_CLASS_NAMES)
  return [f'class {i}' for i in range(num_classes)]


# ---------------------------------------------------------------------------------------------
# Loading.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Prediction:
  label: int
  name: str
  probability: float


@dataclasses.dataclass
class LoadedModel:
  """A model with its variables and the way its authors fed it images."""
  name: str
  family: str
  model: Any  # flax.linen.Module
  variables: dict[str, Any]
  image_size: int
  crop_pct: float
  interpolation: str
  class_names: list[str]
  source: str

  def preprocess(self, image) -> np.ndarray:
    """A path, encoded bytes or a uint8 (H, W[, C]) array -> the (S, S, 3) uint8 crop the model sees."""
    from lgvit.data import transforms
    what = 'image'
    if isinstance(image, (str, os.PathLike)):
      what = str(image)
      with open(image, 'rb') as f:
        image = f.read()
    try:
      return transforms.eval_image(image, self.image_size, self.crop_pct, self.interpolation)
    except transforms.UndecodableImageError as e:
      raise ImageError(f'{what}: cannot decode it as an image (JPEG, PNG, GIF or BMP): {e}') from None

  @functools.cached_property
  def _forward(self):
    import jax
    from lgvit import modeling

    def forward(variables, images):
      return self.model.apply(variables, modeling.normalize(images), train=False)

    return jax.jit(forward)

  @functools.cached_property
  def _forward_with_intermediates(self):
    import jax
    from lgvit import modeling

    def forward(variables, images):
      logits, state = self.model.apply(variables, modeling.normalize(images), train=False,
                                       mutable=['intermediates'])
      return logits, state.get('intermediates', {})

    return jax.jit(forward)

  def logits(self, crops) -> np.ndarray:
    """(B, S, S, 3) uint8 crops from :meth:`preprocess` -> (B, num_classes) float32 logits."""
    return np.asarray(self._forward(self.variables, np.asarray(crops)), np.float32)

  def intermediates(self, crops) -> tuple[np.ndarray, dict[str, Any]]:
    """Logits and the ``intermediates`` collection (what the model sows) for (B, S, S, 3) uint8 crops."""
    import jax
    logits, inter = self._forward_with_intermediates(self.variables, np.asarray(crops))
    return np.asarray(logits, np.float32), jax.tree_util.tree_map(np.asarray, inter)

  def segment(self, image, scale: Optional[Sequence[int]] = None) -> np.ndarray:
    """A segmentation model's (H, W) int32 class map of one image (path, bytes or uint8 array) at its own
    size: mmseg's whole-image inference (:func:`lgvit.segmentation.infer_whole`), resized to ``scale``
    (e.g. ADE20K's (2048, 512)) first if given."""
    from lgvit import modeling, segmentation
    if isinstance(image, (str, os.PathLike, bytes)):
      from lgvit.data import transforms
      what = str(image) if not isinstance(image, bytes) else 'image'
      if not isinstance(image, bytes):
        with open(image, 'rb') as f:
          image = f.read()
      try:
        image = transforms.decode(image)
      except transforms.UndecodableImageError as e:
        raise ImageError(f'{what}: cannot decode it as an image (JPEG, PNG, GIF or BMP): {e}') from None
    logits = segmentation.infer_whole(self._segment_forward, modeling.normalize(np.asarray(image)[None]), scale=scale)
    return np.asarray(logits[0].argmax(-1), np.int32)

  @functools.cached_property
  def _segment_forward(self):
    import jax
    apply = jax.jit(lambda variables, x: self.model.apply(variables, x, train=False))
    return lambda x: apply(self.variables, x)

  def classify(self, images: Sequence[Any], k: int = 5, batch_size: int = 32) -> list[list[Prediction]]:
    """Top-``k`` predictions of each image (paths, bytes or arrays; see :meth:`preprocess`)."""
    out = []
    for start in range(0, len(images), batch_size):
      crops = np.stack([self.preprocess(im) for im in images[start:start + batch_size]])
      logits = self.logits(crops)
      probs = np.exp(logits - logits.max(-1, keepdims=True))
      probs /= probs.sum(-1, keepdims=True)
      for p in probs:
        top = np.argsort(-p, kind='stable')[:k]
        out.append([Prediction(int(i), self.class_names[i], float(p[i])) for i in top])
    return out


def load(path: str, model: Optional[str] = None, *, best: bool = False, image_size: Optional[int] = None,
         prefer_ema: bool = True) -> LoadedModel:
  """Loads a training workdir, an export dir (``lgvit.export``) or a variables dir (``lgvit.convert``).

  Args:
    path: the directory.
    model: registered model name; needed for a variables dir whose meta does not name the model.
    best: for a training workdir, take ``W/best`` (the best eval) instead of the latest checkpoint.
    image_size: input size for a variables dir (default: the model's registered input size).
    prefer_ema: for a training workdir, take the EMA weights when the run kept them (as lgvit.export).
  """
  import jax
  from lgvit import checkpoint, modeling
  from lgvit.models import create_model, model_info

  path = os.path.abspath(path)
  kind = layout.kind(path)
  if kind == layout.TRAINING:
    config = layout.read_config(path)
    if model and model != config.model:
      raise LoadError(f'--model {model}, but {path} holds a {config.model} run')
    variables = checkpoint.load_variables(os.path.join(path, layout.BEST) if best else path, prefer_ema=prefer_ema)
    net, name, dataset = modeling.build_model(config), config.model, config.data.dataset
    num_classes, size, crop_pct, interp = (config.num_classes, config.data.image_size, config.data.crop_pct,
                                           config.data.interpolation)
  else:
    meta = layout.read_export_meta(path) if kind == layout.EXPORT else checkpoint.read_meta(path)
    name = model or meta.get('model')
    if not name:
      raise LoadError(f'{path} does not name its model: pass --model NAME (a registered lgvit model)')
    if meta.get('model') and name != meta['model']:
      raise LoadError(f"--model {name}, but {path} holds {meta['model']} weights")
    info = model_info(name)
    variables = checkpoint.load_variables(path)
    num_classes = int(meta.get('num_classes') or _head_classes(variables) or 1000)
    net = create_model(name, num_classes=num_classes, **meta.get('model_kwargs', {}))
    dataset = meta.get('dataset')
    size = image_size or meta.get('image_size') or info.input_size
    crop_pct, interp = meta.get('crop_pct', info.crop_pct), meta.get('interpolation', info.interpolation)
  variables = jax.tree_util.tree_map(np.asarray, variables)
  return LoadedModel(name=name, family=model_info(name).family, model=net, variables=variables, image_size=int(size),
                     crop_pct=float(crop_pct), interpolation=interp, class_names=class_names(dataset, num_classes),
                     source=path)


def from_config(config, variables=None, seed: int = 0) -> LoadedModel:
  """The model of a training config (e.g. ``configs/nommer_t.py:demo``) with ``variables``, or freshly
  initialised ones (``model.init`` with ``seed``) when none are given."""
  import jax
  from lgvit import modeling
  from lgvit.models import model_info
  model = modeling.build_model(config)
  if variables is None:
    variables = modeling.init_variables(model, config.data.image_size, seed)
  variables = jax.tree_util.tree_map(np.asarray, variables)
  data = config.data
  return LoadedModel(name=config.model, family=model_info(config.model).family, model=model, variables=variables,
                     image_size=data.image_size, crop_pct=data.crop_pct, interpolation=data.interpolation,
                     class_names=class_names(data.dataset, config.num_classes), source='config')


def _head_classes(variables) -> Optional[int]:
  """The output width of the classifier ('head' or 'fc' Dense) of a variables tree, if it has one."""
  params = variables.get('params', {})
  for head in ('head', 'fc'):
    if head in params and 'bias' in params[head]:
      return int(params[head]['bias'].shape[0])
  return None


# ---------------------------------------------------------------------------------------------
# CLI.
# ---------------------------------------------------------------------------------------------


def format_predictions(image: str, predictions: list[Prediction]) -> str:
  lines = [image]
  for rank, p in enumerate(predictions, 1):
    lines.append(f'  {rank}. {100 * p.probability:6.2f}%  {p.name}  (label {p.label})')
  return '\n'.join(lines)


def add_source_arguments(parser: argparse.ArgumentParser):
  """The flags that say where a model comes from (shared with ``lgvit.visualize``); see :func:`load_source`."""
  parser.add_argument('--workdir', required=True, help='training workdir, export dir or converted checkpoint dir')
  parser.add_argument('--model', default=None, help='registered model name (for a converted checkpoint dir)')
  parser.add_argument('--best', action='store_true', help='use the best checkpoint of a training workdir')
  parser.add_argument('--image_size', type=int, default=None, help='input size for a converted checkpoint dir')


def load_source(args: argparse.Namespace) -> LoadedModel:
  return load(args.workdir, args.model, best=args.best, image_size=args.image_size)


def missing_files_error(paths: Sequence[str]) -> Optional[str]:
  folders = [p for p in paths if os.path.isdir(p)]
  if folders:
    return f"{', '.join(folders)}: a directory, not an image file (give the image files, e.g. {folders[0]}/*.jpg)"
  missing = [p for p in paths if not os.path.isfile(p)]
  return f"no such image file: {', '.join(missing)}" if missing else None


def main(argv=None) -> int:
  cpu_kernels.use()  # before the first JAX computation: XLA reads XLA_FLAGS when its CPU client starts
  parser = argparse.ArgumentParser(prog='python -m lgvit.predict', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  add_source_arguments(parser)
  parser.add_argument('--top', type=int, default=5, help='how many classes to print per image')
  parser.add_argument('--segment', nargs='+', default=None, metavar='IMAGE',
                      help='segmentation models: write the colour-coded class map of each image (ADE20K palette)')
  parser.add_argument('--out', default='', help='with --segment: the PNG to write (one image) or a directory')
  parser.add_argument('--scale', default='', help="with --segment: resize to fit LONGxSHORT first, e.g. 2048x512 "
                      "(mmseg's ADE20K test scale); default: the image's own size")
  parser.add_argument('images', nargs='*', help='image files (JPEG, PNG, GIF, BMP)')
  args = parser.parse_args(argv)
  if not args.images and not args.segment:
    parser.error('give image files to classify (or --segment IMAGE ... for a segmentation model)')
  problem = missing_files_error(args.segment or args.images) or (segment_usage_error(args) if args.segment else None)
  if problem:
    print(f'error: {problem}', file=sys.stderr)
    return 2
  cli.quiet_logs()
  return cli.report_errors(functools.partial(segment_images if args.segment else classify_images, args))


def classify_images(args: argparse.Namespace):
  loaded = load_source(args)
  results = loaded.classify(args.images, k=args.top)
  print(f'{loaded.name} from {loaded.source} ({loaded.image_size}px, crop_pct {loaded.crop_pct}, '
        f'{loaded.interpolation})')
  for image, predictions in zip(args.images, results):
    print(format_predictions(image, predictions))


def _scale(text: str) -> Optional[tuple[int, ...]]:
  return tuple(int(v) for v in text.lower().split('x')) if text else None


def segment_usage_error(args: argparse.Namespace) -> Optional[str]:
  if not args.out:
    return '--out is required with --segment (a .png file, or a directory for several images)'
  if len(args.segment) > 1 and not os.path.isdir(args.out):
    return f'--out {args.out}: give an existing directory for {len(args.segment)} images'
  try:
    _scale(args.scale)
  except ValueError:
    return f'--scale {args.scale!r}: use LONGxSHORT, e.g. 2048x512'
  return None


def segment_images(args: argparse.Namespace):
  """``--segment``: one colour-coded PNG per image, and the classes that cover most of it."""
  from PIL import Image
  from lgvit import segmentation
  from lgvit.models import model_info
  loaded = load_source(args)
  if model_info(loaded.name).task != 'segmentation':
    raise LoadError(f'--segment needs a segmentation model (upernet_*); {loaded.source} holds {loaded.name}')
  palette = segmentation.palette_for(len(loaded.class_names))
  for image in args.segment:
    labels = loaded.segment(image, _scale(args.scale))
    out = os.path.join(args.out, pathlib.Path(image).stem + '_mask.png') if len(args.segment) > 1 else args.out
    Image.fromarray(segmentation.colorize(labels, palette)).save(out)
    counts = np.bincount(labels.ravel(), minlength=len(loaded.class_names))
    top = np.argsort(-counts, kind='stable')[:args.top]
    shares = ', '.join(f'{loaded.class_names[i]} {100 * counts[i] / labels.size:.1f}%' for i in top if counts[i])
    print(f'{image} -> {out}: {shares}')


if __name__ == '__main__':
  sys.exit(main())
