"""FLOPs from XLA's cost analysis, reported as multiply-adds (the papers' "FLOPs")."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def count_macs(model, image_size: int, batch: int = 1, variables=None) -> float:
  """Multiply-adds of one eval forward per image (XLA 'flops' / 2 / batch)."""
  x = jax.ShapeDtypeStruct((batch, image_size, image_size, 3), jnp.float32)
  if variables is None:
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(x.shape), train=False))
  fn = jax.jit(lambda v, x: model.apply(v, x, train=False))
  cost = fn.lower(variables, x).compile().cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost['flops']) / 2.0 / batch
