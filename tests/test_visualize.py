"""`python -m lgvit.visualize`: the PNGs of each family, their sizes, and that they show what was sown.

Small random-weight models of each registered family are saved as a variables directory (what
`python -m lgvit.export` / `lgvit.convert` write); the CLI draws an image through them. The test reads
the sown values itself, with a separate forward of the model on the same crop, and checks them against
the pictures' pixels and summary.json.
"""
import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from lgvit import introspection, modeling, visualize
from lgvit.data import transforms
from lgvit.models import create_model, model_info
from conftest import FAMILY_MODELS, random_variables, save_variables_dir, small_kwargs

SIZE = 32


@pytest.fixture(scope='module')
def photo(tmp_path_factory):
  """A non-square photo (scikit-image's sample cat), so the centre crop has something to do."""
  import skimage.data
  path = tmp_path_factory.mktemp('photo') / 'chelsea.jpg'
  Image.fromarray(skimage.data.chelsea()).save(path, quality=95)
  return str(path)


def run_family(family, tmp_path, photo, seed=0):
  return run_model(FAMILY_MODELS[family], tmp_path, photo, seed)


def run_model(name, tmp_path, photo, seed=0):
  kwargs = small_kwargs(name)
  model = create_model(name, num_classes=10, **kwargs)
  variables = random_variables(model, np.zeros((1, SIZE, SIZE, 3), np.float32), seed=seed, scale=0.5)
  source = save_variables_dir(tmp_path / 'variables', name, kwargs, variables)
  out = tmp_path / 'pictures'
  assert visualize.main(['--workdir', source, '--image', photo, '--out', str(out)]) == 0
  # The sown values, read independently of lgvit.introspection / lgvit.inference. The dir's meta names no
  # crop_pct/interpolation, so the registry's apply.
  info = model_info(name)
  with open(photo, 'rb') as f:
    crop = transforms.eval_image(f.read(), SIZE, info.crop_pct, info.interpolation)
  forward = jax.jit(lambda v, x: model.apply(v, modeling.normalize(x), train=False, mutable=['intermediates'])[1])
  state = forward(variables, crop[None])
  with open(out / 'summary.json') as f:
    summary = json.load(f)
  return out, crop, state['intermediates'], summary


def png(path):
  return np.asarray(Image.open(path).convert('RGB'))


def test_nommer_maps_show_the_sown_nominations(tmp_path, photo):
  out, crop, inter, summary = run_family('nommer', tmp_path, photo)
  np.testing.assert_array_equal(png(out / 'input_crop.png'), crop)
  panel = introspection.panel_size(SIZE)
  assert panel >= introspection.MIN_PANEL and panel % SIZE == 0
  nominations = {k: np.asarray(v['context']['nomination'][0][0]) for k, v in inter.items() if 'context' in v}
  assert sorted(nominations) == ['stage1_block0', 'stage2_block0']
  seen = set()
  for block, nom in nominations.items():
    stage, index = block[len('stage')], int(block.split('_block')[1])
    picture = png(out / f'nommer_nomination_stage{stage}_block{index}.png')
    assert picture.shape == (panel, 2 * panel + introspection.PANEL_GAP, 3)
    flat_map = picture[:, panel + introspection.PANEL_GAP:]
    over = picture[:, :panel]
    rows, cols = introspection.pixel_of_token(panel, nom.shape[0]), introspection.pixel_of_token(panel, nom.shape[1])
    for i, y in enumerate(rows):
      for j, x in enumerate(cols):
        # Red = CNN (0), green = local (1), blue = global (2): the paper's Fig. 4 colours.
        assert tuple(flat_map[y, x]) == ((255, 0, 0), (0, 255, 0), (0, 0, 255))[nom[i, j]], (block, i, j)
        assert np.argmax(over[y, x]) == nom[i, j], (block, i, j)  # grey crop + map: the hue is the map's
    seen |= set(np.unique(nom).tolist())
    label = f'Layer {stage}_{index + 1}'
    shares = np.bincount(nom.ravel(), minlength=3) / nom.size
    np.testing.assert_allclose([summary['nomination_shares'][label][n] for n in ('CNN', 'local', 'global')], shares)
  assert len(seen) >= 2, 'the random model nominated a single branch everywhere; the colour check would be weak'
  grid = Image.open(out / 'nommer_nominations.png')
  assert grid.width >= 300 and grid.height >= 400


def test_lesa_weights_are_the_sown_gates(tmp_path, photo):
  out, _, inter, summary = run_family('lesa', tmp_path, photo)
  shares = introspection.sown(inter, 'unary_share')
  assert len(shares) >= 2
  for path, value in shares:
    layer = '/'.join(path)
    np.testing.assert_allclose(summary['unary_binary'][layer]['unary'], float(value), rtol=1e-5)
    binary = dict(introspection.sown(inter, 'binary_share'))[path]
    np.testing.assert_allclose(summary['unary_binary'][layer]['binary'], float(binary), rtol=1e-5)
  for name in ('lesa_unary_binary.png', 'lesa_binary_maps.png'):
    w, h = Image.open(out / name).size
    assert w >= 400 and h >= 250


def test_lesa_weights_are_the_definitions_of_tables_1_and_2(tmp_path, photo, capsys):
  """SA: the unary weight is the softmax diagonal S[i,i] (Tab. 1), read here from the sown attention
  with loops; LESA: the printed line is summary.json's mean; static LESA: 0.5 each, no maps."""
  out, _, inter, summary = run_model('sa_resnet50', tmp_path / 'sa', photo)
  attention = introspection.sown(inter, 'attention')  # (heads, L, L) of the one image
  assert [p for p, _ in attention] == [('layer3_1', 'conv2', 'binary'), ('layer4_0', 'conv2', 'binary')]
  diagonals = []
  for path, a in attention:
    heads, length, _ = a.shape
    unary = sum(float(a[g, i, i]) for g in range(heads) for i in range(length)) / (heads * length)
    layer = '/'.join(path[:-1])
    np.testing.assert_allclose(summary['unary_binary'][layer]['unary'], unary, rtol=1e-5)
    np.testing.assert_allclose(summary['unary_binary'][layer]['binary'], 1 - unary, rtol=1e-5)
    diagonals.append(unary)
  np.testing.assert_allclose(summary['mean_unary'], np.mean(diagonals), rtol=1e-5)
  assert summary['variant'] == 'sa' and summary['paper_mean_unary'] == 0.02  # Tab. 2, trained SA-R50
  assert f"unary / binary weight: {summary['mean_unary']:.1%} / {summary['mean_binary']:.1%}" in capsys.readouterr().out
  for name in ('lesa_unary_binary.png', 'lesa_binary_maps.png'):
    w, h = Image.open(out / name).size
    assert w >= 400 and h >= 250

  _, _, inter, summary = run_model('lesa_resnet50', tmp_path / 'lesa', photo)
  printed = capsys.readouterr().out
  assert f"unary / binary weight: {summary['mean_unary']:.1%} / {summary['mean_binary']:.1%}" in printed
  assert '1/(1+ω)' in printed and summary['paper_mean_unary'] == 0.67

  out, _, _, summary = run_model('static_lesa_resnet50', tmp_path / 'static', photo)
  assert summary['mean_unary'] == summary['mean_binary'] == 0.5 and len(summary['unary_binary']) == 2
  assert (out / 'lesa_unary_binary.png').exists() and not (out / 'lesa_binary_maps.png').exists()


def test_aa_has_no_weights_to_draw(tmp_path, photo, capsys):
  name = 'aa_resnet50'
  kwargs = small_kwargs(name)
  model = create_model(name, num_classes=10, **kwargs)
  source = save_variables_dir(tmp_path / 'v', name, kwargs,
                              random_variables(model, np.zeros((1, SIZE, SIZE, 3), np.float32)))
  assert visualize.main(['--workdir', source, '--image', photo, '--out', str(tmp_path / 'o')]) == 2
  assert 'Attention Augmentation concatenates conv and attention channels' in capsys.readouterr().err


def test_family_without_pictures_is_a_clear_error(tmp_path, photo, capsys):
  name = FAMILY_MODELS['resnet']
  kwargs = small_kwargs(name)
  model = create_model(name, num_classes=10, **kwargs)
  source = save_variables_dir(tmp_path / 'v', name, kwargs,
                              random_variables(model, np.zeros((1, SIZE, SIZE, 3), np.float32)))
  assert visualize.main(['--workdir', source, '--image', photo, '--out', str(tmp_path / 'o')]) == 2
  err = capsys.readouterr().err
  assert 'resnet50 (resnet) sows nothing to draw' in err and 'nommer' in err
  assert not os.path.exists(tmp_path / 'o')


def test_missing_image_is_a_clear_error(tmp_path, capsys):
  assert visualize.main(['--workdir', str(tmp_path), '--image', str(tmp_path / 'no.jpg'), '--out',
                         str(tmp_path / 'o')]) == 2
  assert 'no such image file' in capsys.readouterr().err


def test_token_pixel_geometry_round_trips():
  for panel, grid in ((224, 8), (224, 7), (230, 9), (64, 64)):
    np.testing.assert_array_equal(introspection.token_of_pixel(panel, grid)[introspection.pixel_of_token(panel, grid)],
                                  np.arange(grid))


def test_cotnet_weights_are_the_sown_fusion_weights(tmp_path, photo):
  out, _, inter, summary = run_family('cotnet', tmp_path, photo)
  weights = introspection.sown(inter, 'fusion_weights')  # (C, 2): [..., 0] dynamic K2, [..., 1] static K1
  assert len(weights) == 4  # one CoT layer per stage in the demo model
  for path, w in weights:
    stage = int(path[0][len('layer')])
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(summary['per_layer']['/'.join(path)]['static'], w[:, 1].mean(), rtol=1e-5)
    np.testing.assert_allclose(summary['per_stage'][f'stage{stage}']['dynamic'], w[:, 0].mean(), rtol=1e-5)
  w, h = Image.open(out / 'cotnet_static_dynamic.png').size
  assert w >= 600 and h >= 300


def test_salg_maps_show_the_sown_regions(tmp_path, photo):
  out, crop, inter, summary = run_family('salg', tmp_path, photo)
  np.testing.assert_array_equal(png(out / 'input_crop.png'), crop)
  panel = introspection.panel_size(SIZE)
  region_size = small_kwargs(FAMILY_MODELS['salg'])['region_size']
  maps = introspection.sown(inter, 'regions')
  assert [path for path, _ in maps] == [('stage1',), ('stage2',), ('stage3',)]
  for (stage,), regions in maps:
    picture = png(out / f'salg_regions_{stage}.png')
    assert picture.shape == (panel, 2 * panel + introspection.PANEL_GAP, 3)
    flat_map = picture[:, panel + introspection.PANEL_GAP:]
    h, w = regions.shape
    grid_width = -(-w // region_size)
    rows, cols = introspection.pixel_of_token(panel, h), introspection.pixel_of_token(panel, w)
    for i, y in enumerate(rows):
      for j, x in enumerate(cols):
        r, c = divmod(int(regions[i, j]), grid_width)
        assert tuple(flat_map[y, x]) == tuple(introspection.REGION_COLORS[(r % 3) * 3 + c % 3]), (stage, i, j)
        if j + 1 < w:  # the token's last pixel column is a white border iff the right neighbour differs
          last = np.flatnonzero(introspection.token_of_pixel(panel, w) == j)[-1]
          is_border = tuple(flat_map[y, last]) == (255, 255, 255)
          assert is_border == (regions[i, j] != regions[i, j + 1]), (stage, i, j)
    assert summary['regions'][stage]['regions'] == len(np.unique(regions))
  assert len(np.unique(maps[0][1])) > 1, 'a single region in stage 1: the colour check would be weak'


def test_neighbouring_regions_never_share_a_colour():
  grid_width = 7
  regions = np.arange(5 * grid_width)
  colors = introspection.region_colors(regions, grid_width)
  for a in regions:
    for b in regions:
      (ra, ca), (rb, cb) = divmod(a, grid_width), divmod(b, grid_width)
      if a != b and abs(ra - rb) <= 1 and abs(ca - cb) <= 1:
        assert tuple(colors[a]) != tuple(colors[b])
