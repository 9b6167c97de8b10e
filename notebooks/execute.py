"""Runs the notebooks top to bottom and commits their outputs, so that GitHub shows them executed.

    PYTHONPATH=. python notebooks/execute.py                       # rewrites both notebooks in place
    PYTHONPATH=. python notebooks/execute.py quickstart.ipynb

Each notebook runs as its defaults say (quickstart: a 60-step ResNet-50 demo on the digits;
what_the_models_see: the four families' demo models untrained, seed 0) in a kernel of this interpreter
with JAX on the CPU (the outputs are CPU numbers, and an installed libtpu's no-TPU lines stay out),
with its pictures and the TFDS data in a fresh temporary folder. The outputs are then made machine-
independent (:func:`scrub`: those folders become ``<OUT>`` and ``~/tensorflow_datasets``; no timings in
the cell metadata). tests/test_notebooks.py runs the same :func:`execute` and compares its outputs
with the committed ones under :func:`comparable` (numbers with a decimal point, percentages and ETAs
masked: round-off and timing move them; image bytes ignored, image counts kept).
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import pathlib
import re
import sys
import tempfile
from typing import Iterator

NOTEBOOKS = pathlib.Path(__file__).resolve().parent
NAMES = ('quickstart.ipynb', 'what_the_models_see.ipynb')
KERNEL = 'lgvit-notebooks'
#: What the committed outputs show in place of this run's temporary folders.
OUT_PLACEHOLDER = '<OUT>'
DATA_PLACEHOLDER = '~/tensorflow_datasets'


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
  saved = {k: os.environ.get(k) for k in values}
  os.environ.update(values)
  try:
    yield
  finally:
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v


def execute(name: str, workspace: pathlib.Path, **env: str):
  """``notebooks/<name>`` executed in a kernel of ``sys.executable``; its files go under ``workspace``.

  ``env`` adds environment variables for the kernel (e.g. ``LGVIT_NOTEBOOK_STEPS``). Returns the
  executed notebook with its outputs scrubbed (:func:`scrub`).
  """
  import nbclient
  import nbformat
  spec = workspace / 'jupyter' / 'kernels' / KERNEL
  spec.mkdir(parents=True, exist_ok=True)
  (spec / 'kernel.json').write_text(json.dumps({
      'argv': [sys.executable, '-m', 'ipykernel_launcher', '-f', '{connection_file}'],
      'display_name': 'lgvit notebooks', 'language': 'python'}))
  out, data = workspace / 'out', workspace / 'tfds'
  notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
  kernelspec = copy.deepcopy(notebook.metadata.get('kernelspec'))
  with _environment(JUPYTER_PATH=str(workspace / 'jupyter'), LGVIT_NOTEBOOK_OUT=str(out),
                    LGVIT_NOTEBOOK_DATA_DIR=str(data), MPLBACKEND='module://matplotlib_inline.backend_inline',
                    PYTHONPATH=str(NOTEBOOKS.parent), JAX_PLATFORMS='cpu',
                    XLA_FLAGS='',  # XLA's defaults, as a user's kernel has (not the test suite's flags)
                    **env):
    client = nbclient.NotebookClient(notebook, kernel_name=KERNEL, timeout=1800, record_timing=False,
                                     resources={'metadata': {'path': str(NOTEBOOKS)}})
    client.execute()
  if kernelspec is not None:
    notebook.metadata['kernelspec'] = kernelspec  # the committed file names the usual kernel, not ours
  return scrub(notebook, {str(out): OUT_PLACEHOLDER, str(data): DATA_PLACEHOLDER})


def scrub(notebook, replacements: dict[str, str]):
  """Replaces this machine's folders in every text output (longest first)."""
  order = sorted(replacements, key=len, reverse=True)

  def clean(text: str) -> str:
    for old in order:
      text = text.replace(old, replacements[old])
    return text

  for cell in notebook.cells:
    for output in cell.get('outputs', []):
      if 'text' in output:
        output['text'] = clean(output['text'])
      for mime, value in output.get('data', {}).items():
        if mime.startswith('text/') and isinstance(value, str):
          output['data'][mime] = clean(value)
  return notebook


_MASKS = (
    (re.compile(r'ETA \S+'), 'ETA #'),
    (re.compile(r' *\d+(?:\.\d+)+%?| *\d+%'), ' #'),  # 0.9750, 97.5%, 0.10.2 (a version), 12%, with the
    # padding of right-aligned columns: '100.0%' and ' 99.9%' differ by round-off only
    # Top-5 lines below the first: near-tied low probabilities swap places with round-off (another
    # CPU, other XLA flags); the top-1 class stays compared.
    (re.compile(r'^( +[2-5]\. +# +).*$', re.M), r'\1(rank masked)'),
)


def _mask(text: str) -> str:
  for pattern, replacement in _MASKS:
    text = pattern.sub(replacement, text)
  return text


def comparable(notebook) -> list[list[tuple[str, str]]]:
  """Per code cell, its outputs as (kind, masked text): streams by name, displays by their MIME types.

  Integers stay (parameter counts, steps, class labels); numbers with a decimal point, percentages and
  ETAs are masked. Streams are joined per name (how a kernel splits one print into messages varies).
  """
  cells = []
  for cell in notebook.cells:
    if cell.cell_type != 'code':
      continue
    streams: dict[str, str] = {}
    rows = []
    for output in cell.get('outputs', []):
      if output['output_type'] == 'stream':
        streams[output['name']] = streams.get(output['name'], '') + output['text']
      elif output['output_type'] == 'error':
        rows.append(('error', f"{output['ename']}: {output['evalue']}"))
      else:
        data = output.get('data', {})
        rows.append((output['output_type'], ','.join(sorted(data))))
        if 'text/plain' in data and 'image/png' not in data:
          rows.append(('text/plain', _mask(data['text/plain'])))
    cells.append([(f'stream:{n}', _mask(t)) for n, t in sorted(streams.items())] + rows)
  return cells


def main(argv: list[str]) -> int:
  import nbformat
  names = argv or list(NAMES)
  for name in names:
    with tempfile.TemporaryDirectory(prefix='lgvit-notebook-') as tmp:
      notebook = execute(name, pathlib.Path(tmp))
    for cell in notebook.cells:
      stderr = [o['text'] for o in cell.get('outputs', []) if o.get('name') == 'stderr']
      if stderr:
        print(f'{name}: a cell wrote to stderr (fix before committing):\n{"".join(stderr)}', file=sys.stderr)
        return 1
    nbformat.validate(notebook)
    nbformat.write(notebook, NOTEBOOKS / name)
    size = (NOTEBOOKS / name).stat().st_size
    print(f'{NOTEBOOKS / name}: executed, {size / 1000:.0f} KB')
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
