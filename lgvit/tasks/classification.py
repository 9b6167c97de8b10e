"""Image classification: the papers' ImageNet training and its test sets (docs/evaluation.md).

The train step's loss is cross-entropy against Mixup/CutMix-blended, label-smoothed targets, with random
erasing on the device; unreadable images keep their slot but count for nothing. The evaluator type
``classification`` scores top-1/top-5/loss on any TFDS split, with the protocol its dataset needs:

    imagenet2012_real         ReaL's label sets: a top-1 prediction is right if it is in the image's set;
                              images with an empty set are left out (``no_label``)
    imagenet_a, imagenet_r    the 200-class ImageNet-A / ImageNet-R: the logits are restricted to those 200
                              classes (``lgvit/data/imagenet_{a,r}_synsets.txt``) before the argmax
    anything else             one label per image (feature ``label``), every class

Every image is scored exactly once: the last batch is padded and masked (``pipeline.eval_dataset``).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from lgvit import evals, schema
from lgvit.data import classes, pipeline
from lgvit.data import augment
from lgvit.data import mixup as mixup_lib
from lgvit.errors import ConfigError
from lgvit.modeling import cross_entropy, normalize
from lgvit.tasks.base import Task, register


@dataclasses.dataclass(frozen=True)
class Protocol:
  """How a dataset's labels are read and scored."""
  labels: str = 'single'  # 'single': feature 'label' | 'real': ReaL's label sets (feature 'real_label')
  subset: str = ''  # '' | 'imagenet_a' | 'imagenet_r': score only these 200 of the 1000 classes
  build: str = ''  # how to prepare the dataset (the hint of a missing-dataset error)


_DOWNLOAD = 'tfds build {} --data_dir=DATA_DIR (downloads it)'
#: TFDS dataset -> its protocol; every other dataset is scored with one label per image.
PROTOCOLS = {
    'imagenet_v2/matched-frequency': Protocol(build=_DOWNLOAD.format('imagenet_v2/matched-frequency')),
    'imagenet2012_real': Protocol(labels='real', build='tfds build imagenet2012_real --manual_dir='
                                  "DIR_WITH_ILSVRC2012_img_val.tar --data_dir=DATA_DIR (fetches ReaL's real.json)"),
    'imagenet_a': Protocol(subset='imagenet_a', build=_DOWNLOAD.format('imagenet_a')),
    'imagenet_r': Protocol(subset='imagenet_r', build=_DOWNLOAD.format('imagenet_r')),
}


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


def make_eval_step(model, dtype, protocol: Protocol = Protocol()):
  """``(variables, batch) -> sums`` of :func:`score_labels` (or ReaL's / a 200-class subset's, per ``protocol``)."""
  subset = classes.imagenet_subset_labels(protocol.subset) if protocol.subset else None

  def eval_step(variables, batch):
    logits = model.apply(variables, normalize(batch['image'], dtype), train=False).astype(jnp.float32)
    mask = batch['mask'].astype(jnp.float32)
    if protocol.labels == 'real':
      out = score_real(logits, batch['real_label'], mask)
    else:
      labels = batch['label']
      if subset is not None:
        logits, labels = restrict(logits, labels, subset)
      out = score_labels(logits, labels, mask)
    return {**out, 'skipped': jnp.sum(batch['unreadable'])}

  return eval_step


def summary(metrics: dict[str, float]) -> str:
  """``top-1 0.7612 | top-5 0.9290 | loss 0.9504 | 50000 images`` (what the metrics hold)."""
  parts = [f'{label} {metrics[k]:.4f}' for k, label in (('top1', 'top-1'), ('top5', 'top-5'), ('loss', 'loss'))
           if k in metrics]
  parts.append(f"{metrics['count']} images")
  if metrics.get('no_label'):
    parts.append(f"{metrics['no_label']} without a label left out")
  return ' | '.join(parts)


# ---------------------------------------------------------------------------------------------
# The evaluator.
# ---------------------------------------------------------------------------------------------


def label_classes(builder, protocol: Protocol) -> int:
  if protocol.labels == 'real':
    return builder.info.features['real_label'].feature.num_classes
  return builder.info.features['label'].num_classes


class ClassificationEvaluator(evals.Evaluator):
  """Top-1/top-5 (and loss, for one-label sets) over a split, the batches spread over every process."""

  def __init__(self, spec: evals.EvalSpec, context: evals.Context):
    super().__init__(spec, context)
    settings = context.settings
    self.protocol = PROTOCOLS.get(spec.dataset, Protocol())
    where = settings.data_dir or os.path.expanduser('~/tensorflow_datasets')
    build = self.protocol.build.replace('DATA_DIR', where)
    hint = f' Prepare it with `{build}`, or leave {spec.name} out of the evals.' if build else None
    self.builder, self.num_examples = evals.find_dataset(spec, settings.data_dir, hint=hint)
    found = label_classes(self.builder, self.protocol)
    if self.protocol.subset and (found != 1000 or settings.num_classes != 1000):
      raise ConfigError(f'evaluator {spec.name} scores 200 of the ImageNet-1k classes; it needs a 1000-class '
                        f'model and dataset (model: {settings.num_classes}, {spec.dataset}: {found})')
    if found != settings.num_classes:
      raise ConfigError(f'evaluator {spec.name}: {spec.dataset} has {found} classes but the model has '
                        f'{settings.num_classes}; leave it out of the evals (--config.evals.{spec.name}.every=-1, '
                        'or --evals)')
    self.step = jax.jit(make_eval_step(context.model, settings.dtype, self.protocol),
                        out_shardings=context.replicated)

  def run(self, variables) -> dict[str, float]:
    settings = self.context.settings
    targets = None
    if self.protocol.labels == 'real':
      targets = pipeline.multi_hot_targets('real_label',
                                           self.builder.info.features['real_label'].feature.num_classes)
    local_batch = settings.eval_batch_size // jax.process_count()
    ds, _ = pipeline.eval_dataset(settings.data, self.builder, local_batch=local_batch,
                                  process_index=jax.process_index(), process_count=jax.process_count(),
                                  split=self.spec.split, targets=targets)
    totals = None
    for batch in pipeline.as_numpy(ds):
      out = self.step(variables, evals.global_batch(batch, self.context.batch_sharding))
      totals = out if totals is None else jax.tree_util.tree_map(jnp.add, totals, out)
    totals = jax.device_get(totals)
    n = max(float(totals['count']), 1.0)
    return {k: int(v) if k in evals.COUNTS else float(v) / n for k, v in totals.items()}

  def summary(self, metrics: dict[str, float]) -> str:
    return summary(metrics)


# ---------------------------------------------------------------------------------------------
# The task.
# ---------------------------------------------------------------------------------------------


class Classification(Task):
  name = 'classification'
  main_metric = 'top1'

  def train_forward(self, model, settings: schema.Settings):
    """Mixup/CutMix and random erasing on the device; unreadable images stay out of the loss."""
    aug, dtype, num_classes = settings.aug, settings.dtype, settings.num_classes

    def forward(params, batch_stats, images, batch, rngs, aug_keys):
      k_mix, k_erase = aug_keys
      if aug.random_erase_prob > 0:  # per image, before mixing, as timm does
        images = augment.random_erasing(k_erase, images, aug.random_erase_prob, aug.random_erase_mode)
      images, targets = mixup_lib.mixup_cutmix(
          k_mix, images, batch['label'], num_classes=num_classes, mixup_alpha=aug.mixup_alpha,
          cutmix_alpha=aug.cutmix_alpha, prob=aug.mixup_prob, switch_prob=aug.mixup_switch_prob,
          smoothing=aug.label_smoothing)
      # Unreadable images keep their slot (see lgvit.data.pipeline) but stay out of the loss, and so do
      # the images that Mixup/CutMix blended with them.
      valid = batch['valid'].astype(jnp.float32)
      weight = valid * valid[::-1] if (aug.mixup_alpha > 0 or aug.cutmix_alpha > 0) else valid
      logits, new_vars = model.apply({'params': params, 'batch_stats': batch_stats}, images.astype(dtype),
                                     train=True, rngs=rngs, mutable=['batch_stats'])
      loss = jnp.sum(weight * cross_entropy(logits, targets)) / jnp.maximum(jnp.sum(weight), 1.0)
      top1 = jnp.sum((jnp.argmax(logits, -1) == batch['label']) * valid) / jnp.maximum(jnp.sum(valid), 1.0)
      return loss, ({'train_top1': top1}, new_vars.get('batch_stats', {}))

    return forward

  def eval_step(self, model, settings: schema.Settings):
    return make_eval_step(model, settings.dtype)

  def shard_fn(self, settings: schema.Settings):
    return pipeline.shard_dataset

  def dataset_classes(self, builder, settings: schema.Settings) -> Optional[int]:
    return pipeline.num_classes(builder)

  def batch_shapes(self, settings, batch, train):
    s = settings.data.image_size
    one = ((batch,), jnp.int32)
    rest = {'valid': one} if train else {'mask': one, 'unreadable': one}
    return {'image': ((batch, s, s, 3), jnp.uint8), 'label': one, **rest}

  def summary(self, result) -> str:
    return f"top-1 {result.get('eval_top1', float('nan')):.4f} | top-5 {result.get('eval_top5', float('nan')):.4f}"


register(Classification())
evals.register('classification', ClassificationEvaluator)
