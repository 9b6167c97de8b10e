"""Every config builds, and its optimiser/schedule are the paper's (LR at 0, end of warm-up, midpoint, end; decay)."""
import importlib
import math
import pathlib

import jax
import jax.numpy as jnp
import pytest

from configs import common
from lgvit import optim
from lgvit.models import create_model

DETECTION_CONFIGS = ('mask_rcnn', 'faster_rcnn', 'cascade_rcnn', 'cascade_mask_rcnn')  # tests/test_detection_task.py
CONFIGS = sorted(p.stem for p in (pathlib.Path(__file__).parents[1] / 'configs').glob('*.py')
                 if p.stem not in ('__init__', 'common', 'transfer', *DETECTION_CONFIGS)
                 and not p.stem.startswith('upernet'))  # see the last test

# name prefix -> (global batch, peak LR, warm-up start LR, final/min LR, warm-up epochs, epochs, unit,
#                 warm-up prefix, optimizer, weight decay, decay on 1-D params?)
NOMMER = (1024, 1e-3, 1e-6, 1e-5, 20, 300, 'step', False, 'adamw', 0.05, False)
# LESA: the warm-up starts at lr / iters_per_epoch ('per_iter').
LESA = (128, 0.05, 'per_iter', 0.0, 5, 95, 'step', True, 'sgd', 8e-5, True)
SWIN = NOMMER  # Swin's recipe (SALG follows it): AdamW 5e-4 per 512, 20 warm-up of 300 epochs, per step
PAPER = {
    'resnet50': (256, 0.1, 0.0, 0.0, 0, 90, 'step', False, 'sgd', 1e-4, True),
    'nommer_t': NOMMER, 'nommer_s': NOMMER, 'nommer_b': NOMMER,
    'cotnet50': (640, 0.25, 1e-4, 1e-5, 5, 350, 'epoch', False, 'sgd', 4e-5, False),
    'cotnet101': (448, 0.175, 1e-4, 1e-5, 5, 350, 'epoch', False, 'sgd', 6e-5, False),
    'cotnext50_2x48d': (512, 0.2, 1e-4, 1e-5, 5, 350, 'epoch', False, 'sgd', 4e-5, False),
    'cotnext101_2x48d': (512, 0.2, 1e-4, 1e-5, 5, 350, 'epoch', False, 'sgd', 6e-5, False),
    'se_cotnetd50': (640, 0.25, 1e-4, 1e-5, 5, 350, 'epoch', False, 'sgd', 4e-5, False),
    'se_cotnetd101': (512, 0.2, 1e-4, 1e-5, 5, 350, 'epoch', False, 'sgd', 4e-5, False),
    'se_cotnetd152': (512, 0.2, 1e-4, 1e-5, 5, 350, 'epoch', False, 'sgd', 4e-5, False),
    'salg_st': SWIN, 'salg_st_msa': SWIN, 'salg_t': SWIN, 'salg_t_msa': SWIN, 'salg_s': SWIN,
    'swin_st': SWIN, 'swin_t': SWIN, 'swin_s': SWIN,
    'lesa_resnet50': LESA, 'lesa_wrn50': LESA, 'sa_resnet50': LESA, 'static_lesa_resnet50': LESA,
}


def expected_lr(step, spe, batch, peak, warm, low, warm_ep, epochs, unit, prefix):
  """timm CosineLRScheduler (warm-up overriding the cosine) or LESA's warm-up-then-cosine, written out."""
  warm = peak / spe if warm == 'per_iter' else warm
  t, t_warm, t_total = (step // spe, warm_ep, epochs) if unit == 'epoch' else (step, warm_ep * spe, epochs * spe)
  if t < t_warm:
    return warm + t * (peak - warm) / t_warm
  frac = (t - t_warm) / (t_total - t_warm) if prefix else t / t_total
  return low + 0.5 * (peak - low) * (1 + math.cos(math.pi * min(frac, 1.0)))


@pytest.mark.parametrize('name', CONFIGS)
def test_config_builds_and_demo_is_small(name):
  module = importlib.import_module(f'configs.{name}')
  full, demo = module.get_config(), module.get_config('demo')
  assert full.data.dataset == 'imagenet2012' and full.num_classes == 1000
  assert demo.data.dataset == 'lgvit_digits' and demo.num_classes == 10 and demo.data.image_size <= 64
  with pytest.raises(Exception):
    full.no_such_field = 1  # locked: unknown override keys are errors
  create_model(full.model, **full.model_kwargs)  # full-config kwargs are accepted by the model


@pytest.mark.parametrize('name', sorted(n for n in PAPER if n in CONFIGS))
def test_schedule_and_decay_match_the_paper(name):
  batch, peak, warm, low, warm_ep, epochs, unit, prefix, opt, wd, decay_1d = PAPER[name]
  c = importlib.import_module(f'configs.{name}').get_config()
  assert (c.batch_size, c.optim.optimizer, c.num_epochs, c.optim.weight_decay) == (batch, opt, epochs, wd)
  spe = common.IMAGENET_TRAIN_EXAMPLES // batch
  total = int(epochs * spe)
  sched = optim.lr_schedule(c.schedule, c.batch_size, spe, total)
  points = [0, int(warm_ep * spe), total // 2, total - 1]
  for step in points:
    want = expected_lr(step, spe, batch, peak, warm, low, warm_ep, epochs, unit, prefix)
    assert math.isclose(float(sched(step)), want, rel_tol=2e-4, abs_tol=1e-9), (name, step)
  assert math.isclose(optim.scaled_lrs(c.schedule, c.batch_size)[0], peak, rel_tol=1e-6)
  model = create_model(c.model, **c.model_kwargs)
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, c.data.image_size, c.data.image_size, 3)), train=False))['params']
  flat = jax.tree_util.tree_leaves_with_path(optim.weight_decay_mask(params, c.optim.wd_exclude))
  one_d = [m for p, m in flat if jax.tree_util.keystr(p).endswith("['bias']") or "['scale']" in jax.tree_util.keystr(p)]
  kernels = [m for p, m in flat if jax.tree_util.keystr(p).endswith("['kernel']")]
  assert all(kernels) and one_d and all(m == decay_1d for m in one_d)


def test_upernet_recipe_is_mmsegs_schedule_and_decay():
  """configs/upernet.py: poly 6e-5 to 0 over 160k iterations after 1500 of mmcv's linear warm-up (ratio 1e-6);
  no decay on norms, the position embedding and relative tables (docs/segmentation.md)."""
  from configs import upernet
  c = upernet.get_config('backbone=nommer_t')
  sched = optim.lr_schedule(c.schedule, c.batch_size, 1263, c.num_train_steps)
  poly = lambda t: 6e-5 * (1 - t / 160_000)
  for t in (0, 700, 1500, 80_000, 159_999):
    want = poly(t) * (1e-6 + (1 - 1e-6) * t / 1500 if t < 1500 else 1.0)
    assert math.isclose(float(sched(t)), want, rel_tol=1e-4, abs_tol=1e-11), t  # float32 near the end
  model = create_model(c.model, **c.model_kwargs)
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 512, 512, 3)), train=False))['params']
  mask = {jax.tree_util.keystr(p): m for p, m in
          jax.tree_util.tree_leaves_with_path(optim.weight_decay_mask(params, c.optim.wd_exclude))}
  assert not mask["['backbone']['pos_embedding']"]
  assert not any(m for k, m in mask.items() if 'relative_position_bias_table' in k or "['norm" in k)
  assert mask["['decode_head']['fpn0']['unit']['bn']['scale']"] and mask["['decode_head']['classifier']['bias']"]
