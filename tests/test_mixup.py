"""On-device Mixup/CutMix targets."""
import jax
import jax.numpy as jnp
import numpy as np

from lgvit.data import mixup


def test_cutmix_targets_match_pasted_area_and_sum_to_one():
  images = jnp.stack([jnp.full((16, 16, 3), float(i)) for i in range(4)])
  labels = jnp.arange(4)
  for seed in range(5):
    mixed, targets = mixup.mixup_cutmix(jax.random.PRNGKey(seed), images, labels, num_classes=4, mixup_alpha=0.0,
                                        cutmix_alpha=1.0, smoothing=0.1)
    np.testing.assert_allclose(targets.sum(-1), 1.0, rtol=1e-6)
    for i in range(4):
      own = float(jnp.mean(mixed[i, :, :, 0] == i))
      # Label-smoothed share of the own class = own_area * (1 - eps) + eps / K.
      np.testing.assert_allclose(targets[i, i], own * 0.9 + 0.1 / 4 if own < 1 else 0.9 + 0.1 / 4, atol=1e-5)


def test_mixup_blends_pixels_and_targets_consistently():
  images = jnp.stack([jnp.zeros((4, 4, 3)), jnp.ones((4, 4, 3))])
  mixed, targets = mixup.mixup_cutmix(jax.random.PRNGKey(0), images, jnp.array([0, 1]), num_classes=2,
                                      mixup_alpha=0.8, cutmix_alpha=0.0)
  lam = float(targets[0, 0])
  np.testing.assert_allclose(mixed[0], 1 - lam, rtol=1e-5)
  np.testing.assert_allclose(targets.sum(-1), 1.0, rtol=1e-6)
