"""Machine-speed anchor: a plain PyTorch ResNet-50 timed exactly as docs/official_code.md (CPU baselines) did.

The official PyTorch figures in the issue were measured on another 2-core VM. Timing the same
torchvision-architecture ResNet-50 here, with the same method, gives the factor by which this
machine differs, so lgvit's numbers can be compared with the official ones at equal speed.

    /path/to/torch-venv/bin/python benchmarks/torch_anchor.py --threads 1   # under `taskset -c 0`
    /path/to/torch-venv/bin/python benchmarks/torch_anchor.py --threads 2

Needs only ``torch`` (no torchvision): the network is written out below. Method: batch 8, 224x224,
fp32; eval = 2 warm-ups then the median of 9 runs under inference_mode; train = 1 warm-up then the
median of 5 steps of forward + cross-entropy + backward + SGD(0.01, momentum 0.9).
"""
import argparse
import json
import statistics
import time

import torch
from torch import nn


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, inplanes, planes, stride):
    super().__init__()
    out = planes * self.expansion
    self.conv1, self.bn1 = nn.Conv2d(inplanes, planes, 1, bias=False), nn.BatchNorm2d(planes)
    self.conv2, self.bn2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False), nn.BatchNorm2d(planes)
    self.conv3, self.bn3 = nn.Conv2d(planes, out, 1, bias=False), nn.BatchNorm2d(out)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = None
    if stride != 1 or inplanes != out:
      self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride, bias=False), nn.BatchNorm2d(out))

  def forward(self, x):
    y = self.relu(self.bn1(self.conv1(x)))
    y = self.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return self.relu(y + (x if self.downsample is None else self.downsample(x)))


def resnet50(num_classes=1000):
  layers, inplanes = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
                      nn.MaxPool2d(3, 2, 1)], 64
  for planes, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
    for i in range(blocks):
      layers.append(Bottleneck(inplanes, planes, stride if i == 0 else 1))
      inplanes = planes * 4
  return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2048, num_classes))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--threads', type=int, default=2)
  args = parser.parse_args()
  torch.set_num_threads(args.threads)
  torch.set_num_interop_threads(1)
  torch.manual_seed(0)
  model = resnet50()
  assert sum(p.numel() for p in model.parameters()) == 25_557_032
  x, y = torch.randn(8, 3, 224, 224), torch.arange(8)

  model.eval()
  times = []
  with torch.inference_mode():
    for i in range(11):
      t = time.perf_counter()
      model(x)
      if i >= 2:
        times.append(time.perf_counter() - t)
  eval_ips = 8 / statistics.median(times)

  model.train()
  opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
  times = []
  for i in range(6):
    t = time.perf_counter()
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    if i >= 1:
      times.append(time.perf_counter() - t)
  train_ips = 8 / statistics.median(times)
  print(json.dumps({'model': 'torch ResNet-50', 'threads': args.threads, 'torch': torch.__version__,
                    'eval_images_per_s': round(eval_ips, 2), 'train_images_per_s': round(train_ips, 2)}))


if __name__ == '__main__':
  main()
