"""The notebooks are committed executed, and their outputs are what the committed code prints now.

``notebooks/execute.py`` executes them (nbclient, CPU) and writes them with their outputs; these tests
run the same :func:`execute` in a temporary folder and compare the outputs cell by cell with the
committed ones under :func:`comparable` (round-off and timings masked, image bytes ignored, image counts
kept). A failure means a change altered what a notebook prints: rerun
``PYTHONPATH=. python notebooks/execute.py`` and commit the notebooks.
"""
import importlib.util
import os
import re

import pytest
from conftest import REPO

nbformat = pytest.importorskip('nbformat')
pytest.importorskip('nbclient')
pytest.importorskip('ipykernel')

_spec = importlib.util.spec_from_file_location('notebook_execute', REPO / 'notebooks' / 'execute.py')
executor = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(executor)

FAMILY_PICTURES = {  # the files what_the_models_see.ipynb must write for each family
    'nommer_t': ['nommer/nommer_nomination_stage1_block0.png', 'nommer/nommer_nomination_stage2_block0.png',
                 'nommer/nommer_nominations.png'],
    'salg_t': ['salg/salg_regions_stage1.png'],
    'lesa_resnet50': ['lesa/lesa_unary_binary.png', 'lesa/lesa_binary_maps.png'],
    'cotnet50': ['cotnet/cotnet_static_dynamic.png'],
}
#: What a committed output must not hold: this machine's folders.
MACHINE_PATHS = re.compile(r'/tmp/|/work/|/home/|/root/|/Users/|pytest-of-|lgvit-notebook-')


def committed(name):
  return nbformat.read(executor.NOTEBOOKS / name, as_version=4)


def all_text(notebook) -> str:
  return '\n'.join(o.get('text', '') or o.get('data', {}).get('text/plain', '')
                   for c in notebook.cells for o in c.get('outputs', []))


@pytest.mark.parametrize('name', executor.NAMES)
def test_committed_notebooks_are_executed_without_errors_or_machine_paths(name):
  notebook = committed(name)
  nbformat.validate(notebook)
  code = [c for c in notebook.cells if c.cell_type == 'code']
  assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), 'not executed top to bottom in one run'
  outputs = [o for c in code for o in c.outputs]
  assert not [o for o in outputs if o.output_type == 'error' or o.get('name') == 'stderr']
  assert any('image/png' in o.get('data', {}) for o in outputs), 'no pictures in the committed outputs'
  assert not MACHINE_PATHS.search(all_text(notebook))
  assert not any('execution' in c.metadata for c in code), 'timings in the cell metadata'


def test_comparable_masks_round_off_and_timing_but_not_counts():
  cell = nbformat.v4.new_code_cell('')
  cell.outputs = [nbformat.v4.new_output('stream', name='stdout', text='step 60/60 | loss 0.1234 | ETA 0m03s\n'),
                  nbformat.v4.new_output('stream', name='stdout', text='nommer_t: 22,455,804 parameters, 97.5%\n'),
                  nbformat.v4.new_output('display_data', data={'image/png': 'AAAA', 'text/plain': '<Figure>'})]
  notebook = nbformat.v4.new_notebook(cells=[cell])
  other = nbformat.from_dict(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell('')]))
  other.cells[0].outputs = [
      nbformat.v4.new_output('stream', name='stdout', text='step 60/60 | loss 0.2 | ETA 1m00s\nnommer_t: '
                             '22,455,804 parameters, 3%\n'),
      nbformat.v4.new_output('display_data', data={'image/png': 'BBBB', 'text/plain': '<Figure>'})]
  assert executor.comparable(notebook) == executor.comparable(other)
  other.cells[0].outputs[0]['text'] = other.cells[0].outputs[0]['text'].replace('22,455,804', '22,455,805')
  assert executor.comparable(notebook) != executor.comparable(other)
  other.cells[0].outputs.pop()  # one picture fewer
  assert executor.comparable(notebook) != executor.comparable(other)


@pytest.mark.slow  # executes the whole notebook (1.5-2 min on 2 cores): run before committing a notebook
def test_quickstart_outputs_are_current_and_it_saves_its_pictures(tmp_path):
  notebook = executor.execute('quickstart.ipynb', tmp_path)
  for picture in ('photo_and_crop.png', 'digits_predictions.png'):
    assert (tmp_path / 'out' / 'quickstart' / picture).stat().st_size > 1000, picture
  text = all_text(notebook)
  assert 'nommer_t: 22,455,804 parameters' in text  # the official count (docs/models_nommer.md)
  assert 'validation top-1' in text and '1. ' in text
  assert executor.comparable(notebook) == executor.comparable(committed('quickstart.ipynb')), \
      'quickstart.ipynb prints something else now: rerun PYTHONPATH=. python notebooks/execute.py'


@pytest.mark.slow  # executes the whole notebook (1.5-2 min on 2 cores): run before committing a notebook
def test_what_the_models_see_outputs_are_current_and_it_saves_every_familys_pictures(tmp_path):
  # Untrained demo models (the notebook's default): a training run per family would cost minutes of
  # XLA compiles; the quickstart test runs the same training + lgvit.inference.load path.
  notebook = executor.execute('what_the_models_see.ipynb', tmp_path)
  out = tmp_path / 'out' / 'what_the_models_see'
  for picture in (p for pictures in FAMILY_PICTURES.values() for p in pictures):
    assert (out / picture).stat().st_size > 1000, picture
  assert os.path.exists(out / 'nommer' / 'summary.json')
  assert executor.comparable(notebook) == executor.comparable(committed('what_the_models_see.ipynb')), \
      'what_the_models_see.ipynb prints something else now: rerun PYTHONPATH=. python notebooks/execute.py'
