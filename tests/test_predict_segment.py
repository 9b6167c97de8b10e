"""python -m lgvit.predict --segment: the colour-coded class map of a segmentation model (docs/segmentation.md)."""
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from lgvit import modeling, predict, segmentation
from lgvit.data import classes
from lgvit.models import create_model
from conftest import RESNET_TINY, random_variables, save_variables_dir

KWARGS = dict(backbone='resnet50', backbone_kwargs=RESNET_TINY, channels=8, aux_channels=4)


def test_segment_writes_the_colour_coded_mask_of_whole_image_inference(tmp_path, capsys):
  model = create_model('upernet_cotnet50', num_classes=11, **KWARGS)
  variables = random_variables(model, jnp.zeros((1, 64, 64, 3)), scale=0.3)
  src = save_variables_dir(tmp_path / 'vars', 'upernet_cotnet50', KWARGS, variables, num_classes=11, image_size=64,
                           dataset='lgvit_digits_seg')
  pixels = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
  Image.fromarray(pixels).save(tmp_path / 'x.png')
  out = tmp_path / 'mask.png'
  assert predict.main(['--workdir', src, '--segment', str(tmp_path / 'x.png'), '--out', str(out)]) == 0
  mask = np.asarray(Image.open(out))
  # independently: normalise, pad to 64x64, logits x4 to 64x64, crop, argmax, colour
  x = jnp.pad(modeling.normalize(jnp.asarray(pixels)[None]), ((0, 0), (0, 24), (0, 8), (0, 0)))
  logits = jax.image.resize(model.apply(variables, x, train=False), (1, 64, 64, 11), 'bilinear', antialias=False)
  want = segmentation.colorize(np.asarray(logits[0, :40, :56].argmax(-1)), classes.palette_for(11))
  assert mask.shape == (40, 56, 3)
  assert (mask == want).all(-1).mean() > 0.99  # float round-off may flip a near-tie pixel
  printed = capsys.readouterr().out
  assert f'-> {out}:' in printed and '%' in printed


def test_segment_errors_are_one_line(tmp_path, capsys):
  assert predict.main(['--workdir', str(tmp_path), '--segment', str(tmp_path / 'none.png'), '--out', 'm.png']) == 2
  assert 'no such image file' in capsys.readouterr().err
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / 'a.png')
  assert predict.main(['--workdir', str(tmp_path), '--segment', str(tmp_path / 'a.png')]) == 2
  assert '--out is required with --segment' in capsys.readouterr().err


def test_segment_refuses_a_classifier(tmp_path, capsys):
  model = create_model('resnet50', num_classes=10, **RESNET_TINY)
  src = save_variables_dir(tmp_path / 'vars', 'resnet50', RESNET_TINY, random_variables(model, jnp.zeros((1, 32, 32, 3))),
                           num_classes=10, image_size=32, dataset='lgvit_digits')
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / 'a.png')
  assert predict.main(['--workdir', src, '--segment', str(tmp_path / 'a.png'), '--out', str(tmp_path / 'm.png')]) == 2
  assert 'error: resnet50 is not a segmentation model (upernet_*)' in capsys.readouterr().err
  assert not (tmp_path / 'm.png').exists()
