"""One real train step (``lgvit.train.make_train_step``) on several device topologies; saves each state.

    python tests/helpers/train_step_topologies.py OUT            # 1 process: meshes of 1, 2, 4, 8 devices
    python tests/helpers/train_step_topologies.py OUT ADDR N I   # process I of N (jax.distributed at ADDR)

Run with XLA_FLAGS=--xla_force_host_platform_device_count=8 (one process) or =4 (each of 2). Writes
``OUT/<processes>x<devices>.npz`` with every leaf of the state after the step (process 0 only).

The model is a small smooth network built from lgvit's shared layers -- strided and grouped convs,
SyncBN, GELU, stochastic depth, dropout -- trained with Mixup/CutMix, label smoothing, EMA and SGD
with momentum (whose trace after one step is the gradient plus weight decay). It has no ReLU or
max: at a kink, float32 round-off alone can decide which side an activation falls on, and the
gradient then jumps by one activation's share (tests/test_distributed.py explains the bound).
"""
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

if len(sys.argv) > 2:  # before anything (lgvit's imports included) starts the XLA backend
  jax.distributed.initialize(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', '..'))
from configs import resnet50  # noqa: E402
from lgvit import cpu_kernels, evals, modeling, optim, train  # noqa: E402
from lgvit.models import layers  # noqa: E402

cpu_kernels.use()  # the kernels main.py picks here; XLA reads XLA_FLAGS at the first computation, below

GLOBAL_BATCH, IMAGE = 32, 32


class SmoothNet(nn.Module):
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, *, train: bool):
    x = layers.gelu(layers.BatchNorm(name='bn1')(layers.Conv2d(16, 3, 2, 1, name='conv1')(x), train=train))
    y = layers.Conv2d(16, 3, 1, 1, groups=4, name='conv2')(x)
    y = layers.gelu(layers.BatchNorm(name='bn2')(y, train=train))
    x = x + layers.DropPath(0.3)(y, train=train)
    x = nn.Dropout(0.1, deterministic=not train)(jnp.mean(x, axis=(1, 2)))
    return nn.Dense(self.num_classes, name='head')(x)


def config():
  c = resnet50.get_config('demo')
  c.unlock()
  c.data.image_size = IMAGE
  c.schedule.update(decay='constant', warmup_epochs=0.0, lr=0.1)
  c.aug.update(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1)
  c.ema_decay = 0.9
  return c


def example_batch():
  rng = np.random.default_rng(0)
  return {'image': rng.integers(0, 256, (GLOBAL_BATCH, IMAGE, IMAGE, 3), dtype=np.uint8),
          'label': rng.integers(0, 10, GLOBAL_BATCH).astype(np.int32)}


def one_step(devices):
  c = config()
  mesh = modeling.make_mesh(devices)
  replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))
  model = SmoothNet()
  schedule = optim.lr_schedule(c.schedule, c.batch_size, 100, 100)
  abstract = jax.eval_shape(lambda: modeling.init_variables(model, c.data.image_size, c.seed))
  tx = optim.make_optimizer(c.optim, abstract['params'], schedule)
  state = jax.device_put(train.create_state(model, tx, c), replicated)
  batch = example_batch()
  per_process = GLOBAL_BATCH // jax.process_count()
  local = {k: v[jax.process_index() * per_process:(jax.process_index() + 1) * per_process] for k, v in batch.items()}
  step = jax.jit(train.make_train_step(model, tx, c, schedule), in_shardings=(replicated, sharded, replicated),
                 out_shardings=(replicated, replicated))
  state, metrics = step(state, evals.global_batch(local, sharded), jax.random.PRNGKey(0))
  leaves = {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(jax.device_get(state))}
  leaves['metrics/loss'] = np.asarray(metrics['loss'])
  leaves['metrics/data_fingerprint'] = np.asarray(metrics['data_fingerprint'])
  return leaves


def main(argv):
  out = argv[1]
  os.makedirs(out, exist_ok=True)
  if len(argv) > 2:
    result = one_step(jax.devices())
    if jax.process_index() == 0:
      np.savez(os.path.join(out, f'{jax.process_count()}x{jax.local_device_count()}.npz'), **result)
    return
  for n in (1, 2, 4, 8):
    np.savez(os.path.join(out, f'1x{n}.npz'), **one_step(jax.devices()[:n]))


if __name__ == '__main__':
  main(sys.argv)
