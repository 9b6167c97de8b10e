"""Times one PyTorch model in this process; prints the row as JSON on the last line.

    LGVIT_OFFICIAL_NOMMER=... python benchmarks/official/time_torch.py --model nommer_t --mode train --threads 1

The method of lgvit.benchmark, on the PyTorch side: batch 8, 224x224, float32; inference = 2
warm-ups, then the median of ``--repeats`` forwards under ``inference_mode``; a train step =
forward (train mode: batch statistics, drop-path, Gumbel noise) + cross-entropy + backward +
SGD(0.01, momentum 0.9), 1 warm-up then the median of ``--repeats`` steps. ``--threads 1`` is
``set_num_threads(1)`` (run it under ``taskset -c 0``, as side_by_side.py does). ``--matmul-peak``
times a float32 2048^3 ``torch.mm`` instead (the best of 5, GFLOP/s), the roofline of side_by_side.py.
"""
import argparse
import json
import os
import resource
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_models  # noqa: E402


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
  a = torch.ones(n, n)
  torch.mm(a, a)
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    torch.mm(a, a)
    times.append(time.perf_counter() - t)
  return 2 * n**3 / min(times) / 1e9


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--model', choices=sorted(torch_models.PAIRS))
  parser.add_argument('--matmul-peak', action='store_true')
  parser.add_argument('--mode', choices=('infer', 'train'), default='infer')
  parser.add_argument('--threads', type=int, default=2)
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--size', type=int, default=224)
  parser.add_argument('--warmup', type=int, default=0, help='0: 2 for infer, 1 for train')
  parser.add_argument('--repeats', type=int, default=5)
  args = parser.parse_args()
  if not (args.model or args.matmul_peak):
    parser.error('--model is required (or --matmul-peak)')
  torch.set_num_threads(args.threads)
  torch.set_num_interop_threads(1)
  if args.matmul_peak:
    print(json.dumps({'side': 'torch', 'threads': args.threads, 'matmul_gflop_per_s': round(matmul_peak(), 1)}))
    return
  torch.manual_seed(0)
  t0 = time.perf_counter()
  model = torch_models.build(args.model)
  build_s = time.perf_counter() - t0
  x, y = torch.randn(args.batch, 3, args.size, args.size), torch.arange(args.batch) % 1000
  warmup = args.warmup or (2 if args.mode == 'infer' else 1)
  times = []
  if args.mode == 'infer':
    model.eval()
    with torch.inference_mode():
      for i in range(warmup + args.repeats):
        t = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - t)
  else:
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for i in range(warmup + args.repeats):
      t = time.perf_counter()
      opt.zero_grad(set_to_none=True)
      torch.nn.functional.cross_entropy(model(x), y).backward()
      opt.step()
      times.append(time.perf_counter() - t)
  step_s = statistics.median(times[warmup:])
  print(json.dumps({
      'model': args.model, 'side': 'torch', 'mode': args.mode, 'threads': args.threads, 'batch': args.batch,
      'images_per_s': round(args.batch / step_s, 3), 'step_ms': round(step_s * 1e3, 1),
      'first_step_s': round(times[0], 2), 'build_s': round(build_s, 2),
      'rss_peak_mb': round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
      'params_m': round(sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6, 2),
      'torch': torch.__version__}))


if __name__ == '__main__':
  main()
