"""docs/gallery.md shows every picture docs/make_gallery.py made, each a small PNG, and the README links it."""
import importlib.util
import json
import re
import subprocess
import sys

import pytest
from conftest import REPO, subprocess_env
from PIL import Image

DOCS = REPO / 'docs'
_spec = importlib.util.spec_from_file_location('make_gallery', DOCS / 'make_gallery.py')
make_gallery = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_gallery)

#: The papers' pictures the gallery must hold, per family (file names of lgvit.visualize).
REQUIRED = {
    'nommer': ['nommer_nominations.png', 'nommer_nomination_stage1_block0.png'],
    'salg': ['salg_regions_stage1.png'],
    'lesa': ['lesa_unary_binary.png', 'lesa_binary_maps.png'],
    'cotnet': ['cotnet_static_dynamic.png'],
}


def linked_images(markdown: str) -> list[str]:
  return re.findall(r'!\[[^\]]*\]\(([^)]+\.png)\)', markdown)


def test_the_gallery_links_every_png_it_has_and_each_is_small():
  page = (DOCS / 'gallery.md').read_text()
  links = linked_images(page)
  pngs = sorted(p.relative_to(DOCS).as_posix() for p in (DOCS / 'gallery').rglob('*.png'))
  assert sorted(links) == pngs
  for family, names in REQUIRED.items():
    for name in names:
      assert f'gallery/{family}/{name}' in links, (family, name)
  for png in pngs:
    path = DOCS / png
    assert path.stat().st_size < make_gallery.MAX_PNG_BYTES, png
    with Image.open(path) as image:
      assert image.format == 'PNG' and min(image.size) >= 100, png


def test_the_gallery_captions_carry_the_numbers_of_its_summaries():
  page = (DOCS / 'gallery.md').read_text()
  for family, variant, _ in make_gallery.FAMILIES:
    summary = json.loads((DOCS / 'gallery' / family / 'summary.json').read_text())
    assert summary['model'] == variant
    assert make_gallery.numbers(family, summary) in page
    if summary['steps']:
      assert f"trained for {summary['steps']} steps" in page and f"{summary['eval_top1']:.3f}" in page


def test_numbers_are_read_from_the_summary():
  lesa = {'mean_unary': 0.676, 'mean_binary': 0.324}
  assert make_gallery.numbers('lesa', lesa).startswith('Mean weights over the LESA layers: unary 67.6%, binary 32.4%')
  nommer = {'nomination_shares': {'Layer 1_1': {'CNN': 0.5, 'local': 0.25, 'global': 0.25}}}
  assert make_gallery.numbers('nommer', nommer) == 'Nominations: Layer 1_1 CNN 50%, local 25%, global 25%.'


def test_the_readme_links_the_gallery_and_the_launch_guide():
  readme = (REPO / 'README.md').read_text()
  assert '(docs/gallery.md)' in readme and '(docs/launch.md)' in readme


@pytest.mark.slow  # compiles a demo model's forward (about a minute on 2 busy cores)
def test_make_gallery_draws_an_untrained_family_into_any_folder(tmp_path):
  result = subprocess.run([sys.executable, 'docs/make_gallery.py', '--steps', '0', '--families', 'lesa',
                           '--out', str(tmp_path / 'g')], cwd=REPO, env=subprocess_env(), capture_output=True,
                          text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-2000:]
  page = (tmp_path / 'g.md').read_text()
  assert sorted(linked_images(page)) == sorted(
      f'g/lesa/{n}' for n in ('input_crop.png', 'lesa_unary_binary.png', 'lesa_binary_maps.png'))
  assert 'untrained (seed 0)' in page
