"""The notebooks run top to bottom (nbclient, CPU) and save their pictures.

The committed notebooks must have their outputs cleared. Each notebook writes its PNGs under
``$LGVIT_NOTEBOOK_OUT/<notebook>/``; this test points that at a temporary directory and checks the files.
"""
import json
import os
import pathlib
import sys

import pytest

nbformat = pytest.importorskip('nbformat')
nbclient = pytest.importorskip('nbclient')
pytest.importorskip('ipykernel')


NOTEBOOKS = pathlib.Path(__file__).resolve().parents[1] / 'notebooks'
FAMILY_PICTURES = {  # the files what_the_models_see.ipynb must write for each family
    'nommer_t': ['nommer/nommer_nomination_stage1_block0.png', 'nommer/nommer_nomination_stage2_block0.png',
                 'nommer/nommer_nominations.png'],
    'salg_t': ['salg/salg_regions_stage1.png'],
    'lesa_resnet50': ['lesa/lesa_unary_binary.png', 'lesa/lesa_binary_maps.png'],
    'cotnet50': ['cotnet/cotnet_static_dynamic.png'],
}


@pytest.fixture
def kernel(tmp_path, monkeypatch):
  """A kernel spec that runs this interpreter (``python`` on PATH may be another one)."""
  spec = tmp_path / 'jupyter' / 'kernels' / 'lgvit-test'
  spec.mkdir(parents=True)
  (spec / 'kernel.json').write_text(json.dumps({
      'argv': [sys.executable, '-m', 'ipykernel_launcher', '-f', '{connection_file}'],
      'display_name': 'lgvit test', 'language': 'python'}))
  monkeypatch.setenv('JUPYTER_PATH', str(tmp_path / 'jupyter'))
  monkeypatch.setenv('LGVIT_NOTEBOOK_OUT', str(tmp_path / 'out'))
  monkeypatch.setenv('LGVIT_NOTEBOOK_DATA_DIR', str(tmp_path / 'tfds'))
  monkeypatch.setenv('MPLBACKEND', 'Agg')
  return 'lgvit-test'


def execute(name, kernel_name, monkeypatch, steps):
  monkeypatch.setenv('LGVIT_NOTEBOOK_STEPS', str(steps))
  notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
  client = nbclient.NotebookClient(notebook, kernel_name=kernel_name, timeout=900,
                                   resources={'metadata': {'path': str(NOTEBOOKS)}})
  client.execute()
  return notebook


@pytest.mark.parametrize('name', ['quickstart.ipynb', 'what_the_models_see.ipynb'])
def test_committed_notebooks_have_no_outputs(name):
  notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
  nbformat.validate(notebook)
  code = [c for c in notebook.cells if c.cell_type == 'code']
  assert code and all(not c.outputs and c.execution_count is None for c in code)


def test_quickstart_runs_and_saves_its_pictures(kernel, tmp_path, monkeypatch):
  notebook = execute('quickstart.ipynb', kernel, monkeypatch, steps=1)
  out = tmp_path / 'out' / 'quickstart'
  for picture in ('photo_and_crop.png', 'digits_predictions.png'):
    assert (out / picture).stat().st_size > 1000, picture
  text = '\n'.join(o.get('text', '') for c in notebook.cells for o in c.get('outputs', []))
  assert 'nommer_t: 22,455,804 parameters' in text  # the official count (docs/models_nommer.md)
  assert 'validation top-1' in text and '1. ' in text


def test_what_the_models_see_runs_and_saves_every_familys_pictures(kernel, tmp_path, monkeypatch):
  # Untrained demo models (TRAIN_STEPS = 0): a 1-step run per family would cost minutes of XLA compiles;
  # the quickstart test runs the same training + lgvit.predict.load path.
  execute('what_the_models_see.ipynb', kernel, monkeypatch, steps=0)
  out = tmp_path / 'out' / 'what_the_models_see'
  for picture in (p for pictures in FAMILY_PICTURES.values() for p in pictures):
    assert (out / picture).stat().st_size > 1000, picture
  assert os.path.exists(out / 'nommer' / 'summary.json')
