"""Shared test fixtures: where the reference data lives, and JAX settings for exact comparisons."""
import os
import pathlib
import shutil
import tempfile

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get('LGVIT_SHARED', REPO.parent / 'shared'))
#: CI sets CI=true: there a missing reference fixture is an error, never a silent skip.
IN_CI = os.environ.get('CI', '').lower() in ('1', 'true', 'yes')


_CREATED_CACHE = None


def pytest_configure(config):
  """One persistent XLA compilation cache for the whole run: the pytest workers and every main.py
  they start share it, so the many runs of the same demo model compile once. Results are unchanged
  (a cache hit loads the very executable the compiler produced). LGVIT_TEST_COMPILE_CACHE=0 turns it
  off; an inherited JAX_COMPILATION_CACHE_DIR (e.g. in xdist workers) is used as it is."""
  del config
  global _CREATED_CACHE
  if 'JAX_COMPILATION_CACHE_DIR' in os.environ or os.environ.get('LGVIT_TEST_COMPILE_CACHE', '1') == '0':
    return
  _CREATED_CACHE = tempfile.mkdtemp(prefix='lgvit-test-xla-cache-')
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _CREATED_CACHE


def pytest_unconfigure(config):
  del config
  if _CREATED_CACHE:
    shutil.rmtree(_CREATED_CACHE, ignore_errors=True)


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
