"""CoT local aggregation, fwd+bwd, compiled for one v5e chip on this host: which form suits a TPU.

    PYTHONPATH=. python benchmarks/tpu_cot_aggregation.py [--batch 32] [--size 56] [--channels 128]

Forms: the CPU path's custom VJP (``kernels.force('cpu')``), autodiff through the same shifted
slices (the native path), a 4-D variant whose per-tap weights are tiled over the channels, and the
explicit 9x unfold (``lax.conv_general_dilated_patches``, the official code's form). Prints XLA's
temporary bytes and bytes accessed for each (bf16 inputs, a float32 probe as the loss weight).
"""
import argparse
import time

from lgvit import ahead_of_time


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--size', type=int, default=56)
  parser.add_argument('--channels', type=int, default=128)
  args = parser.parse_args()
  ahead_of_time.check_libtpu()
  device = ahead_of_time.topology_devices('v5e:2x2')[0]
  import jax
  import jax.numpy as jnp
  from lgvit.models import kernels
  from lgvit.models.cotnet import local_aggregation, local_aggregation_patches

  def tiled_4d(value, weights):
    b, h, w, c = value.shape
    maps = weights.reshape(b, h, w, c // 8, 9)
    padded = jnp.pad(value, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = 0
    for t, dy, dx in kernels.window_taps(3):
      out = out + padded[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w] * jnp.tile(maps[..., t], (1, 1, 1, 8))
    return out

  def forced(path):
    def fn(value, weights):
      with kernels.force(path):
        return local_aggregation(value, weights)
    return fn

  forms = {'cpu path (custom VJP)': forced('cpu'), 'native path (autodiff of the slices)': forced('native'),
           '4-D, tiled weights': tiled_4d, '9x unfold (patches)': local_aggregation_patches}
  sharding = jax.sharding.SingleDeviceSharding(device)
  b, s, c = args.batch, args.size, args.channels
  shapes = [((b, s, s, c), jnp.bfloat16), ((b, s, s, c // 8 * 9), jnp.bfloat16), ((b, s, s, c), jnp.float32)]
  abstract = [jax.ShapeDtypeStruct(shape, dtype, sharding=sharding) for shape, dtype in shapes]
  print(f'{device.device_kind}, value {abstract[0].shape} bf16, fwd+bwd')
  print('| form | temp MiB | MB accessed | compile s |\n|---|---|---|---|')
  for name, fn in forms.items():
    step = jax.jit(jax.grad(lambda v, a, p, fn=fn: jnp.sum(fn(v, a).astype(jnp.float32) * p), (0, 1)))
    t0 = time.perf_counter()
    compiled = step.lower(*abstract).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    print(f'| {name} | {compiled.memory_analysis().temp_size_in_bytes / 2**20:.0f} | '
          f'{cost["bytes accessed"] / 1e6:.0f} | {time.perf_counter() - t0:.0f} |', flush=True)


if __name__ == '__main__':
  main()
