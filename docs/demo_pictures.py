"""What docs/make_segmentation_demo.py and docs/make_detection_demo.py share: train the demo (or find it
finished), save the picture's rows upscaled, read the run's last evaluation."""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def train(config: str, workdir: str, data_dir: str | None) -> None:
  """``main.py --config=config`` into ``workdir`` (resumes; a finished workdir returns at once)."""
  data = [f'--config.data.data_dir={data_dir}'] if data_dir else []
  subprocess.run([sys.executable, 'main.py', f'--config={config}', f'--workdir={workdir}', *data], cwd=ROOT,
                 check=True)


def save(rows, out: str, upscale: int = 3) -> None:
  """The uint8 ``rows`` stacked top to bottom, each pixel an ``upscale`` x ``upscale`` block, as a PNG."""
  import numpy as np
  from PIL import Image
  picture = np.concatenate(rows, axis=0).repeat(upscale, 0).repeat(upscale, 1)
  os.makedirs(os.path.dirname(out), exist_ok=True)
  Image.fromarray(picture).save(out, optimize=True)


def last_eval(workdir: str, metric: str) -> dict:
  """The last metrics.jsonl row of ``workdir`` that holds ``metric``."""
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [row for row in map(json.loads, f) if metric in row][-1]
