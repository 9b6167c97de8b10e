"""Trained weights for inference: the files of an export dir (``python -m lgvit.export``, docs/export.md).

:func:`export` writes a workdir's weights as an export dir (variables, ``export.json``, and the ``jax`` and/or
``savedmodel`` serialisations of the eval forward); :func:`serialize` / :func:`deserialize` are the
``model.jax`` form, :func:`save_savedmodel` the TF SavedModel (the one place TensorFlow is imported), and
:func:`flatten` / :func:`unflatten` the ``variables.npz`` naming.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Optional, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np

from lgvit import checkpoint, modeling, quiet
from lgvit import workdir as layout
from lgvit.errors import ConfigError
from lgvit.models import kernels

#: What jax.export and jax2tf can lower for.
PLATFORMS = ('cpu', 'cuda', 'rocm', 'tpu')


def flatten(variables: dict[str, Any]) -> dict[str, np.ndarray]:
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables))
  return {'/'.join(k): np.asarray(v) for k, v in flat.items()}


def unflatten(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
  return flax.traverse_util.unflatten_dict({tuple(k.split('/')): v for k, v in arrays.items()})


FORMATS = ('jax', 'savedmodel', 'all')
#: The SavedModel's signatures: name -> input dtype (both take RGB on the 0..255 scale).
SIGNATURES = {'serving_default': 'float32', 'serving_uint8': 'uint8'}


def forward_fn(model):
  """``(variables, uint8/float32 NHWC images on 0..255) -> float32 logits``: the exported eval forward."""

  def forward(variables, images):
    return model.apply(variables, modeling.normalize(images), train=False).astype(jnp.float32)

  return forward


def inference_fn(model, variables):
  """uint8/float32 NHWC images (0..255) -> float32 logits, with the variables baked in."""
  forward = forward_fn(model)
  return lambda images: forward(variables, images)


def _kernels_for(platforms):
  """The kernel path to trace for ``platforms``: the XLA:CPU rewrites only serve a CPU among them."""
  if platforms and 'cpu' not in platforms:
    return kernels.force('native')
  return contextlib.nullcontext()


def serialize(model, variables, image_size: int, dtype=jnp.float32, platforms=None) -> bytes:
  batch = jax.export.symbolic_shape('b')[0]
  spec = jax.ShapeDtypeStruct((batch, image_size, image_size, 3), dtype)
  with _kernels_for(platforms):
    exported = jax.export.export(jax.jit(inference_fn(model, variables)),
                                 platforms=tuple(platforms) if platforms else None)(spec)
  return exported.serialize()


def save_savedmodel(model, variables, image_size: int, directory: str, platforms=None) -> None:
  """Writes a TF SavedModel of the eval forward (signatures in :data:`SIGNATURES`, batch size symbolic).

  jax2tf with native serialisation (the only mode of jax2tf in current JAX): the forward is lowered
  once to StableHLO with a symbolic batch ``b`` and wrapped in an ``XlaCallModule`` op; the weights
  are ``tf.Variable``s that both signatures share (jax2tf's README, "Usage: saved model").
  TensorFlow is imported here only, so inference without TensorFlow stays possible.
  """
  # Both imports load TensorFlow (jax2tf imports it), so they wait for a SavedModel to be asked for.
  tf = quiet.import_tensorflow()
  from jax.experimental import jax2tf

  with _kernels_for(platforms):
    converted = jax2tf.convert(forward_fn(model), polymorphic_shapes=[None, f'(b, {image_size}, {image_size}, 3)'],
                               with_gradient=False,
                               native_serialization_platforms=tuple(platforms) if platforms else None)
    module = tf.Module()
    module.model_variables = tf.nest.map_structure(lambda a: tf.Variable(a, trainable=False), variables)
    functions = {}
    for name, dtype in SIGNATURES.items():
      spec = tf.TensorSpec((None, image_size, image_size, 3), getattr(tf, dtype), name='images')

      def serve(images):
        return {'logits': converted(module.model_variables, tf.cast(images, tf.float32))}

      functions[name] = tf.function(serve, input_signature=[spec], autograph=False).get_concrete_function()
    tf.saved_model.save(module, directory, signatures=functions)


def deserialize(blob: bytes):
  """Returns a callable ``images -> logits`` from a ``model.jax`` file's bytes."""
  return jax.export.deserialize(bytearray(blob)).call


def export(workdir: str, out: str, prefer_ema: bool = True, fmt: str = 'jax',
           platforms: Optional[Sequence[str]] = None) -> dict[str, Any]:
  """Writes the export dir ``out`` of ``workdir``'s latest readable checkpoint (``fmt`` in :data:`FORMATS`,
  lowered for ``platforms``, default this backend); returns what ``export.json`` holds."""
  if fmt not in FORMATS:
    raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
  platforms = list(platforms) if platforms else None
  if platforms and set(platforms) - set(PLATFORMS):
    raise ConfigError(f"--platforms takes a comma-separated subset of {', '.join(PLATFORMS)}, "
                      f"got {','.join(platforms)}")
  config = layout.read_config(workdir)
  variables = checkpoint.load_variables(workdir, prefer_ema=prefer_ema)
  variables = jax.tree_util.tree_map(np.asarray, variables)
  model = modeling.build_model(config)
  os.makedirs(out, exist_ok=True)
  data = config.data
  meta = {'model': config.model, 'num_classes': config.num_classes, 'dataset': data.dataset,
          'image_size': data.image_size, 'crop_pct': data.crop_pct, 'interpolation': data.interpolation,
          'model_kwargs': config.model_kwargs.to_dict(), 'workdir': os.path.abspath(workdir),
          'formats': ['jax', 'savedmodel'] if fmt == 'all' else [fmt],
          'platforms': platforms or [jax.default_backend()]}
  checkpoint.save_variables(os.path.join(out, layout.EXPORT_VARIABLES), variables, meta)
  if fmt in ('jax', 'all'):
    np.savez(os.path.join(out, layout.EXPORT_NPZ), **flatten(variables))
    with open(os.path.join(out, layout.EXPORT_FUNCTION), 'wb') as f:
      f.write(serialize(model, variables, data.image_size, platforms=platforms))
  if fmt in ('savedmodel', 'all'):
    save_savedmodel(model, variables, data.image_size, os.path.join(out, layout.EXPORT_SAVEDMODEL), platforms)
  layout.write_json(os.path.join(out, layout.EXPORT_META), meta)
  return meta
