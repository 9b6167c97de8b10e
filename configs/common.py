"""Pieces shared by every config: the base fields, the papers' recipes, and the `demo` variant.

A variant config reads like::

    def get_config(arg=None):
      c = common.base_config('cotnet50')
      common.cotnet_style(c, batch=640, lr=0.25, weight_decay=4e-5)
      return common.finalize(c, arg, demo_model_kwargs=dict(stage_depths=(1, 1, 1, 1), base_width=16))

`finalize` locks the dict, so a misspelled ``--config.key=...`` override is an error.
"""
from __future__ import annotations

from typing import Any, Optional

import ml_collections

IMAGENET_TRAIN_EXAMPLES = 1_281_167


def base_config(model: str = '') -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.model = model
  c.model_kwargs = ml_collections.ConfigDict()  # passed to create_model: drop_path_rate, ...
  c.num_classes = 1000

  # Data (TFDS).
  c.dataset = 'imagenet2012'
  c.data_dir = ml_collections.config_dict.placeholder(str)  # None: TFDS default (~/tensorflow_datasets)
  c.train_split = 'train'
  c.eval_split = 'validation'
  c.image_size = 224
  c.crop_pct = 0.875  # eval: resize the shorter side to image_size / crop_pct, then center-crop
  c.interpolation = 'bilinear'  # 'bilinear' | 'bicubic'
  c.crop_scale = (0.08, 1.0)  # random-resized-crop area range
  c.crop_ratio = (3 / 4, 4 / 3)
  c.hflip = True
  c.randaugment = ''  # 'rand-m9-mstd0.5-inc1' (timm) | 'cotrand-m15-mstd0.5-n2' (CoTNet's variant) | '' = off
  c.random_erase_prob = 0.0
  c.random_erase_mode = 'pixel'
  c.shuffle_buffer = 16_384
  c.cache_train = False  # cache the encoded split in memory (small datasets)
  c.data_shards = 0  # input shards (0: one per process). Fix it to keep the data stream across host counts.

  # Batch and length (global batch over every device of every host).
  c.batch_size = 256
  c.eval_batch_size = 256
  c.num_epochs = 90.0
  c.num_train_steps = -1  # > 0 overrides num_epochs

  # Loss.
  c.label_smoothing = 0.0
  c.mixup_alpha = 0.0
  c.cutmix_alpha = 0.0
  c.mixup_prob = 1.0
  c.mixup_switch_prob = 0.5

  # Optimiser and schedule.
  c.optimizer = 'sgd'  # 'sgd' (momentum, optional Nesterov) | 'adamw'
  c.momentum = 0.9
  c.nesterov = True
  c.adam_b1 = 0.9
  c.adam_b2 = 0.999
  c.adam_eps = 1e-8
  c.lr = 0.1  # base LR at a global batch of lr_base_batch
  c.lr_base_batch = 256  # LR scales linearly with batch_size / lr_base_batch; 0 disables scaling
  c.weight_decay = 1e-4
  c.wd_exclude = '1d_and_bias'  # 'none' (decay everything) | '1d_and_bias' (no decay on ndim<=1)
  c.schedule = 'cosine'  # 'cosine' | 'constant'
  c.schedule_unit = 'step'  # 'step' (per iteration) | 'epoch' (timm t_in_epochs)
  c.warmup_epochs = 0.0
  c.warmup_lr = 0.0  # warm-up start LR (scaled with the batch like lr)
  c.warmup_lr_is_lr_per_epoch_step = False  # True (LESA): the warm-up starts at lr / steps_per_epoch
  c.min_lr = 0.0  # scaled with the batch like lr
  c.warmup_prefix = False  # True: cosine starts after warm-up (LESA); False: timm (warm-up overrides)
  c.lr_scale_warmup_min = True  # whether warmup_lr/min_lr scale with the batch too (NomMer/Swin do)
  c.grad_clip_norm = 0.0  # global L2 norm; 0 = off

  # EMA of params and BatchNorm statistics (0 = off), evaluated alongside the raw weights.
  c.ema_decay = 0.0
  c.best_metric = 'top1'  # 'top1' | 'ema_top1': which eval picks the best checkpoint

  # Numerics.
  c.dtype = 'float32'  # compute dtype: 'float32' | 'bfloat16' (params stay float32)
  c.matmul_precision = 'default'  # 'default' | 'high' | 'highest'

  # Bookkeeping.
  c.seed = 0
  c.log_every_steps = 100
  c.eval_every_epochs = 1.0
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 3
  c.init_from = ''  # converted checkpoint dir or a training workdir to initialise from
  c.init_skip = ''  # regex of parameter paths not taken from init_from (e.g. a new head: 'fc|head')
  return c


# ---------------------------------------------------------------------------------------------
# Recipes. Each sets what its paper set; the docstring says where it comes from.
# ---------------------------------------------------------------------------------------------


def torchvision_style(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """torchvision's ResNet recipe: SGD 0.1 @ 256, wd 1e-4, cosine over 90 epochs, crop/flip."""
  c.optimizer, c.nesterov, c.momentum = 'sgd', False, 0.9
  c.lr, c.lr_base_batch, c.weight_decay, c.wd_exclude = 0.1, 256, 1e-4, 'none'
  c.num_epochs, c.batch_size = 90.0, 256
  c.warmup_epochs, c.schedule = 0.0, 'cosine'
  c.interpolation = 'bilinear'
  return c


def deit_style(c: ml_collections.ConfigDict, *, drop_path: float = 0.1, epochs: float = 300.0,
               warmup_epochs: float = 20.0, batch: int = 1024, clip: float = 5.0) -> ml_collections.ConfigDict:
  """DeiT/Swin recipe (NomMer, SALG, Swin): AdamW 5e-4 @ 512, wd 0.05, RandAugment m9, Mixup/CutMix."""
  c.optimizer, c.adam_b1, c.adam_b2, c.adam_eps = 'adamw', 0.9, 0.999, 1e-8
  c.lr, c.lr_base_batch, c.warmup_lr, c.min_lr = 5e-4, 512, 5e-7, 5e-6
  c.weight_decay, c.wd_exclude = 0.05, '1d_and_bias'
  c.num_epochs, c.warmup_epochs, c.batch_size = epochs, warmup_epochs, batch
  c.schedule, c.schedule_unit, c.warmup_prefix = 'cosine', 'step', False
  c.grad_clip_norm = clip
  c.label_smoothing = 0.1
  c.mixup_alpha, c.cutmix_alpha, c.mixup_prob, c.mixup_switch_prob = 0.8, 1.0, 1.0, 0.5
  c.randaugment = 'rand-m9-mstd0.5-inc1'
  c.random_erase_prob, c.random_erase_mode = 0.25, 'pixel'
  c.interpolation, c.crop_pct = 'bicubic', 0.875
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
  c.image_size, c.crop_pct = image_size, 1.0
  c.num_epochs, c.batch_size, c.warmup_epochs = epochs, batch, warmup_epochs
  c.lr, c.lr_base_batch = lr, batch
  c.warmup_lr, c.min_lr = lr * 1e-3, lr * 1e-2
  c.weight_decay = weight_decay
  c.init_from = init_from
  return c


def cotnet_style(c: ml_collections.ConfigDict, *, batch: int, lr: float, weight_decay: float,
                 drop_path: float = 0.1, drop: float = 0.25) -> ml_collections.ConfigDict:
  """CoTNet's recipe: SGD-Nesterov 0.1 @ 256, per-epoch cosine over 350 epochs, RandAugment m15, EMA."""
  c.optimizer, c.nesterov, c.momentum = 'sgd', True, 0.9
  c.lr, c.lr_base_batch, c.weight_decay, c.wd_exclude = lr * 256 / batch, 256, weight_decay, '1d_and_bias'
  c.num_epochs, c.batch_size, c.warmup_epochs = 350.0, batch, 5.0
  c.warmup_lr, c.min_lr, c.lr_scale_warmup_min = 1e-4, 1e-5, False
  c.schedule, c.schedule_unit, c.warmup_prefix = 'cosine', 'epoch', False
  c.label_smoothing = 0.1
  c.mixup_alpha, c.cutmix_alpha, c.mixup_prob, c.mixup_switch_prob = 0.8, 1.0, 1.0, 0.5
  c.randaugment = 'cotrand-m15-mstd0.5-n2'  # CoTNet's 'rand-m15-mstd0.5-n2', its own RandAugment
  c.interpolation, c.crop_pct = 'bicubic', 0.875
  c.ema_decay, c.best_metric = 0.9999, 'ema_top1'
  c.model_kwargs.drop_path_rate = drop_path
  c.model_kwargs.drop_rate = drop
  return c


def lesa_style(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """LESA's recipe: SGD-Nesterov 0.05 @ 128, wd 8e-5 on everything, 5 warm-up epochs from
  lr / steps_per_epoch, then 90 cosine epochs to 0, all per iteration."""
  c.optimizer, c.nesterov, c.momentum = 'sgd', True, 0.9
  c.lr, c.lr_base_batch, c.batch_size = 0.05, 128, 128
  c.weight_decay, c.wd_exclude = 8e-5, 'none'
  c.num_epochs, c.warmup_epochs, c.warmup_prefix = 95.0, 5.0, True
  c.warmup_lr, c.min_lr, c.warmup_lr_is_lr_per_epoch_step = 0.0, 0.0, True
  c.schedule, c.schedule_unit = 'cosine', 'step'
  c.interpolation, c.crop_pct = 'bilinear', 0.875
  return c


# ---------------------------------------------------------------------------------------------
# The demo variant and finishing touches.
# ---------------------------------------------------------------------------------------------


def apply_demo(c: ml_collections.ConfigDict, model_kwargs: dict[str, Any], *, image_size: int = 32,
               num_epochs: float = 15.0, batch_size: int = 64, lr: Optional[float] = None,
               full_recipe: bool = False) -> None:
  """Shrinks a config to train on the embedded digits in a few CPU minutes.

  The architecture keeps its block types; ``model_kwargs`` shrink width/depth. The optimiser family
  of the recipe is kept, with a short warm-up and an LR fit for the tiny batch. ``full_recipe``
  (``:demo_recipe``) also keeps the paper's RandAugment, Mixup/CutMix, random erasing, label
  smoothing and EMA (with a decay fit for a few hundred steps), and trains twice as long.
  """
  c.dataset = 'lgvit_digits'
  c.num_classes = 10
  c.image_size = image_size
  c.crop_pct = 1.0
  c.crop_scale = (0.35, 1.0)
  c.hflip = False  # digits are not mirror-symmetric
  if full_recipe:
    num_epochs *= 2
  else:
    c.randaugment = ''
    c.random_erase_prob = 0.0
    c.mixup_alpha = c.cutmix_alpha = 0.0
  c.batch_size = batch_size
  c.eval_batch_size = 128
  c.num_epochs = num_epochs
  c.warmup_epochs = 1.0
  c.warmup_prefix = True
  c.schedule_unit = 'step'
  c.lr_base_batch = 0
  c.warmup_lr = 0.0
  c.min_lr = 0.0
  if full_recipe and c.ema_decay:
    c.ema_decay = 0.99
  else:
    c.ema_decay, c.best_metric = 0.0, 'top1'
  if lr is None:
    lr = 1e-3 if c.optimizer == 'adamw' else 0.1
  c.lr = lr
  c.shuffle_buffer = 2048
  c.cache_train = True
  c.log_every_steps = 20
  c.eval_every_epochs = 5.0
  c.checkpoint_every_steps = 200
  c.keep_checkpoints = 2
  for k, v in model_kwargs.items():
    c.model_kwargs[k] = v


def finalize(c: ml_collections.ConfigDict, arg: Optional[str], *, demo_model_kwargs: dict[str, Any],
             **demo_options) -> ml_collections.ConfigDict:
  """Applies ``:demo`` / ``:demo_recipe``, then locks the dict so unknown override keys are errors."""
  if arg not in (None, '', 'demo', 'demo_recipe'):
    raise ValueError(f"unknown config argument {arg!r}: use the file alone, '<file>:demo' or '<file>:demo_recipe'")
  if arg in ('demo', 'demo_recipe'):
    apply_demo(c, demo_model_kwargs, full_recipe=arg == 'demo_recipe', **demo_options)
  c.lock()
  return c
