"""Evaluators: the named test sets a model is scored on, in training and by ``python -m lgvit.evaluate``.

An evaluator is a TFDS dataset and split plus the way its labels are read (docs/evaluation.md):

    imagenet2012:validation   the ImageNet validation set (any ``DATASET:SPLIT`` of TFDS works the same way)
    imagenet_v2               ImageNetV2 matched-frequency (``imagenet_v2/matched-frequency:test``)
    imagenet2012_real         the validation images with their ReaL label sets: a top-1 prediction is right if
                              it is in the image's set; images with an empty set are left out (``no_label``)
    imagenet_a, imagenet_r    the 200-class ImageNet-A / ImageNet-R: the logits are restricted to those 200
                              classes (``lgvit/data/imagenet_{a,r}_synsets.txt``) before the argmax

``config.evals`` lists them; the config's own ``data.dataset:data.eval_split`` is the main eval,
always run and logged as ``eval_top1`` etc. Every other evaluator is logged as
``eval_<name>_top1`` (``<name>`` with non-alphanumerics as ``_``, e.g. ``eval_imagenet_v2_top1``).
Every image is scored exactly once: the last batch is padded and masked (``pipeline.eval_dataset``).

TensorFlow is imported only by the functions that read data.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import re
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from lgvit.errors import ConfigError, DatasetNotFoundError
from lgvit.modeling import compute_dtype, cross_entropy, normalize

#: What the ImageNet configs evaluate (configs/common.py).
IMAGENET_EVALS = ('imagenet2012:validation', 'imagenet_v2', 'imagenet2012_real', 'imagenet_a', 'imagenet_r')
#: Metrics that are counts, not averages over the scored images.
COUNTS = ('count', 'skipped', 'no_label')
SUBSET_DIR = pathlib.Path(__file__).parent / 'data'


@dataclasses.dataclass(frozen=True)
class Evaluator:
  name: str  # as config.evals, the console and the results JSON name it
  dataset: str  # TFDS name, with its builder config
  split: str
  labels: str = 'single'  # 'single': feature 'label' | 'real': ReaL's label sets (feature 'real_label')
  subset: str = ''  # '' | 'imagenet_a' | 'imagenet_r': score only these 200 of the 1000 classes
  build: str = ''  # how to prepare the dataset (the hint of a missing-dataset error)

  @property
  def key(self) -> str:
    """The name in metric keys: ``eval_<key>_top1``."""
    return re.sub(r'[^0-9a-zA-Z]+', '_', self.name).strip('_').lower()


_DOWNLOAD = 'tfds build {} --data_dir=DATA_DIR (downloads it)'
REGISTRY = {
    'imagenet_v2': Evaluator('imagenet_v2', 'imagenet_v2/matched-frequency', 'test',
                             build=_DOWNLOAD.format('imagenet_v2/matched-frequency')),
    'imagenet2012_real': Evaluator('imagenet2012_real', 'imagenet2012_real', 'validation', labels='real',
                                   build='tfds build imagenet2012_real --manual_dir=DIR_WITH_ILSVRC2012_img_val.tar '
                                         '--data_dir=DATA_DIR (fetches ReaL\'s real.json)'),
    'imagenet_a': Evaluator('imagenet_a', 'imagenet_a', 'test', subset='imagenet_a',
                            build=_DOWNLOAD.format('imagenet_a')),
    'imagenet_r': Evaluator('imagenet_r', 'imagenet_r', 'test', subset='imagenet_r',
                            build=_DOWNLOAD.format('imagenet_r')),
}


def parse(name: str) -> Evaluator:
  """A registered evaluator, or ``DATASET:SPLIT`` of any TFDS classification dataset."""
  if name in REGISTRY:
    return REGISTRY[name]
  dataset, sep, split = name.partition(':')
  if sep and dataset and split:
    return Evaluator(name, dataset, split)
  raise ConfigError(f"unknown evaluator {name!r}; use one of {', '.join(REGISTRY)} or DATASET:SPLIT of a TFDS "
                    'dataset (e.g. imagenet2012:validation)')


def names(value) -> list[str]:
  """``config.evals`` (a tuple, a list, or a comma-separated string) as a list of names, each once."""
  parts = [value] if isinstance(value, str) else list(value or ())
  out = []
  for part in parts:
    for name in str(part).split(','):
      if name.strip() and name.strip() not in out:
        out.append(name.strip())
  return out


def main_evaluator(config) -> Evaluator:
  """The config's own eval (``data.dataset:data.eval_split``), logged as ``eval_top1`` etc."""
  return Evaluator(f'{config.data.dataset}:{config.data.eval_split}', config.data.dataset, config.data.eval_split)


def extra_evaluators(config, requested=None) -> list[Evaluator]:
  """The evaluators of ``requested`` (default ``config.evals``) other than the main one."""
  main = main_evaluator(config)
  chosen = [parse(n) for n in names(config.get('evals', ()) if requested is None else requested)]
  return [e for e in chosen if (e.dataset, e.split, e.labels, e.subset) != (main.dataset, main.split, 'single', '')]


def log_prefix(evaluator: Evaluator, main: bool) -> str:
  return 'eval_' if main else f'eval_{evaluator.key}_'


@functools.lru_cache(maxsize=None)
def subset_indices(subset: str) -> np.ndarray:
  """The ImageNet-1k labels (TFDS order) of the 200 classes of ``subset`` ('imagenet_a' or 'imagenet_r'), sorted."""
  from lgvit.predict import imagenet_synsets_and_lemmas
  path = SUBSET_DIR / f'{subset}_synsets.txt'
  synsets = [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith('#')]
  label_of = {synset: i for i, (synset, _) in enumerate(imagenet_synsets_and_lemmas())}
  indices = np.array(sorted(label_of[s] for s in synsets), np.int32)
  if len(indices) != 200 or len(set(indices.tolist())) != 200:
    raise RuntimeError(f'{path} holds {len(set(indices.tolist()))} distinct classes, expected 200')
  return indices


# ---------------------------------------------------------------------------------------------
# Scoring (sums over a batch; masked-out slots count for nothing).
# ---------------------------------------------------------------------------------------------


def score_labels(logits, labels, mask) -> dict[str, jax.Array]:
  """One label per image: sums of count, cross-entropy, top-1 and top-5 hits."""
  top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
  loss = cross_entropy(logits, jax.nn.one_hot(labels, logits.shape[-1]))
  return {
      'count': jnp.sum(mask),
      'loss': jnp.sum(loss * mask),
      'top1': jnp.sum((top5[:, 0] == labels) * mask),
      'top5': jnp.sum(jnp.any(top5 == labels[:, None], axis=-1) * mask),
  }


def score_real(logits, real, mask) -> dict[str, jax.Array]:
  """ReaL: ``real`` is a (B, classes) 0/1 set per image. A top-1 (top-5) prediction is right if it (one of
  them) is in the set; images with an empty set are not scored and counted as ``no_label``."""
  labelled = jnp.any(real > 0, axis=-1).astype(jnp.float32)
  scored = mask * labelled
  top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
  in_set = jnp.take_along_axis(real, top5, axis=-1) > 0
  return {
      'count': jnp.sum(scored),
      'top1': jnp.sum(in_set[:, 0] * scored),
      'top5': jnp.sum(jnp.any(in_set, axis=-1) * scored),
      'no_label': jnp.sum(mask * (1.0 - labelled)),
  }


def restrict(logits, labels, subset: np.ndarray):
  """Logits of the ``subset`` classes only, and the labels renumbered into it (-1: not in the subset)."""
  renumber = np.full(max(int(subset.max()) + 1, logits.shape[-1]), -1, np.int32)
  renumber[subset] = np.arange(len(subset), dtype=np.int32)
  return logits[:, subset], jnp.asarray(renumber)[labels]


def make_eval_step(model, config, evaluator: Optional[Evaluator] = None):
  """``(variables, batch) -> sums`` for ``evaluator`` (default: one label per image, every class)."""
  dtype = compute_dtype(config)
  labels_kind = evaluator.labels if evaluator else 'single'
  subset = subset_indices(evaluator.subset) if evaluator and evaluator.subset else None

  def eval_step(variables, batch):
    logits = model.apply(variables, normalize(batch['image'], dtype), train=False).astype(jnp.float32)
    mask = batch['mask'].astype(jnp.float32)
    if labels_kind == 'real':
      out = score_real(logits, batch['real_label'], mask)
    else:
      labels = batch['label']
      if subset is not None:
        logits, labels = restrict(logits, labels, subset)
      out = score_labels(logits, labels, mask)
    return {**out, 'skipped': jnp.sum(batch['unreadable'])}

  return eval_step


# ---------------------------------------------------------------------------------------------
# Running an evaluator.
# ---------------------------------------------------------------------------------------------


def global_batch(local: dict[str, np.ndarray], sharding) -> dict[str, jax.Array]:
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def evaluate(eval_fn, variables, config, builder, batch_sharding, split: Optional[str] = None,
             evaluator: Optional[Evaluator] = None) -> dict[str, float]:
  """Runs ``eval_fn`` over every image of the split once; averages per scored image, counts as they are."""
  from lgvit.data import pipeline
  targets = None
  if evaluator is not None and evaluator.labels == 'real':
    targets = pipeline.multi_hot_targets('real_label', builder.info.features['real_label'].feature.num_classes)
  local_batch = config.eval_batch_size // jax.process_count()
  ds, _ = pipeline.eval_dataset(config.data, builder, local_batch=local_batch, process_index=jax.process_index(),
                                process_count=jax.process_count(), split=split or (evaluator and evaluator.split),
                                targets=targets)
  totals = None
  for batch in pipeline.as_numpy(ds):
    out = eval_fn(variables, global_batch(batch, batch_sharding))
    totals = out if totals is None else jax.tree_util.tree_map(jnp.add, totals, out)
  totals = jax.device_get(totals)
  n = max(float(totals['count']), 1.0)
  return {k: int(v) if k in COUNTS else float(v) / n for k, v in totals.items()}


@dataclasses.dataclass(frozen=True)
class Prepared:
  """An evaluator whose dataset is found and fits the model, with its jitted step."""
  evaluator: Evaluator
  builder: Any
  num_examples: int
  step: Any


def label_classes(builder, evaluator: Evaluator) -> int:
  feature = builder.info.features['real_label' if evaluator.labels == 'real' else 'label']
  return feature.feature.num_classes if evaluator.labels == 'real' else feature.num_classes


def prepare(evaluator: Evaluator, config, model, data_dir: Optional[str], replicated) -> Prepared:
  """Finds the dataset and checks it against the model: a missing one fails here, before any training."""
  from lgvit.data import pipeline
  where = data_dir or os.path.expanduser('~/tensorflow_datasets')
  build = evaluator.build.replace('DATA_DIR', where)
  hint = f' Prepare it with `{build}`, or leave {evaluator.name} out of the evals.' if build else None
  try:
    builder = pipeline.get_builder(evaluator.dataset, data_dir, hint=hint)
    n = pipeline.num_examples(builder, evaluator.split)
  except DatasetNotFoundError as e:
    raise DatasetNotFoundError(f'evaluator {evaluator.name}: {e}') from None
  classes = label_classes(builder, evaluator)
  if evaluator.subset and (classes != 1000 or config.num_classes != 1000):
    raise ConfigError(f'evaluator {evaluator.name} scores 200 of the ImageNet-1k classes; it needs a 1000-class '
                      f'model and dataset (model: {config.num_classes}, {evaluator.dataset}: {classes})')
  if classes != config.num_classes:
    raise ConfigError(f'evaluator {evaluator.name}: {evaluator.dataset} has {classes} classes but the model has '
                      f'{config.num_classes}; leave it out of --config.evals (or --evals)')
  step = jax.jit(make_eval_step(model, config, evaluator), out_shardings=replicated)
  return Prepared(evaluator, builder, n, step)


def run(prepared: Prepared, variables, config, batch_sharding) -> dict[str, float]:
  return evaluate(prepared.step, variables, config, prepared.builder, batch_sharding, evaluator=prepared.evaluator)


def summary(metrics: dict[str, float]) -> str:
  """``top-1 0.7612 | top-5 0.9290 | loss 0.9504 | 50000 images`` (what the metrics hold)."""
  parts = [f'{label} {metrics[k]:.4f}' for k, label in (('top1', 'top-1'), ('top5', 'top-5'), ('loss', 'loss'))
           if k in metrics]
  parts.append(f"{metrics['count']} images")
  if metrics.get('no_label'):
    parts.append(f"{metrics['no_label']} without a label left out")
  return ' | '.join(parts)
