"""Optimisers, learning-rate schedules and weight-decay masks, as the papers configured them."""
from __future__ import annotations

import math
from typing import Callable

import flax
import jax
import jax.numpy as jnp
import optax


def scaled_lrs(schedule, batch_size: int) -> tuple[float, float, float]:
  """(base, warmup start, min) LR of ``config.schedule`` after the linear batch-size scaling of the recipe."""
  scale = batch_size / schedule.lr_base_batch if schedule.lr_base_batch else 1.0
  other = scale if schedule.lr_scale_warmup_min else 1.0
  return schedule.lr * scale, schedule.warmup_lr * other, schedule.min_lr * other


def lr_schedule(schedule, batch_size: int, steps_per_epoch: int, total_steps: int) -> Callable[[jax.Array], jax.Array]:
  """Warm-up + cosine of ``config.schedule`` (timm ``CosineLRScheduler`` semantics, or LESA's warm-up prefix).

  * ``unit='step'``: t counts iterations; ``'epoch'``: t = floor(step / steps_per_epoch)
    (timm ``t_in_epochs``, CoTNet).
  * ``warmup_prefix=False`` (timm): lr(t) = warmup for t < T_w, else the cosine evaluated at t over
    [0, T]. ``True`` (LESA): the cosine starts after the warm-up and spans T - T_w.
  * ``decay='step'`` (mmdet): the LR times ``decay_rate`` from each epoch of ``decay_epochs`` on (0-based
    epochs of ``steps_per_epoch`` iterations, whatever ``unit``), mmcv's ``StepLrUpdaterHook``.
  * ``warmup_steps > 0`` gives T_w in iterations (big_vision's transfer configs) and overrides
    ``warmup_epochs``, as ``num_train_steps`` overrides ``num_epochs``.
  """
  base, warm_lr, min_lr = scaled_lrs(schedule, batch_size)
  if schedule.warmup_lr_is_lr_per_epoch_step:
    warm_lr = base / steps_per_epoch
  per_epoch = schedule.unit == 'epoch'
  if schedule.unit not in ('step', 'epoch'):
    raise ValueError(f"schedule.unit must be 'step' or 'epoch', got {schedule.unit!r}")
  unit = steps_per_epoch if per_epoch else 1
  t_total = max(total_steps / unit, 1.0) if not per_epoch else max(math.ceil(total_steps / steps_per_epoch), 1)
  t_warm = schedule.warmup_epochs * (1 if per_epoch else steps_per_epoch)
  warmup_steps = schedule.warmup_steps
  if warmup_steps > 0:
    t_warm = warmup_steps / steps_per_epoch if per_epoch else float(warmup_steps)
  decay, warmup_prefix = schedule.decay, schedule.warmup_prefix
  power = schedule.poly_power
  milestones = tuple(float(m) for m in schedule.get('decay_epochs', ()))
  decay_rate = schedule.get('decay_rate', 0.1)
  mmcv_warmup = schedule.warmup_style == 'mmcv'
  if schedule.warmup_style not in ('timm', 'mmcv'):
    raise ValueError(f"schedule.warmup_style must be 'timm' or 'mmcv', got {schedule.warmup_style!r}")

  def lr_at(step):
    step = jnp.asarray(step, jnp.float32)
    t = jnp.floor(step / unit) if per_epoch else step
    if decay == 'constant':
      main = jnp.full_like(t, base)
    elif decay == 'cosine':
      if warmup_prefix:
        frac = jnp.clip((t - t_warm) / jnp.maximum(t_total - t_warm, 1.0), 0.0, 1.0)
      else:
        frac = jnp.clip(t / t_total, 0.0, 1.0)
      main = min_lr + 0.5 * (base - min_lr) * (1.0 + jnp.cos(jnp.pi * frac))
    elif decay == 'poly':  # mmcv PolyLrUpdaterHook: (base - min) (1 - t / T)^power + min
      main = min_lr + (base - min_lr) * (1.0 - jnp.clip(t / t_total, 0.0, 1.0))**power
    elif decay == 'step':  # mmcv StepLrUpdaterHook(by_epoch=True): x decay_rate from each listed epoch on
      epochs_done = step / steps_per_epoch  # a fractional milestone: detectron2's iteration steps
      drops = sum((epochs_done >= m).astype(jnp.float32) for m in milestones) if milestones else 0.0
      main = base * decay_rate**drops
    else:
      raise ValueError(f"schedule.decay must be 'cosine', 'poly', 'step' or 'constant', got {decay!r}")
    if t_warm > 0 and mmcv_warmup:
      # mmcv 'linear' warm-up scales the decayed LR: ratio r = warmup_lr / lr rising linearly to 1.
      ratio = warm_lr / base
      return jnp.where(t < t_warm, main * (ratio + (1.0 - ratio) * t / t_warm), main)
    if t_warm > 0:
      warm = warm_lr + t * (base - warm_lr) / t_warm
      return jnp.where(t < t_warm, warm, main)
    return main

  return lr_at


#: mmseg's UperNet-for-Swin ``paramwise_cfg`` custom keys with ``decay_mult=0`` (docs/segmentation.md).
MMSEG_NO_DECAY = ('pos_embedding', 'relative_position_bias_table')


def weight_decay_mask(params, rule: str):
  """True where weight decay applies. '1d_and_bias': not on ndim<=1 params or '*bias' (timm/Swin).
  'mmseg_swin': not on the parameters of any module whose name contains 'norm' (the LayerNorms; the
  heads' BatchNorms are ``bn`` and keep their decay, as in mmseg), nor on the position embedding and
  the relative position bias tables; biases of convs and linears are decayed, as in mmseg. 'norms'
  (detectron2's ``WEIGHT_DECAY_NORM = 0``): not on the parameters of normalisation layers, found as the
  modules holding a 1-D ``scale`` (flax's BatchNorm, LayerNorm, GroupNorm); everything else is decayed."""
  if rule == 'none':
    return jax.tree_util.tree_map(lambda _: True, params)
  flat = flax.traverse_util.flatten_dict(params)
  if rule == '1d_and_bias':
    mask = {k: not (v.ndim <= 1 or k[-1].endswith('bias')) for k, v in flat.items()}
  elif rule == 'mmseg_swin':
    mask = {k: not (k[-1] in MMSEG_NO_DECAY or any('norm' in part for part in k[:-1])) for k in flat}
  elif rule == 'norms':
    norms = {k[:-1] for k, v in flat.items() if k[-1] == 'scale' and v.ndim == 1}
    mask = {k: k[:-1] not in norms for k in flat}
  else:
    raise ValueError(f"wd_exclude must be 'none', '1d_and_bias', 'mmseg_swin' or 'norms', got {rule!r}")
  return flax.traverse_util.unflatten_dict(mask)


def make_optimizer(optim, params, schedule) -> optax.GradientTransformation:
  """The optimiser of ``optim.optim``, its learning rate following ``schedule``."""
  mask = weight_decay_mask(params, optim.wd_exclude)
  chain = []
  if optim.grad_clip_norm:
    chain.append(optax.clip_by_global_norm(optim.grad_clip_norm))
  if optim.optimizer == 'sgd':
    # PyTorch SGD: L2 decay added to the gradient before momentum (coupled).
    if optim.weight_decay:
      chain.append(optax.add_decayed_weights(optim.weight_decay, mask))
    chain.append(optax.sgd(schedule, momentum=optim.momentum or None, nesterov=optim.nesterov))
  elif optim.optimizer == 'adamw':
    chain.append(optax.adamw(schedule, b1=optim.adam_b1, b2=optim.adam_b2, eps=optim.adam_eps,
                             weight_decay=optim.weight_decay, mask=mask))
  else:
    raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {optim.optimizer!r}")
  return optax.chain(*chain)
