"""Shared test fixtures: where the reference data lives, and JAX settings for exact comparisons."""
import os
import pathlib

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get('LGVIT_SHARED', REPO.parent / 'shared'))
#: CI sets CI=true: there a missing reference fixture is an error, never a silent skip.
IN_CI = os.environ.get('CI', '').lower() in ('1', 'true', 'yes')


def _fixture_path(family: str, filename: str) -> pathlib.Path:
  path = SHARED / 'fixtures' / family / filename
  if not path.exists():
    message = f'reference fixture {path} not found (set LGVIT_SHARED to the folder holding fixtures/)'
    if IN_CI:
      pytest.fail(f'{message}; CI=true, so this fails instead of skipping', pytrace=False)
    pytest.skip(message)
  return path


def fixture_npz(family: str, name: str):
  """Loads ``<shared>/fixtures/<family>/<name>.npz`` (skipped if absent; a failure under CI=true)."""
  with np.load(_fixture_path(family, f'{name}.npz')) as z:
    return {k: z[k] for k in z.files}


def fixture_json(family: str, name: str):
  import json
  return json.loads(_fixture_path(family, f'{name}.json').read_text())
