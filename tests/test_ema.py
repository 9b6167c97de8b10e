"""EMA of params and BatchNorm statistics inside the real train step, against the closed form."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from configs import resnet50
from lgvit import optim, train
from lgvit.models import layers


class Toy(nn.Module):
  num_classes: int = 3

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    x = layers.BatchNorm()(jnp.mean(x, axis=(1, 2)), train=train)
    return nn.Dense(self.num_classes)(x)


def test_ema_matches_closed_form():
  c = resnet50.get_config('demo')
  c.unlock()
  c.num_classes, c.ema_decay, c.optim.optimizer, c.schedule.lr = 3, 0.9, 'adamw', 0.05
  model = Toy()
  schedule = optim.lr_schedule(c.schedule, c.batch_size, 10, 100)
  v = model.init(jax.random.PRNGKey(0), jnp.zeros((2, 4, 4, 3)), train=False)
  tx = optim.make_optimizer(c.optim, v['params'], schedule)
  state = train.TrainState(step=jnp.zeros((), jnp.int32), params=v['params'], batch_stats=v['batch_stats'],
                           opt_state=tx.init(v['params']), ema_params=v['params'], ema_batch_stats=v['batch_stats'])
  step = jax.jit(train.make_train_step(model, tx, c, schedule))
  rng = np.random.default_rng(0)
  history = [state.params]
  bs_history = [state.batch_stats]
  n, d = 6, 0.9
  for _ in range(n):
    batch = {'image': rng.integers(0, 255, (4, 4, 4, 3)).astype(np.uint8), 'label': rng.integers(0, 3, 4)}
    state, _ = step(state, batch, jax.random.PRNGKey(1))
    history.append(state.params)
    bs_history.append(state.batch_stats)

  def closed_form(seq):
    # ema_n = d^n x_0 + (1 - d) * sum_{k=1..n} d^(n-k) x_k
    return jax.tree_util.tree_map(
        lambda *xs: d**n * xs[0] + (1 - d) * sum(d**(n - k) * xs[k] for k in range(1, n + 1)), *seq)

  for got, want in [(state.ema_params, closed_form(history)), (state.ema_batch_stats, closed_form(bs_history))]:
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert not np.allclose(state.ema_params['Dense_0']['kernel'], state.params['Dense_0']['kernel'])
