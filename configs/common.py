"""Pieces shared by every config: the base fields, the papers' recipes, the arguments and the demo.

A config is a family file with arguments (big_vision style)::

    python main.py --config=configs/nommer.py:variant=b,res=384 --workdir=...
    python main.py --config=configs/cotnet.py:variant=se_cotnetd152,demo --workdir=...

``demo`` shrinks the model and trains on the embedded digits; ``demo_recipe`` does the same with the
paper's augmentations kept. ``configs/<variant>.py`` (e.g. ``configs/nommer_b.py``) is the family
file with that variant fixed. The dict has one section per module that reads it: ``data`` (the input
pipeline), ``aug`` (augmentation and the loss's label mixing), ``optim`` (the optimiser) and
``schedule`` (the learning rate); the rest (model, batch, length, bookkeeping) is top-level.
:func:`finalize` locks the dict, so a misspelled ``--config.key=...`` override is an error.
"""
from __future__ import annotations

from typing import Any, Optional

import ml_collections

from lgvit import schema

IMAGENET_TRAIN_EXAMPLES = 1_281_167
MODES = ('demo', 'demo_recipe')


# ---------------------------------------------------------------------------------------------
# Arguments.
# ---------------------------------------------------------------------------------------------


def parse_arg(arg: Optional[str], **defaults) -> ml_collections.ConfigDict:
  """``'variant=b,res=384,demo'`` -> a ConfigDict of ``defaults`` updated from the string.

  ``key=value`` takes the type of the default; a bare word is a flag set to True. Unknown keys,
  repeated keys and values of the wrong type are errors that list what is accepted.
  """
  out = ml_collections.ConfigDict(dict(defaults))
  seen = set()
  for part in filter(None, (p.strip() for p in (arg or '').split(','))):
    key, has_value, value = part.partition('=')
    if key not in defaults:
      raise ValueError(f'unknown config argument {key!r}; accepted: {", ".join(sorted(defaults))} '
                       "(e.g. ':variant=b,demo')")
    if key in seen:
      raise ValueError(f'config argument {key!r} given twice')
    seen.add(key)
    default = defaults[key]
    if not has_value:
      if not isinstance(default, bool):
        raise ValueError(f'config argument {key!r} needs a value ({key}=...)')
      out[key] = True
    elif isinstance(default, bool):
      out[key] = value.lower() in ('1', 'true', 'yes')
    else:
      try:
        out[key] = type(default)(value)
      except ValueError:
        raise ValueError(f'config argument {key}={value!r} is not a {type(default).__name__}') from None
  return out


def choose(table: dict, key, what: str):
  if key not in table:
    raise ValueError(f'unknown {what} {key!r}; choose one of {", ".join(map(str, table))}')
  return table[key]


def with_arg(fixed: str, arg: Optional[str]) -> str:
  """The arguments of a per-variant file (``fixed``, e.g. 'variant=b') followed by the user's."""
  return ','.join(a for a in (fixed, arg) if a)


# ---------------------------------------------------------------------------------------------
# Recipes. Each sets what its paper set; the docstring says where it comes from.
# ---------------------------------------------------------------------------------------------


def ema_picks_best(c: ml_collections.ConfigDict, decay: float) -> None:
  """EMA weights with ``decay``, scored by every evaluator but ``main`` (the raw weights' own) and kept in best/."""
  c.ema_decay, c.best_metric = decay, 'ema_top1'
  for name, entry in c.evals.items():
    if name != 'main':
      entry.weights = 'ema'


def torchvision_style(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """torchvision's ResNet recipe: SGD 0.1 @ 256, wd 1e-4, cosine over 90 epochs, crop/flip."""
  c.optim.update(optimizer='sgd', nesterov=False, momentum=0.9, weight_decay=1e-4, wd_exclude='none')
  c.schedule.update(lr=0.1, lr_base_batch=256, warmup_epochs=0.0, decay='cosine')
  c.num_epochs, c.batch_size = 90.0, 256
  c.data.interpolation = 'bilinear'
  return c


def deit_style(c: ml_collections.ConfigDict, *, drop_path: float = 0.1, epochs: float = 300.0,
               warmup_epochs: float = 20.0, batch: int = 1024, clip: float = 5.0) -> ml_collections.ConfigDict:
  """DeiT/Swin recipe (NomMer, SALG, Swin): AdamW 5e-4 @ 512, wd 0.05, RandAugment m9, Mixup/CutMix."""
  c.optim.update(optimizer='adamw', adam_b1=0.9, adam_b2=0.999, adam_eps=1e-8, weight_decay=0.05,
                 wd_exclude='1d_and_bias', grad_clip_norm=clip)
  c.schedule.update(lr=5e-4, lr_base_batch=512, warmup_lr=5e-7, min_lr=5e-6, warmup_epochs=warmup_epochs,
                    decay='cosine', unit='step', warmup_prefix=False)
  c.num_epochs, c.batch_size = epochs, batch
  c.aug.update(label_smoothing=0.1, mixup_alpha=0.8, cutmix_alpha=1.0, mixup_prob=1.0, mixup_switch_prob=0.5,
               randaugment='rand-m9-mstd0.5-inc1', random_erase_prob=0.25, random_erase_mode='pixel')
  c.data.interpolation, c.data.crop_pct = 'bicubic', 0.875
  c.model_kwargs.drop_path_rate = drop_path
  return c


def finetune_style(c: ml_collections.ConfigDict, *, init_from: str, image_size: int = 384, epochs: float = 30.0,
                   batch: int = 512, lr: float = 1e-5, weight_decay: float = 1e-8,
                   warmup_epochs: float = 5.0) -> ml_collections.ConfigDict:
  """Swin-style fine-tuning at a higher resolution, applied on top of the pre-training recipe.

  Defaults are NomMer's 384 fine-tune (paper: 30 epochs, batch 512, lr 1e-5, wd 1e-8). Where the paper
  is silent Swin's fine-tune config fills in: 5 warm-up epochs, warm-up/min LR at 1e-3/1e-2 of the LR,
  no crop margin (crop_pct 1.0); augmentation and drop-path stay as in pre-training.
  """
  c.data.image_size, c.data.crop_pct = image_size, 1.0
  c.num_epochs, c.batch_size = epochs, batch
  c.schedule.update(lr=lr, lr_base_batch=batch, warmup_lr=lr * 1e-3, min_lr=lr * 1e-2, warmup_epochs=warmup_epochs)
  c.optim.weight_decay = weight_decay
  c.init_from = init_from
  return c


def transfer_style(c: ml_collections.ConfigDict, *, init_from: str, head: str, steps: int, warmup_steps: int,
                   batch: int = 512, lr: float = 0.01, crop: str = 'resmall_crop',
                   crop_pct: float = 384 / 448) -> ml_collections.ConfigDict:
  """big_vision's transfer recipe (``big_vision/configs/transfer.py``; the ViT paper's fine-tuning, sec. 4.1).

  Each value's source is in docs/transfer.md. From big_vision: SGD with momentum 0.9 (``momentum_hp``:
  no Nesterov, no weight decay), global-norm clip 1.0, lr 0.01 at batch 512 (scaled linearly with the
  batch), linear warm-up over ``warmup_steps`` then cosine to 0 over the rest, ``steps`` steps; the
  train crop ``crop`` (``'resmall_crop'``: ``resize_small(h_res) | random_crop(l_res)``, or
  ``'inception_crop'``) with a random flip; evaluation ``resize_small(h_res) | central_crop(l_res)``,
  i.e. ``crop_pct = l_res / h_res`` (384 / 448); no label smoothing, Mixup, RandAugment or EMA; the
  classifier matching ``head`` starts at zero (big_vision's ViT and BiT heads are zero-initialised),
  the rest comes from ``init_from``; no drop path or dropout (neither big_vision's ViT nor BiT has
  them in transfer). lgvit's own: bilinear antialiased resizing (big_vision: ``area`` for
  resize_small, bilinear without antialiasing for the inception crop).
  """
  c.optim.update(optimizer='sgd', momentum=0.9, nesterov=False, weight_decay=0.0, wd_exclude='none',
                 grad_clip_norm=1.0)
  c.schedule.update(lr=lr, lr_base_batch=batch, warmup_steps=warmup_steps, warmup_epochs=0.0, warmup_lr=0.0,
                    min_lr=0.0, decay='cosine', unit='step', warmup_prefix=True)
  c.batch_size, c.eval_batch_size, c.num_train_steps = batch, batch, steps
  # crop_scale / crop_ratio only matter for the inception crop: big_vision's 5-100% of the area.
  c.aug.update(crop_scale=(0.05, 1.0), crop_ratio=(3 / 4, 4 / 3), hflip=True)
  c.aug.crop = crop
  c.data.update(crop_pct=crop_pct, interpolation='bilinear')
  c.ema_decay, c.best_metric = 0.0, 'top1'
  schema.keep_evals(c, 'main')  # the target dataset's own held-out split only, not the ImageNet suite
  c.checkpoint_every_steps = 1000
  c.init_from, c.init_skip = init_from, head
  # Its own regex, not init_skip's: a wider --config.init_skip (LESA's size-bound tables) keeps those fresh.
  c.init_zeros = head
  # Every registered classifier takes drop_path_rate; drop_rate only some (not NomMer), so it is reset
  # only where the backbone's kwargs set it (elsewhere the model default, 0, applies).
  c.model_kwargs.drop_path_rate = 0.0
  if 'drop_rate' in c.model_kwargs:
    c.model_kwargs.drop_rate = 0.0
  return c


def cotnet_style(c: ml_collections.ConfigDict, *, batch: int, lr: float, weight_decay: float,
                 drop_path: float = 0.1, drop: float = 0.25) -> ml_collections.ConfigDict:
  """CoTNet's recipe: SGD-Nesterov 0.1 @ 256, per-epoch cosine over 350 epochs, RandAugment m15, EMA."""
  c.optim.update(optimizer='sgd', nesterov=True, momentum=0.9, weight_decay=weight_decay, wd_exclude='1d_and_bias')
  c.schedule.update(lr=lr * 256 / batch, lr_base_batch=256, warmup_epochs=5.0, warmup_lr=1e-4, min_lr=1e-5,
                    lr_scale_warmup_min=False, decay='cosine', unit='epoch', warmup_prefix=False)
  c.num_epochs, c.batch_size = 350.0, batch
  c.aug.update(label_smoothing=0.1, mixup_alpha=0.8, cutmix_alpha=1.0, mixup_prob=1.0, mixup_switch_prob=0.5,
               randaugment='cotrand-m15-mstd0.5-n2')  # CoTNet's 'rand-m15-mstd0.5-n2', its own RandAugment
  c.data.interpolation, c.data.crop_pct = 'bicubic', 0.875
  ema_picks_best(c, 0.9999)
  c.model_kwargs.drop_path_rate = drop_path
  c.model_kwargs.drop_rate = drop
  return c


def cotnet_default_style(c: ml_collections.ConfigDict, *, ema: bool = False,
                         batch: int = 512) -> ml_collections.ConfigDict:
  """CoTNet's "default training setup" (paper Sec. 4.1; Tables 3, 5 and 6): 100 epochs, crop + flip only.

  From the paper: about 100 epochs (100 here), 224 crops, only random-resized crop and horizontal flip,
  SGD momentum 0.9, label smoothing 0.1, batch 512, LR linear from 0 to 0.1 * B / 256 over the first
  5 epochs, then cosine; EMA 0.9999 only in the rows marked * (``ema``, picking the best checkpoint on
  EMA top-1). No RandAugment, Mixup/CutMix, erasing, dropout or drop path (the advanced setup's).
  Not in the paper, from the official code (its config defaults and optimizer factory): weight decay
  1e-4, not on 1-D parameters or biases; 'sgd' is Nesterov; min LR 1e-5; bicubic, eval crop 0.875.
  lgvit's choices: the schedule steps per iteration (stepped per epoch as in the official trainer, a
  warm-up from 0 would hold all of epoch 0 at LR 0); warm-up overrides the cosine as timm's scheduler
  does; no cool-down epochs (the official trainer's default would add 10 at min LR).
  """
  c.optim.update(optimizer='sgd', nesterov=True, momentum=0.9, weight_decay=1e-4, wd_exclude='1d_and_bias',
                 grad_clip_norm=0.0)
  c.schedule.update(lr=0.1, lr_base_batch=256, warmup_epochs=5.0, warmup_lr=0.0, min_lr=1e-5,
                    lr_scale_warmup_min=False, decay='cosine', unit='step', warmup_prefix=False)
  c.num_epochs, c.batch_size = 100.0, batch
  c.aug.update(crop_scale=(0.08, 1.0), crop_ratio=(3 / 4, 4 / 3), hflip=True, label_smoothing=0.1, randaugment='',
               random_erase_prob=0.0, mixup_alpha=0.0, cutmix_alpha=0.0)
  c.data.interpolation, c.data.crop_pct = 'bicubic', 0.875
  if ema:
    ema_picks_best(c, 0.9999)
  else:
    c.ema_decay, c.best_metric = 0.0, 'top1'
  c.model_kwargs.drop_path_rate = 0.0
  c.model_kwargs.drop_rate = 0.0
  return c


def lesa_style(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """LESA's recipe: SGD-Nesterov 0.05 @ 128, wd 8e-5 on everything, 5 warm-up epochs from
  lr / steps_per_epoch, then 90 cosine epochs to 0, all per iteration."""
  c.optim.update(optimizer='sgd', nesterov=True, momentum=0.9, weight_decay=8e-5, wd_exclude='none')
  c.schedule.update(lr=0.05, lr_base_batch=128, warmup_epochs=5.0, warmup_prefix=True, warmup_lr=0.0, min_lr=0.0,
                    warmup_lr_is_lr_per_epoch_step=True, decay='cosine', unit='step')
  c.batch_size, c.num_epochs = 128, 95.0
  c.data.interpolation, c.data.crop_pct = 'bilinear', 0.875
  return c


# ---------------------------------------------------------------------------------------------
# The demo and finishing touches.
# ---------------------------------------------------------------------------------------------


def apply_demo(c: ml_collections.ConfigDict, model_kwargs: dict[str, Any], *, image_size: int = 32,
               num_epochs: float = 15.0, batch_size: int = 64, lr: Optional[float] = None,
               full_recipe: bool = False) -> None:
  """Shrinks a config to train on the embedded digits in a few CPU minutes, from scratch.

  The architecture keeps its block types; ``model_kwargs`` shrink width/depth. The optimiser family
  of the recipe is kept, with a short warm-up and an LR fit for the tiny batch. ``full_recipe``
  (``demo_recipe``) also keeps the paper's RandAugment, Mixup/CutMix, random erasing, label
  smoothing and EMA (with a decay fit for a few hundred steps), and trains twice as long.
  """
  c.data.update(dataset='lgvit_digits', image_size=image_size, crop_pct=1.0, shuffle_buffer=2048, cache_train=True)
  c.num_classes = 10
  c.aug.crop_scale = (0.35, 1.0)
  c.aug.hflip = False  # digits are not mirror-symmetric
  if full_recipe:
    num_epochs *= 2
  else:
    c.aug.update(randaugment='', random_erase_prob=0.0, mixup_alpha=0.0, cutmix_alpha=0.0)
  c.batch_size, c.eval_batch_size, c.num_epochs = batch_size, 128, num_epochs
  schema.keep_evals(c, 'main', 'ema')  # the digits' own validation split only
  if lr is None:
    lr = 1e-3 if c.optim.optimizer == 'adamw' else 0.1
  c.schedule.update(lr=lr, warmup_epochs=1.0, warmup_prefix=True, unit='step', lr_base_batch=0, warmup_lr=0.0,
                    min_lr=0.0)
  if full_recipe and c.ema_decay:
    c.ema_decay = 0.99
  else:
    c.ema_decay, c.best_metric = 0.0, 'top1'
  c.log_every_steps, c.eval_every_epochs, c.checkpoint_every_steps, c.keep_checkpoints = 20, 5.0, 200, 2
  c.init_from = ''  # a demo trains from scratch (the 384 fine-tunes' pre-trained run does not exist)
  for k, v in model_kwargs.items():
    c.model_kwargs[k] = v


def finalize(c: ml_collections.ConfigDict, args: ml_collections.ConfigDict, *, demo_model_kwargs: dict[str, Any],
             **demo_options) -> ml_collections.ConfigDict:
  """Applies ``demo`` / ``demo_recipe`` (flags of ``args``), then locks the dict against unknown keys."""
  if args.get('demo') or args.get('demo_recipe'):
    apply_demo(c, demo_model_kwargs, full_recipe=bool(args.get('demo_recipe')), **demo_options)
  c.lock()
  return c
