"""The model side of a config, shared by training and inference; no TensorFlow here.

A config names a registered model, its overrides and a compute dtype; images arrive as uint8 (or
float) RGB on the 0..255 scale and are normalised with the ImageNet statistics on the device.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from lgvit.data.transforms import MEAN_RGB, STDDEV_RGB
from lgvit import schema
from lgvit.models import create_model

#: The rng streams that a model may draw from in training (NomMer's nominator draws 'gumbel').
RNG_STREAMS = ('dropout', 'drop_path', 'gumbel')


def make_mesh(devices=None) -> jax.sharding.Mesh:
  """A 1-D ``data`` mesh over ``devices`` (default: every device of every process)."""
  devices = jax.devices() if devices is None else list(devices)
  return jax.make_mesh((len(devices),), ('data',), axis_types=(jax.sharding.AxisType.Auto,), devices=devices)


def build_model(config):
  """``create_model(config.model, ...)`` with the config's class count, overrides and compute dtype."""
  kwargs = dict(config.model_kwargs)
  if config.dtype != 'float32':
    kwargs['dtype'] = schema.compute_dtype(config.dtype)
  return create_model(config.model, num_classes=config.num_classes, **kwargs)


def normalize(images: jax.Array, dtype=jnp.float32) -> jax.Array:
  mean, std = jnp.asarray(MEAN_RGB, jnp.float32), jnp.asarray(STDDEV_RGB, jnp.float32)
  return ((images.astype(jnp.float32) - mean) / std).astype(dtype)


def init_variables(model, image_size: int, seed: int):
  """``{'params', 'batch_stats'}`` of ``model`` for square ``image_size`` inputs.

  Jitted: run op by op, the init of a transformer family takes tens of seconds on a CPU (its
  forward pass executes once per op); inside an outer ``jit`` or ``eval_shape`` this is inlined.
  """
  x = jnp.zeros((2, image_size, image_size, 3), jnp.float32)
  rngs = {'params': jax.random.PRNGKey(seed), **{s: jax.random.PRNGKey(0) for s in RNG_STREAMS}}
  variables = jax.jit(functools.partial(model.init, train=False))(rngs, x)
  return {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}


def cross_entropy(logits, targets):
  """Per-example cross-entropy against (soft) target distributions, in float32."""
  return -jnp.sum(targets * jax.nn.log_softmax(logits.astype(jnp.float32)), axis=-1)
