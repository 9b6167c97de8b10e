"""Images/s of the full training input pipeline (lgvit.data.pipeline.train_dataset) on this CPU.

Builds a synthetic ImageNet-like TFDS dataset (JPEGs of ImageNet's typical size and file size: a
smooth random field plus grain, quality 90), then times whole batches of the training stream:
decode-and-crop (RandomResizedCrop 224), flip, RandAugment, uint8 batching. Normalisation, Mixup/
CutMix and random erasing run on the accelerator and are not part of the host pipeline.

    PYTHONPATH=. python benchmarks/input_pipeline.py [--images 256] [--repeat 8] [--batch 64]

Besides wall-clock images/s it prints the CPU time per image (user + system of this process), which
stays meaningful on a machine shared with other jobs and extrapolates to hosts with more cores.
"""
from __future__ import annotations

import argparse
import io
import os
import platform
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from lgvit import schema  # noqa: E402
from lgvit.data import pipeline  # noqa: E402

# ImageNet train images are mostly 500 x 375 / 375 x 500 (mean ~400 x 350), ~110 KB as JPEG.
SIZES = ((500, 375), (375, 500), (500, 333), (400, 400), (640, 480))


def _synthetic_jpeg(rng: np.random.Generator, width: int, height: int) -> bytes:
  from PIL import Image
  coarse = rng.integers(0, 256, (height // 24 + 2, width // 24 + 2, 3), dtype=np.uint8)
  smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), np.int16)
  grain = rng.normal(0, 12, (height, width, 3))
  buf = io.BytesIO()
  Image.fromarray(np.clip(smooth + grain, 0, 255).astype(np.uint8)).save(buf, format='JPEG', quality=90)
  return buf.getvalue()


class SyntheticJpegs(tfds.core.GeneratorBasedBuilder):
  """``count`` ImageNet-sized JPEGs with 1000 random labels, stored as-is (no re-encoding)."""

  VERSION = tfds.core.Version('1.0.0')

  def __init__(self, *, count: int, **kwargs):
    self._count = count
    super().__init__(**kwargs)

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'image': tfds.features.Image(encoding_format='jpeg'),
        'label': tfds.features.ClassLabel(num_classes=1000),
    }))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {'train': self._generate_examples()}

  def _generate_examples(self):
    rng = np.random.default_rng(0)
    for i in range(self._count):
      width, height = SIZES[i % len(SIZES)]
      yield i, {'image': io.BytesIO(_synthetic_jpeg(rng, width, height)), 'label': int(rng.integers(1000))}


class _Repeated:
  """The builder's records ``times`` over, so that one epoch is long enough to reach steady state."""

  def __init__(self, builder, times: int):
    self._builder, self._times = builder, times

  def as_dataset(self, **kwargs):
    return self._builder.as_dataset(**kwargs).repeat(self._times)


def _config(randaugment: str, interpolation: str, batch: int):
  c = schema.base_config('resnet50')
  c.batch_size = batch
  c.data.interpolation = interpolation
  c.aug.randaugment = randaugment
  c.data.shuffle_buffer = 1024
  return c


def _measure(config, builder, *, examples: int, batch: int) -> tuple[float, float, float]:
  """(steady-state images/s, CPU ms per image, seconds to the first batch) over one epoch."""
  start = time.perf_counter()
  ds = pipeline.train_dataset(config.data, config.aug, builder, batch_size=batch, seed=config.seed, epoch=0,
                              start_step=0, steps_per_epoch=examples // batch, process_index=0, process_count=1)
  batches = pipeline.as_numpy(ds)
  for _ in range(2):  # tracing, function instantiation, shuffle-buffer fill, thread pools
    next(batches)
  first = time.perf_counter() - start
  wall, cpu = time.perf_counter(), time.process_time()
  seen = sum(len(b['image']) for b in batches)
  wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
  return seen / wall, 1e3 * cpu / seen, first


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--images', type=int, default=256, help='distinct synthetic JPEGs')
  parser.add_argument('--repeat', type=int, default=8, help='passes over them in the one timed epoch')
  parser.add_argument('--batch', type=int, default=64)
  args = parser.parse_args()

  with tempfile.TemporaryDirectory(prefix='lgvit_synthetic_jpegs_') as data_dir:
    builder = SyntheticJpegs(count=args.images, data_dir=data_dir)
    builder.download_and_prepare()
    record_bytes = sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(data_dir) for f in files
                       if '.tfrecord' in f)
    examples = args.images * args.repeat
    rows = [
        ('RandomResizedCrop 224 + flip', '', 'bilinear'),
        ('RandomResizedCrop 224 + flip', '', 'bicubic'),
        ('+ RandAugment rand-m9-mstd0.5-inc1 (NomMer/SALG/Swin)', 'rand-m9-mstd0.5-inc1', 'bicubic'),
        ('+ RandAugment cotrand-m15-mstd0.5-n2 (CoTNet)', 'cotrand-m15-mstd0.5-n2', 'bicubic'),
    ]
    print(f'CPU: {os.cpu_count()} cores ({platform.processor() or platform.machine()}), '
          f'load average before: {os.getloadavg()[0]:.1f}; TF {tf.__version__}')
    print(f'{args.images} synthetic JPEGs ({record_bytes / args.images / 1024:.0f} KiB on average) x {args.repeat} = '
          f'{examples} images per configuration, batch {args.batch}; timed after the first 2 batches\n')
    print('| pipeline | interpolation | images/s | CPU ms / image | first 2 batches (s) |')
    print('|---|---|---:|---:|---:|')
    for name, policy, interpolation in rows:
      rate, cpu_ms, first = _measure(_config(policy, interpolation, args.batch), _Repeated(builder, args.repeat),
                                     examples=examples, batch=args.batch)
      print(f'| {name} | {interpolation} | {rate:.0f} | {cpu_ms:.1f} | {first:.1f} |', flush=True)
  print(f'\nload average after: {os.getloadavg()[0]:.1f}')


if __name__ == '__main__':
  main()
