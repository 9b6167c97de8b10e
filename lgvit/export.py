"""Export trained weights for inference.

    python -m lgvit.export --workdir W --out DIR

writes, from the latest readable checkpoint of the workdir (EMA weights when the run kept them):

    DIR/variables/         orbax checkpoint of {'params', 'batch_stats'} (no optimizer state);
                           loadable with lgvit.checkpoint.load_variables and config.init_from
    DIR/variables.npz      the same arrays, flat, named by path ('params/stem/conv/kernel', ...)
    DIR/model.jax          jax.export serialisation of the eval forward, symbolic batch size,
                           input uint8 or float32 NHWC (ImageNet-normalised inside), output logits
    DIR/export.json        model name, dataset, config, input size, which weights were exported
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from lgvit import checkpoint, cli, modeling
from lgvit import workdir as layout


def flatten(variables: dict[str, Any]) -> dict[str, np.ndarray]:
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables))
  return {'/'.join(k): np.asarray(v) for k, v in flat.items()}


def unflatten(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
  return flax.traverse_util.unflatten_dict({tuple(k.split('/')): v for k, v in arrays.items()})


def inference_fn(model, variables):
  """uint8/float32 NHWC images (0..255) -> float32 logits, with the variables baked in."""

  def predict(images):
    return model.apply(variables, modeling.normalize(images), train=False).astype(jnp.float32)

  return predict


def serialize(model, variables, image_size: int, dtype=jnp.float32) -> bytes:
  batch = jax.export.symbolic_shape('b')[0]
  spec = jax.ShapeDtypeStruct((batch, image_size, image_size, 3), dtype)
  exported = jax.export.export(jax.jit(inference_fn(model, variables)))(spec)
  return exported.serialize()


def deserialize(blob: bytes):
  """Returns a callable ``images -> logits`` from a ``model.jax`` file's bytes."""
  return jax.export.deserialize(bytearray(blob)).call


def export(workdir: str, out: str, prefer_ema: bool = True) -> dict[str, Any]:
  config = layout.read_config(workdir)
  variables = checkpoint.load_variables(workdir, prefer_ema=prefer_ema)
  variables = jax.tree_util.tree_map(np.asarray, variables)
  model = modeling.build_model(config)
  os.makedirs(out, exist_ok=True)
  data = config.data
  meta = {'model': config.model, 'num_classes': config.num_classes, 'dataset': data.dataset,
          'image_size': data.image_size, 'crop_pct': data.crop_pct, 'interpolation': data.interpolation,
          'model_kwargs': config.model_kwargs.to_dict(), 'workdir': os.path.abspath(workdir)}
  checkpoint.save_variables(os.path.join(out, layout.EXPORT_VARIABLES), variables, meta)
  np.savez(os.path.join(out, layout.EXPORT_NPZ), **flatten(variables))
  with open(os.path.join(out, layout.EXPORT_FUNCTION), 'wb') as f:
    f.write(serialize(model, variables, data.image_size))
  layout.write_json(os.path.join(out, layout.EXPORT_META), meta)
  return meta


def main(argv=None):
  parser = argparse.ArgumentParser(prog='python -m lgvit.export', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--out', required=True)
  parser.add_argument('--raw', action='store_true', help='export the raw weights even if EMA weights exist')
  args = parser.parse_args(argv)
  cli.quiet_logs()

  def run():
    meta = export(args.workdir, args.out, prefer_ema=not args.raw)
    print(f"exported {meta['model']} from {args.workdir} to {args.out}")

  return cli.report_errors(run)


if __name__ == '__main__':
  sys.exit(main())
