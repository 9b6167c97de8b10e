"""The config schema: every field with its default, the values each may take, and old workdirs' configs.

A run's config is an ``ml_collections.ConfigDict``. :func:`base_config` holds every field a run reads
with its default (``configs/common.py``'s recipes change values, a task adds its own section, e.g.
``seg``); :func:`check` validates one before anything is written; :func:`upgrade` turns the
``config.json`` of an older workdir into today's layout; :func:`resolve` derives, once, the values the
modules below the train loop read (:class:`Settings`), so they never take the whole config.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Optional

import jax.numpy as jnp
import ml_collections

from lgvit.errors import ConfigError
from lgvit.models import model_info

#: The ImageNet test sets of the default ``config.evals`` (TFDS dataset, split); docs/evaluation.md.
IMAGENET_SUITE = {
    'imagenet_v2': ('imagenet_v2/matched-frequency', 'test'),
    'imagenet2012_real': ('imagenet2012_real', 'validation'),
    'imagenet_a': ('imagenet_a', 'test'),
    'imagenet_r': ('imagenet_r', 'test'),
}
#: Which weights an entry of ``config.evals`` scores.
WEIGHTS = ('raw', 'ema')
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def eval_entry(*, type: str = '', dataset: str = '', split: str = '', weights: str = 'raw',  # pylint: disable=redefined-builtin
               every: float = 0.0, prefix: str = '') -> ml_collections.ConfigDict:
  """One entry of ``config.evals``.

  ``type``: the evaluator (lgvit.evals; '' = the config's task's own); ``dataset``/``split``: TFDS
  ('' = ``data.dataset`` / ``data.eval_split``); ``weights``: 'raw' or 'ema' (an 'ema' entry is skipped
  when ``ema_decay`` is 0); ``every``: epochs between its evals (0 = ``eval_every_epochs``, < 0 = never);
  ``prefix``: of its metrics in the logs ('' = ``eval_<name>_``).
  """
  return ml_collections.ConfigDict(dict(type=type, dataset=dataset, split=split, weights=weights, every=float(every),
                                        prefix=prefix))


def keep_evals(c: ml_collections.ConfigDict, *names: str) -> None:
  """Leaves only the ``config.evals`` entries ``names`` (a recipe whose dataset is not ImageNet)."""
  for name in [n for n in c.evals if n not in names]:
    del c.evals[name]


def eval_key(name: str) -> str:
  """A name as a metric key part: ``imagenet_v2`` -> ``eval_imagenet_v2_top1``."""
  return re.sub(r'[^0-9a-zA-Z]+', '_', name).strip('_').lower()


def base_config(model: str = '') -> ml_collections.ConfigDict:
  """Every field a run reads, with its default; a recipe (configs/) changes values, a task adds its section."""
  c = ml_collections.ConfigDict()
  c.task = 'classification'  # the lgvit.tasks module that trains and evaluates it
  c.model = model
  c.model_kwargs = ml_collections.ConfigDict()  # passed to create_model: drop_path_rate, ...
  c.num_classes = 1000

  c.data = data = ml_collections.ConfigDict()  # TFDS
  data.dataset = 'imagenet2012'
  data.data_dir = ml_collections.config_dict.placeholder(str)  # None: TFDS default (~/tensorflow_datasets)
  data.train_split = 'train'
  data.eval_split = 'validation'
  data.image_size = 224
  data.crop_pct = 0.875  # eval: resize the shorter side to image_size / crop_pct, then center-crop
  data.interpolation = 'bilinear'  # 'bilinear' | 'bicubic'
  data.shuffle_buffer = 16_384
  data.cache_train = False  # cache the encoded split in memory (small datasets)
  data.shards = 0  # input shards (0: one per process). Fix it to keep the data stream across host counts.

  c.aug = aug = ml_collections.ConfigDict()
  aug.crop_scale = (0.08, 1.0)  # random-resized-crop area range
  aug.crop_ratio = (3 / 4, 4 / 3)
  aug.hflip = True
  aug.randaugment = ''  # 'rand-m9-mstd0.5-inc1' (timm) | 'cotrand-m15-mstd0.5-n2' (CoTNet's variant) | '' = off
  aug.random_erase_prob = 0.0
  aug.random_erase_mode = 'pixel'
  aug.label_smoothing = 0.0
  aug.mixup_alpha = 0.0
  aug.cutmix_alpha = 0.0
  aug.mixup_prob = 1.0
  aug.mixup_switch_prob = 0.5
  aug.crop = 'inception_crop'  # train crop: 'inception_crop' (random-resized crop) | 'resmall_crop' (transfer)

  c.optim = optim = ml_collections.ConfigDict()
  optim.optimizer = 'sgd'  # 'sgd' (momentum, optional Nesterov) | 'adamw'
  optim.momentum = 0.9
  optim.nesterov = True
  optim.adam_b1 = 0.9
  optim.adam_b2 = 0.999
  optim.adam_eps = 1e-8
  optim.weight_decay = 1e-4
  optim.wd_exclude = '1d_and_bias'  # 'none' (decay everything) | '1d_and_bias' (no decay on ndim<=1)
  # | 'mmseg_swin' (no decay on norms, position embedding, relative tables: lgvit.optim.weight_decay_mask)
  # | 'norms' (no decay on normalisation layers only: detectron2)
  optim.grad_clip_norm = 0.0  # global L2 norm; 0 = off

  c.schedule = schedule = ml_collections.ConfigDict()
  schedule.lr = 0.1  # base LR at a global batch of lr_base_batch
  schedule.lr_base_batch = 256  # LR scales linearly with batch_size / lr_base_batch; 0 disables scaling
  schedule.decay = 'cosine'  # 'cosine' | 'constant' | 'poly' (configs/upernet.py) | 'step' (configs/mask_rcnn.py)
  schedule.unit = 'step'  # 'step' (per iteration) | 'epoch' (timm t_in_epochs)
  schedule.warmup_epochs = 0.0
  schedule.warmup_steps = 0  # > 0 overrides warmup_epochs (transfer recipes count in steps)
  schedule.warmup_lr = 0.0  # warm-up start LR (scaled with the batch like lr)
  schedule.warmup_lr_is_lr_per_epoch_step = False  # True (LESA): the warm-up starts at lr / steps_per_epoch
  schedule.min_lr = 0.0  # scaled with the batch like lr
  schedule.warmup_prefix = False  # True: cosine starts after warm-up (LESA); False: timm (warm-up overrides)
  schedule.lr_scale_warmup_min = True  # whether warmup_lr/min_lr scale with the batch too (NomMer/Swin do)
  schedule.warmup_style = 'timm'  # 'timm' (linear from warmup_lr) | 'mmcv' (ratio warm-up times the poly LR)
  schedule.poly_power = 1.0  # decay='poly': (1 - t)^power (mmcv PolyLrUpdaterHook)
  schedule.decay_epochs = ()  # decay='step': the (0-based) epochs from which the LR is x decay_rate more
  schedule.decay_rate = 0.1

  # Batch and length (global batch over every device of every host).
  c.batch_size = 256
  c.eval_batch_size = 256
  # What is evaluated, and when (lgvit/evals.py, docs/evaluation.md): ``main`` (data.dataset:data.eval_split,
  # logged as eval_top1, ...) and ``ema`` (the same split on the EMA weights, when ema_decay > 0), then the
  # ImageNet test sets, each logged as eval_<name>_top1. --config.evals.<name>.every=-1 leaves one out.
  c.evals = ml_collections.ConfigDict({'main': eval_entry(prefix='eval_'), 'ema': eval_entry(weights='ema')})
  c.evals.update({name: eval_entry(dataset=dataset, split=split) for name, (dataset, split) in IMAGENET_SUITE.items()})
  c.num_epochs = 90.0
  c.num_train_steps = -1  # > 0 overrides num_epochs

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
  c.init_zeros = ''  # regex of parameter paths set to zero after init_from (transfer: the new head)
  return c


# ---------------------------------------------------------------------------------------------
# Validation.
# ---------------------------------------------------------------------------------------------

#: Fields that must be positive, and fields that take one of a few values. Checked before anything is
#: written (a bad value used to surface as a traceback, some after the workdir was made).
POSITIVE = ('batch_size', 'eval_batch_size', 'log_every_steps', 'checkpoint_every_steps', 'keep_checkpoints',
            'eval_every_epochs', 'data.image_size', 'data.crop_pct', 'data.shuffle_buffer')
CHOICES = {'optim.optimizer': ('sgd', 'adamw'), 'data.interpolation': ('bilinear', 'bicubic'),
           'schedule.decay': ('cosine', 'constant', 'poly', 'step'), 'schedule.unit': ('step', 'epoch'),
           'schedule.warmup_style': ('timm', 'mmcv'),
           'optim.wd_exclude': ('none', '1d_and_bias', 'mmseg_swin', 'norms'),
           'matmul_precision': ('default', 'high', 'highest'), 'dtype': tuple(DTYPES),
           'aug.crop': ('inception_crop', 'resmall_crop')}  # lgvit.data.pipeline.TRAIN_CROPS


def _field(config, dotted: str):
  for part in dotted.split('.'):
    config = config[part]
  return config


def check(config, *, device_count: int) -> None:
  """Refuses (:class:`ConfigError`, naming the ``--config.<field>`` to change) a config that cannot run
  on ``device_count`` devices. The task (``Task.check_model``), its evaluators and the datasets are checked
  where they are built."""
  for name in POSITIVE:
    value = _field(config, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
      raise ConfigError(f'{name} must be a positive number, got {value!r} (--config.{name}=...)')
  for name, choices in CHOICES.items():
    if _field(config, name) not in choices:
      raise ConfigError(f"{name} must be one of {', '.join(map(repr, choices))}, got {_field(config, name)!r} "
                        f'(--config.{name}=...)')
  if config.num_train_steps <= 0 and not config.num_epochs > 0:
    raise ConfigError(f'the run has no steps: num_train_steps={config.num_train_steps} and num_epochs='
                      f'{config.num_epochs}; set one of them (--config.num_train_steps=...)')
  for name in ('batch_size', 'eval_batch_size'):
    if config[name] % device_count:
      raise ConfigError(f'{name} {config[name]} is not divisible by the {device_count} devices; use a multiple of '
                        f'{device_count} (--config.{name}=...)')
  model_info(config.model)  # an unknown model's error lists the registered ones
  for name, entry in config.evals.items():
    if entry.weights not in WEIGHTS:
      raise ConfigError(f"evals.{name}.weights must be one of {', '.join(map(repr, WEIGHTS))}, got "
                        f'{entry.weights!r} (--config.evals.{name}.weights=...)')


# ---------------------------------------------------------------------------------------------
# Older workdirs.
# ---------------------------------------------------------------------------------------------

# Workdirs written before the config had sections kept every field at the top level; these are the
# fields that moved (section, new name).
_MOVED = {
    **{k: ('data', k) for k in ('dataset', 'data_dir', 'train_split', 'eval_split', 'image_size', 'crop_pct',
                                'interpolation', 'shuffle_buffer', 'cache_train')},
    'data_shards': ('data', 'shards'),
    **{k: ('aug', k) for k in ('crop_scale', 'crop_ratio', 'hflip', 'randaugment', 'random_erase_prob',
                               'random_erase_mode', 'label_smoothing', 'mixup_alpha', 'cutmix_alpha', 'mixup_prob',
                               'mixup_switch_prob')},
    **{k: ('optim', k) for k in ('optimizer', 'momentum', 'nesterov', 'adam_b1', 'adam_b2', 'adam_eps',
                                 'weight_decay', 'wd_exclude', 'grad_clip_norm')},
    **{k: ('schedule', k) for k in ('lr', 'lr_base_batch', 'warmup_epochs', 'warmup_lr', 'min_lr', 'warmup_prefix',
                                    'warmup_lr_is_lr_per_epoch_step', 'lr_scale_warmup_min')},
    'schedule_unit': ('schedule', 'unit'),
}


def _sectioned(saved: dict) -> dict:
  if isinstance(saved.get('data'), dict):
    return saved
  out = {k: v for k, v in saved.items() if k not in _MOVED and k != 'schedule'}
  for key, (section, name) in _MOVED.items():
    if key in saved:
      out.setdefault(section, {})[name] = saved[key]
  if 'schedule' in saved:
    out.setdefault('schedule', {})['decay'] = saved['schedule']
  return out


def _evals_from_names(names, saved: dict) -> dict:
  """``config.evals`` as a tuple of names (before entries): the main eval, EMA, and the named sets, which
  scored the weights that ``best_metric`` picked."""
  weights = 'ema' if str(saved.get('best_metric', '')).startswith('ema_') and saved.get('ema_decay') else 'raw'
  data = saved.get('data', {})
  main = f"{data.get('dataset')}:{data.get('eval_split')}"
  out = {'main': eval_entry(prefix='eval_').to_dict(), 'ema': eval_entry(weights='ema').to_dict()}
  for part in ([names] if isinstance(names, str) else list(names or ())):
    for name in filter(None, (n.strip() for n in str(part).split(','))):
      dataset, _, split = name.partition(':')
      if name == main or (dataset, split) == (data.get('dataset'), data.get('eval_split')):
        continue
      dataset, split = IMAGENET_SUITE.get(name, (dataset, split))
      out[eval_key(name)] = eval_entry(dataset=dataset, split=split, weights=weights).to_dict()
  return out


def _with_defaults(saved: dict, defaults: dict) -> dict:
  out = dict(saved)
  for key, value in defaults.items():
    if key not in out:
      out[key] = value
    elif isinstance(value, dict) and isinstance(out[key], dict) and key != 'evals' and key != 'model_kwargs':
      out[key] = _with_defaults(out[key], value)
  return out


def upgrade(saved: dict) -> dict:
  """A ``config.json`` of any earlier lgvit as today's fields: sections for flat configs, ``config.evals``
  entries for a tuple of names, and today's default for every field it lacks (what that run used)."""
  saved = _sectioned(saved)
  if not isinstance(saved.get('evals', {}), dict):
    saved = {**saved, 'evals': _evals_from_names(saved['evals'], saved)}
  return _with_defaults(saved, base_config().to_dict())


# ---------------------------------------------------------------------------------------------
# What the modules below the loop read.
# ---------------------------------------------------------------------------------------------


def compute_dtype(name: str):
  if name not in DTYPES:
    raise ConfigError(f"dtype must be one of {', '.join(map(repr, DTYPES))}, got {name!r}")
  return DTYPES[name]


@dataclasses.dataclass(frozen=True)
class Settings:
  """The values a task's steps and evaluators read, resolved once from the config (:func:`resolve`)."""
  dtype: Any  # compute dtype (params stay float32)
  num_classes: int
  data: ml_collections.ConfigDict  # the data section (dataset, splits, sizes)
  aug: ml_collections.ConfigDict  # augmentation and label mixing
  eval_batch_size: int  # global
  options: ml_collections.ConfigDict  # the task's own section (e.g. ``seg``), empty if it has none
  data_dir: Optional[str] = None


def resolve(config, section: Optional[str] = None) -> Settings:
  """:class:`Settings` of ``config``; ``section`` names the task's own config section."""
  options = config[section] if section and section in config else ml_collections.ConfigDict()
  return Settings(dtype=compute_dtype(config.dtype), num_classes=config.num_classes, data=config.data, aug=config.aug,
                  eval_batch_size=config.eval_batch_size, options=options, data_dir=config.data.data_dir)
