"""Shared test fixtures: where the reference data lives, and JAX settings for exact comparisons."""
import os
import pathlib

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get('LGVIT_SHARED', REPO.parent / 'shared'))


def fixture_npz(family: str, name: str):
  """Loads ``shared/fixtures/<family>/<name>.npz`` (skips the test if the shared folder is absent)."""
  path = SHARED / 'fixtures' / family / f'{name}.npz'
  if not path.exists():
    pytest.skip(f'reference fixture {path} not found (set LGVIT_SHARED)')
  with np.load(path) as z:
    return {k: z[k] for k in z.files}


def fixture_json(family: str, name: str):
  import json
  path = SHARED / 'fixtures' / family / f'{name}.json'
  if not path.exists():
    pytest.skip(f'reference fixture {path} not found (set LGVIT_SHARED)')
  return json.loads(path.read_text())
