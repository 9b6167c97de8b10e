"""Runs 3 train steps of a tiny ResNet on a 1-device mesh and on an 8-device mesh; prints the max differences.

Run with XLA_FLAGS=--xla_force_host_platform_device_count=8 (the test does).
"""
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

sys.path.insert(0, '.')
from configs import resnet50  # noqa: E402
from lgvit import optim, train  # noqa: E402


def run(devices):
  c = resnet50.get_config('demo')
  c.unlock()
  c.model_kwargs.drop_path_rate = 0.1
  c.mixup_alpha, c.cutmix_alpha, c.label_smoothing = 0.8, 1.0, 0.1
  c.ema_decay = 0.9
  mesh = train.make_mesh(devices)
  rep, data = NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))
  model = train.build_model(c)
  schedule = optim.lr_schedule(c, 10, 100)
  variables = train.init_variables(model, 32, 0)
  tx = optim.make_optimizer(c, variables['params'], schedule)
  state = train.TrainState(step=jnp.zeros((), jnp.int32), params=variables['params'],
                           batch_stats=variables['batch_stats'], opt_state=tx.init(variables['params']),
                           ema_params=variables['params'], ema_batch_stats=variables['batch_stats'])
  state = jax.device_put(state, rep)
  step = jax.jit(train.make_train_step(model, tx, c, schedule), in_shardings=(rep, data, rep),
                 out_shardings=(rep, rep))
  rng = np.random.default_rng(0)
  losses = []
  for _ in range(3):
    batch = {'image': rng.integers(0, 255, (16, 32, 32, 3), dtype=np.uint8), 'label': rng.integers(0, 10, 16)}
    state, m = step(state, jax.device_put(batch, data), jax.random.PRNGKey(0))
    losses.append(float(m['loss']))
  return state, losses


s1, l1 = run(jax.devices()[:1])
s8, l8 = run(jax.devices())
leaves = zip(jax.tree_util.tree_leaves(jax.device_get(s1)), jax.tree_util.tree_leaves(jax.device_get(s8)))
diff = max(float(np.max(np.abs(np.asarray(a, np.float64) - b))) for a, b in leaves)
print(json.dumps({'devices': jax.device_count(), 'loss_1': l1, 'loss_8': l8, 'max_state_diff': diff}))
