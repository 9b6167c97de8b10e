"""Small models of every family for the introspection/prediction tests, without compiling an init."""
import importlib

import jax
import numpy as np

from lgvit import checkpoint

# family -> (registered model, config module whose ':demo' model_kwargs shrink it; None: RESNET_TINY)
FAMILY_MODELS = {
    'resnet': ('resnet50', None),
    'nommer': ('nommer_t', 'nommer_t'),
    'lesa': ('lesa_resnet50', 'lesa_resnet50'),
    'cotnet': ('cotnet50', 'cotnet50'),
    'salg': ('salg_st', 'salg_st'),
    'swin': ('swin_st', 'swin_st'),
}
RESNET_TINY = dict(stage_depths=(1, 1, 1, 1), stem_width=8, stage_planes=(8, 8, 16, 16))


def small_kwargs(family):
  _, config = FAMILY_MODELS[family]
  if config is None:
    return dict(RESNET_TINY)
  return dict(importlib.import_module(f'configs.{config}').get_config('demo').model_kwargs)


def random_variables(model, x, seed=0, scale=0.05):
  """Random values in the shapes of ``model.init`` (BatchNorm variances 1) without compiling the init."""
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    if path[-1].key == 'var':  # BatchNorm running variance
      return np.ones(leaf.shape, leaf.dtype)
    return (scale * rng.standard_normal(leaf.shape)).astype(leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def save_variables_dir(path, name, kwargs, variables, num_classes=10, image_size=32, dataset='lgvit_digits'):
  """A directory as ``python -m lgvit.export`` writes its ``variables/`` (orbax + meta naming the model)."""
  checkpoint.save_variables(str(path), variables, {'model': name, 'num_classes': num_classes, 'model_kwargs': kwargs,
                                                   'image_size': image_size, 'dataset': dataset})
  return str(path)
