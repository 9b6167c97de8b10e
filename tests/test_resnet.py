"""ResNet-50 and the registry."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lgvit.errors import UnknownModelError
from lgvit.models import create_model, list_models


def test_unknown_model_lists_close_matches():
  with pytest.raises(UnknownModelError, match="resnet50"):
    create_model('resnet5')
  assert 'resnet50' in list_models()


def test_tiny_resnet_forward_features_and_train_mode():
  kw = dict(stage_depths=(1, 1, 1, 1), stage_planes=(4, 8, 8, 8), stem_width=8, num_classes=5)
  model = create_model('resnet50', **kw)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 40, 48, 3)), jnp.float32)
  v = model.init(jax.random.PRNGKey(0), x, train=False)
  logits = model.apply(v, x, train=False)
  assert logits.shape == (2, 5)
  feats = create_model('resnet50', features_only=True, **kw).apply(v, x, train=False)
  assert [f.shape[1:3] for f in feats] == [(10, 12), (5, 6), (3, 3), (2, 2)]
  out, upd = model.apply(v, x, train=True, mutable=['batch_stats'], rngs={'dropout': jax.random.PRNGKey(1),
                                                                           'drop_path': jax.random.PRNGKey(2)})
  assert out.shape == (2, 5)
  assert not np.allclose(upd['batch_stats']['stem']['bn']['mean'], 0.0)
