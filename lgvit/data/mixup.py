"""On-device Mixup / CutMix with label smoothing folded into soft targets (timm 'batch' mode)."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def smooth_targets(labels: jax.Array, num_classes: int, smoothing: float) -> jax.Array:
  """timm's one-hot with smoothing: off = eps / K, on = 1 - eps + off."""
  off = smoothing / num_classes
  return jax.nn.one_hot(labels, num_classes) * (1.0 - smoothing) + off


def cutmix_box(rng, height: int, width: int, lam: jax.Array):
  """timm ``rand_bbox``: a box of area ~(1-lam) centred uniformly, clipped to the image."""
  cut = jnp.sqrt(1.0 - lam)
  ch, cw = (height * cut).astype(jnp.int32), (width * cut).astype(jnp.int32)
  ky, kx = jax.random.split(rng)
  cy = jax.random.randint(ky, (), 0, height)
  cx = jax.random.randint(kx, (), 0, width)
  y0, y1 = jnp.clip(cy - ch // 2, 0, height), jnp.clip(cy + ch // 2, 0, height)
  x0, x1 = jnp.clip(cx - cw // 2, 0, width), jnp.clip(cx + cw // 2, 0, width)
  return y0, y1, x0, x1


def mixup_cutmix(rng, images: jax.Array, labels: jax.Array, *, num_classes: int, mixup_alpha: float,
                 cutmix_alpha: float, prob: float = 1.0, switch_prob: float = 0.5,
                 smoothing: float = 0.0) -> tuple[jax.Array, jax.Array]:
  """Mixes the batch with its reverse (``x.flip(0)``), one lambda per batch.

  Returns mixed images and soft targets ``lam * y + (1 - lam) * y_flipped``; for CutMix, lam is
  corrected to the exact pasted area, so the targets match the pixels.
  """
  targets = smooth_targets(labels, num_classes, smoothing)
  if mixup_alpha <= 0 and cutmix_alpha <= 0:
    return images, targets
  k_apply, k_switch, k_mix, k_cut, k_box = jax.random.split(rng, 5)
  apply = jax.random.uniform(k_apply) < prob
  if mixup_alpha > 0 and cutmix_alpha > 0:
    use_cutmix = jax.random.uniform(k_switch) < switch_prob
  else:
    use_cutmix = jnp.asarray(cutmix_alpha > 0)
  lam_mix = jax.random.beta(k_mix, mixup_alpha, mixup_alpha) if mixup_alpha > 0 else jnp.float32(1.0)
  lam_cut = jax.random.beta(k_cut, cutmix_alpha, cutmix_alpha) if cutmix_alpha > 0 else jnp.float32(1.0)
  h, w = images.shape[1:3]
  y0, y1, x0, x1 = cutmix_box(k_box, h, w, lam_cut)
  rows = jnp.arange(h)[:, None]
  cols = jnp.arange(w)[None, :]
  box = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
  lam_cut = 1.0 - jnp.sum(box) / (h * w)
  flipped = images[::-1]
  mixed_cut = jnp.where(box[None, :, :, None], flipped, images)
  mixed_mix = (lam_mix * images.astype(jnp.float32) + (1 - lam_mix) * flipped.astype(jnp.float32)).astype(images.dtype)
  lam = jnp.where(apply, jnp.where(use_cutmix, lam_cut, lam_mix), 1.0)
  images = jnp.where(apply, jnp.where(use_cutmix, mixed_cut, mixed_mix), images)
  targets = lam * targets + (1 - lam) * targets[::-1]
  return images, targets
