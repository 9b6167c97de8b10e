"""A trained, exported or converted lgvit model, loaded for inference: classify, segment, look inside.

:func:`load` reads any of the three directories lgvit writes (a ``main.py`` training workdir, an
``python -m lgvit.export`` dir, a ``python -m lgvit.convert`` variables dir) and :func:`from_config` builds
the model of a config; both return a :class:`LoadedModel` with ``classify``, ``segment``, ``detect``, ``preprocess``
and ``intermediates`` (the values a model sows, e.g. NomMer's nomination maps). Images go through the
model's own evaluation transform (its config's or registry entry's image size, crop_pct and interpolation),
``lgvit.data.transforms.eval_image``, which needs no TensorFlow; neither does the rest of this module.
Class names: :func:`lgvit.data.classes.class_names`. ``python -m lgvit.predict`` is the command line.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np

from lgvit import checkpoint, detection, modeling, segmentation
from lgvit import workdir as layout
from lgvit.data import classes, transforms
from lgvit.errors import LgvitError
from lgvit.models import create_model, model_info


class LoadError(LgvitError, ValueError):
  pass


class ImageError(LgvitError, ValueError):
  pass


@dataclasses.dataclass
class Prediction:
  label: int
  name: str
  probability: float


def format_predictions(image: str, predictions: list[Prediction]) -> str:
  """``image`` and its predictions, one ranked line each: ``  1.  97.12%  tabby  (label 281)``."""
  lines = [image]
  for rank, p in enumerate(predictions, 1):
    lines.append(f'  {rank}. {100 * p.probability:6.2f}%  {p.name}  (label {p.label})')
  return '\n'.join(lines)


def _read(image, decode: Callable[[bytes], np.ndarray]) -> np.ndarray:
  """``decode`` of a path's contents, or of bytes or an array as they are; undecodable: :class:`ImageError`."""
  what = 'image'
  if isinstance(image, (str, os.PathLike)):
    what = str(image)
    with open(image, 'rb') as f:
      image = f.read()
  try:
    return decode(image)
  except transforms.UndecodableImageError as e:
    raise ImageError(f'{what}: cannot decode it as an image (JPEG, PNG, GIF or BMP): {e}') from None


@dataclasses.dataclass
class Detection:
  """The objects found in one image, in its own pixels: ``boxes`` (N, 4) x0, y0, x1, y1, ``scores`` (N,),
  ``labels`` (N,) class indices, ``names``, and ``masks`` (N, H, W) bool (instance masks at the 0.5
  threshold), best score first."""
  boxes: np.ndarray
  scores: np.ndarray
  labels: np.ndarray
  names: list[str]
  masks: np.ndarray


def _detection_input(source) -> dict:
  """A detector's test geometry from a config's ``data`` or an export's meta; mmdet's COCO one
  (:data:`lgvit.detection.TEST_INPUT`) for what the source does not say."""
  return {k: tuple(source[k]) if k != 'keep_ratio' else bool(source[k]) for k in detection.TEST_INPUT if k in source}


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
  #: A detector's test geometry (``scale``, ``keep_ratio``, ``pad_size``; docs/detection.md).
  detection_input: dict = dataclasses.field(default_factory=lambda: dict(detection.TEST_INPUT))

  def preprocess(self, image) -> np.ndarray:
    """A path, encoded bytes or a uint8 (H, W[, C]) array -> the (S, S, 3) uint8 crop the model sees."""
    return _read(image, lambda x: transforms.eval_image(x, self.image_size, self.crop_pct, self.interpolation))

  @functools.cached_property
  def _forward(self):

    def forward(variables, images):
      return self.model.apply(variables, modeling.normalize(images), train=False)

    return jax.jit(forward)

  @functools.cached_property
  def _forward_with_intermediates(self):

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
    logits, inter = self._forward_with_intermediates(self.variables, np.asarray(crops))
    return np.asarray(logits, np.float32), jax.tree_util.tree_map(np.asarray, inter)

  def segment(self, image, scale: Optional[Sequence[int]] = None) -> np.ndarray:
    """A segmentation model's (H, W) int32 class map of one image (path, bytes or uint8 array) at its own
    size: mmseg's whole-image inference (:func:`lgvit.segmentation.infer_whole`), resized to ``scale``
    (e.g. ADE20K's (2048, 512)) first if given."""
    if model_info(self.name).task != 'segmentation':
      raise LoadError(f'{self.name} is not a segmentation model (upernet_*): it gives no class map ({self.source})')
    if isinstance(image, (str, os.PathLike, bytes)):
      image = _read(image, transforms.decode)
    logits = segmentation.infer_whole(self._segment_forward, modeling.normalize(np.asarray(image)[None]), scale=scale)
    return np.asarray(logits[0].argmax(-1), np.int32)

  def detect(self, image, score_threshold: float = 0.3) -> Detection:
    """A detector's (``mask_rcnn_*``, ``faster_rcnn_*``, ``cascade_*``) objects in one image (path, bytes
    or uint8 array) scoring at least ``score_threshold``: the evaluation's test path (resize to the test
    scale, pad, detect, boxes back to the image's pixels, masks pasted there). The resize is XLA's
    bilinear, which rounds like the TensorFlow input pipeline's to within one grey level."""
    if model_info(self.name).task != 'detection':
      raise LoadError(f'{self.name} is not a detector (mask_rcnn_*, faster_rcnn_*, cascade_*): it finds no objects '
                      f'({self.source})')
    image = read_image(image)
    h, w = image.shape[:2]
    canvas, (new_h, new_w) = self.detection_canvas(image)
    found = jax.device_get(self._detect_forward(self.variables, canvas[None], np.array([[new_h, new_w]], np.int32)))
    scores = np.asarray(found['scores'][0], np.float32)
    kept = np.flatnonzero(np.asarray(found['valid'][0], bool) & (scores >= score_threshold))
    kept = kept[np.argsort(-scores[kept], kind='stable')]
    boxes = detection.to_original(found['boxes'][0][kept], (new_h / h, new_w / w), (h, w))
    labels = np.asarray(found['labels'][0][kept], np.int32)
    if 'masks' in found:
      masks = detection.paste_masks(np.asarray(found['masks'][0][kept]), boxes, (h, w)).astype(bool)
    else:  # a box-only detector (Faster R-CNN)
      masks = np.zeros((len(kept), h, w), bool)
    return Detection(boxes=boxes, scores=scores[kept], labels=labels, names=[self.class_names[i] for i in labels],
                     masks=masks)

  def detection_canvas(self, image) -> tuple[np.ndarray, tuple[int, int]]:
    """``(canvas, (new_h, new_w))``: ``image`` resized to the test scale in the top-left of the uint8
    ``pad_size`` canvas (zeros elsewhere), as lgvit.data.det_transforms prepares an eval image."""
    image = read_image(image)
    h, w = image.shape[:2]
    geometry = self.detection_input
    scale, (pad_h, pad_w) = geometry['scale'], geometry['pad_size']
    new_h, new_w = segmentation.rescale_size(h, w, scale) if geometry['keep_ratio'] else (scale[1], scale[0])
    if new_h > pad_h or new_w > pad_w:
      raise ImageError(f'a {h}x{w} image resized to {new_h}x{new_w} does not fit the {pad_h}x{pad_w} canvas')
    canvas = np.zeros((pad_h, pad_w, 3), np.uint8)
    canvas[:new_h, :new_w] = _resize_uint8(image, new_h, new_w)
    return canvas, (new_h, new_w)

  @functools.cached_property
  def _detect_forward(self):

    def forward(variables, canvas, image_hw):
      return self.model.apply(variables, detection.device_images(canvas, image_hw), train=False, image_hw=image_hw)

    return jax.jit(forward)

  @functools.cached_property
  def _segment_forward(self):
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


def read_image(image) -> np.ndarray:
  """A path, encoded bytes or a uint8 (H, W[, C]) array -> its (H, W, 3) uint8 pixels."""
  if isinstance(image, (str, os.PathLike, bytes)):
    image = _read(image, transforms.decode)
  image = np.asarray(image)
  if image.ndim == 2 or image.shape[-1] == 1:  # grey
    return np.repeat(image.reshape(*image.shape[:2], 1), 3, axis=-1)
  return image[..., :3]  # RGB(A)


def _resize_uint8(image: np.ndarray, h: int, w: int) -> np.ndarray:
  """Bilinear with half-pixel centres and no antialiasing (TensorFlow's and mmcv's), rounded to uint8."""
  out = jax.image.resize(np.asarray(image, np.float32), (h, w, image.shape[-1]), 'bilinear', antialias=False)
  return np.asarray(np.clip(np.round(out), 0, 255), np.uint8)


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
    detection_input = _detection_input(config.data)
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
    detection_input = _detection_input(meta)
  variables = jax.tree_util.tree_map(np.asarray, variables)
  return LoadedModel(name=name, family=model_info(name).family, model=net, variables=variables, image_size=int(size),
                     crop_pct=float(crop_pct), interpolation=interp,
                     class_names=classes.class_names(dataset, num_classes), source=path,
                     detection_input={**detection.TEST_INPUT, **detection_input})


def from_config(config, variables=None, seed: int = 0) -> LoadedModel:
  """The model of a training config (e.g. ``configs/nommer_t.py:demo``) with ``variables``, or freshly
  initialised ones (``model.init`` with ``seed``) when none are given."""
  model = modeling.build_model(config)
  if variables is None:
    variables = modeling.init_variables(model, config.data.image_size, seed)
  variables = jax.tree_util.tree_map(np.asarray, variables)
  data = config.data
  return LoadedModel(name=config.model, family=model_info(config.model).family, model=model, variables=variables,
                     image_size=data.image_size, crop_pct=data.crop_pct, interpolation=data.interpolation,
                     class_names=classes.class_names(data.dataset, config.num_classes), source='config',
                     detection_input={**detection.TEST_INPUT, **_detection_input(data)})


def _head_classes(variables) -> Optional[int]:
  """The output width of the classifier ('head' or 'fc' Dense) of a variables tree, if it has one."""
  params = variables.get('params', {})
  for head in ('head', 'fc'):
    if head in params and 'bias' in params[head]:
      return int(params[head]['bias'].shape[0])
  return None
