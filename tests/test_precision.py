"""bfloat16 compute trains; a non-finite loss stops the run with the step, and saves nothing."""
import json
import os

import pytest

from configs import resnet50
from lgvit import train


def _demo(data_dir, **overrides):
  c = resnet50.get_config('demo')
  c.unlock()
  c.data.data_dir = data_dir
  for k, v in overrides.items():
    c[k] = v
  return c


def test_bfloat16_demo_trains(digits_dir, tmp_path):
  c = _demo(digits_dir, dtype='bfloat16', num_train_steps=60, log_every_steps=10, eval_every_epochs=100.0)
  result = train.train_and_evaluate(c, str(tmp_path / 'run'), async_checkpoints=False)
  losses = [r['loss'] for r in map(json.loads, open(tmp_path / 'run' / 'metrics.jsonl')) if 'loss' in r]
  assert all(l == l for l in losses) and losses[-1] < losses[0] * 0.8
  assert result['eval_top1'] > 0.3  # well above chance (0.1) after 60 steps


def test_nan_loss_stops_with_the_step_and_saves_nothing(digits_dir, tmp_path):
  c = _demo(digits_dir, num_train_steps=30, log_every_steps=5, checkpoint_every_steps=1000)
  c.schedule.lr, c.schedule.warmup_epochs = 1e6, 0.0
  with pytest.raises(train.NonFiniteLossError, match=r'at step \d+'):
    train.train_and_evaluate(c, str(tmp_path / 'run'), async_checkpoints=False)
  ckpts = tmp_path / 'run' / 'checkpoints'
  assert not ckpts.exists() or not [p for p in os.listdir(ckpts) if p.isdigit()]
