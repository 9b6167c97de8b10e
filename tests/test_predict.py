"""`python -m lgvit.predict`: top-5 with class names from a training workdir, an export and a variables dir."""
import io
import re

import jax
import numpy as np
import pytest
from PIL import Image

from configs import resnet50
from lgvit import checkpoint, export, modeling, predict, train
from lgvit.data import classes, pipeline, transforms
from lgvit.data.digits import to_rgb32
from lgvit.models import create_model
from conftest import RESNET_TINY, random_variables, save_variables_dir

LINE = re.compile(r'^\s+(\d)\.\s+([\d.]+)%\s+(.+?)\s+\(label (\d+)\)$')


def parse(stdout):
  """{image: [(label, name, percent), ...]} from the CLI output."""
  result, current = {}, None
  for line in stdout.splitlines():
    m = LINE.match(line)
    if m:
      result[current].append((int(m.group(4)), m.group(3), float(m.group(2))))
    elif line and not line.startswith(' ') and ' from ' not in line:
      current = line
      result[current] = []
  return result


def top5(logits):
  p = np.exp(logits - logits.max())
  p /= p.sum()
  order = np.argsort(-p, kind='stable')[:5]
  return [(int(i), round(100 * float(p[i]), 2)) for i in order]


@pytest.fixture(scope='module')
def digits_run(tmp_path_factory):
  """A 1-step training workdir of a tiny ResNet on the digits, and three digit images as PNG files."""
  root = tmp_path_factory.mktemp('predict')
  c = resnet50.get_config('demo')
  c.unlock()
  c.data.data_dir = str(root / 'tfds')
  c.model_kwargs.update(RESNET_TINY)
  c.num_train_steps, c.log_every_steps, c.checkpoint_every_steps = 1, 1, 1
  workdir = str(root / 'run')
  train.train_and_evaluate(c, workdir, async_checkpoints=False)
  from sklearn.datasets import load_digits
  digits = load_digits()
  images = []
  for i in range(3):
    path = str(root / f'digit{i}.png')
    Image.fromarray(to_rgb32(digits.images[i])).save(path)
    images.append(path)
  return c, workdir, images


def expected_top5(config, variables, image_path):
  model = modeling.build_model(config)
  with open(image_path, 'rb') as f:
    crop = pipeline.eval_image(f.read(), config.data.image_size, config.data.crop_pct, config.data.interpolation)
  logits = jax.jit(lambda v, x: model.apply(v, modeling.normalize(x), train=False))(variables, crop[None])
  return top5(np.asarray(logits[0]))


def test_workdir_and_export_print_the_models_top5_with_digit_names(digits_run, tmp_path, capsys):
  config, workdir, images = digits_run
  assert predict.main(['--workdir', workdir, *images]) == 0
  from_workdir = parse(capsys.readouterr().out)
  assert list(from_workdir) == images
  variables = checkpoint.load_variables(workdir)
  for image in images:
    rows = from_workdir[image]
    assert all(name == str(label) for label, name, _ in rows)  # '0'..'9'
    expected = expected_top5(config, variables, image)
    assert [label for label, _, _ in rows] == [label for label, _ in expected]
    assert [pct for _, _, pct in rows] == pytest.approx([pct for _, pct in expected], abs=0.006)
  out = str(tmp_path / 'export')
  assert export.main(['--workdir', workdir, '--out', out]) == 0
  capsys.readouterr()
  assert predict.main(['--workdir', out, *images]) == 0
  assert parse(capsys.readouterr().out) == from_workdir


def test_eval_image_is_the_eval_pipelines_transform(digits_run):
  """One image through eval_image == the same record through eval_dataset (crop 24 of 27, bicubic)."""
  config, _, _ = digits_run
  c = config.copy_and_resolve_references()
  c.unlock()
  c.data.image_size, c.data.crop_pct, c.data.interpolation = 24, 0.875, 'bicubic'
  builder = pipeline.get_builder(c.data.dataset, c.data.data_dir)
  ds, _ = pipeline.eval_dataset(c.data, builder, local_batch=4, process_index=0, process_count=1)
  batch = next(pipeline.as_numpy(ds))
  import tensorflow_datasets as tfds
  raw = builder.as_dataset(split=c.data.eval_split, shuffle_files=False, decoders={'image': tfds.decode.SkipDecoding()})
  for i, example in enumerate(tfds.as_numpy(raw.take(4))):
    crop = pipeline.eval_image(example['image'], 24, 0.875, 'bicubic')
    np.testing.assert_array_equal(crop, batch['image'][i])
    decoded = np.asarray(Image.open(io.BytesIO(example['image'])).convert('RGB'))
    np.testing.assert_array_equal(pipeline.eval_image(decoded, 24, 0.875, 'bicubic'), crop)  # array input


@pytest.mark.parametrize('subsampling', [0, 2])
def test_tensorflow_free_transform_matches_the_eval_pipeline(subsampling):
  """transforms.eval_image (predict, visualize) against the TF pipeline's: JPEG and PNG decode to the same
  pixels; after the resize, a value may differ by one level where float32 sums round the other way."""
  import skimage.data
  photo = skimage.data.chelsea()  # 300x451
  jpeg, png = io.BytesIO(), io.BytesIO()
  Image.fromarray(photo).save(jpeg, format='JPEG', quality=90, subsampling=subsampling)
  Image.fromarray(photo).save(png, format='PNG')
  import tensorflow as tf
  for data in (jpeg.getvalue(), png.getvalue()):
    np.testing.assert_array_equal(transforms.decode(data), tf.io.decode_image(data, channels=3).numpy())
    for size, crop_pct, interpolation in ((224, 0.875, 'bicubic'), (32, 1.0, 'bilinear'), (256, 0.888, 'bicubic')):
      ours = transforms.eval_image(data, size, crop_pct, interpolation).astype(int)
      theirs = pipeline.eval_image(data, size, crop_pct, interpolation).astype(int)
      assert ours.shape == theirs.shape == (size, size, 3)
      assert np.abs(ours - theirs).max() <= 1 and np.mean(ours != theirs) < 1e-3
  with pytest.raises(transforms.UndecodableImageError):
    transforms.decode(b'hello')
  gray = photo[..., 0]
  np.testing.assert_array_equal(transforms.as_rgb(gray), np.repeat(gray[..., None], 3, axis=-1))


def test_variables_dir_with_imagenet_head_prints_imagenet_names(tmp_path, capsys):
  model = create_model('resnet50', num_classes=1000, **RESNET_TINY)
  variables = random_variables(model, np.zeros((1, 64, 64, 3), np.float32), scale=0.5)
  source = save_variables_dir(tmp_path / 'v', 'resnet50', RESNET_TINY, variables, num_classes=1000, image_size=64,
                              dataset=None)
  photo = str(tmp_path / 'cat.jpg')
  import skimage.data
  Image.fromarray(skimage.data.chelsea()).save(photo)
  assert predict.main(['--workdir', source, '--model', 'resnet50', photo]) == 0
  rows = parse(capsys.readouterr().out)[photo]
  names = classes.imagenet_class_names()
  assert len(rows) == 5 and all(name == names[label] for label, name, _ in rows)
  assert predict.main(['--workdir', source, '--model', 'nommer_t', photo]) == 2
  assert 'holds resnet50 weights' in capsys.readouterr().err
  not_an_image = tmp_path / 'notes.jpg'
  not_an_image.write_text('hello')
  assert predict.main(['--workdir', source, str(not_an_image)]) == 2
  assert 'notes.jpg: cannot decode it as an image' in capsys.readouterr().err


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
  assert predict.main(['--workdir', str(tmp_path), str(tmp_path / 'missing.jpg')]) == 2
  assert 'no such image file' in capsys.readouterr().err
  not_an_image = tmp_path / 'notes.jpg'
  not_an_image.write_text('hello')
  assert predict.main(['--workdir', str(tmp_path / 'nowhere'), str(not_an_image)]) == 2
  assert 'is not a directory' in capsys.readouterr().err
  checkpoint.save_variables(str(tmp_path / 'anonymous'), {'params': {'w': np.zeros(2)}, 'batch_stats': {}})
  assert predict.main(['--workdir', str(tmp_path / 'anonymous'), str(not_an_image)]) == 2
  assert 'pass --model NAME' in capsys.readouterr().err


def _huge_png_header(width, height):
  """A PNG that declares width x height: enough for a reader to decide before it decodes anything."""
  import struct
  import zlib

  def chunk(kind, data):
    return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
  return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)) +
          chunk(b'IDAT', zlib.compress(b'\x00' * 64)) + chunk(b'IEND', b''))


def _encoded(image, fmt, **kwargs):
  buf = io.BytesIO()
  image.save(buf, format=fmt, **kwargs)
  return buf.getvalue()


@pytest.mark.parametrize('kind,expect', [
    ('text', 'cannot decode it as an image'),
    ('empty', 'the file is empty'),
    ('huge', '400000000 pixels'),
    ('directory', 'a directory, not an image file'),
])
def test_unusable_images_are_one_line_errors(digits_run, tmp_path, capsys, kind, expect):
  _, workdir, _ = digits_run
  path = tmp_path / f'{kind}.png'
  if kind == 'directory':
    path.mkdir()
  else:
    path.write_bytes({'text': b'<html>404</html>', 'empty': b'', 'huge': _huge_png_header(20000, 20000)}[kind])
  assert predict.main(['--workdir', workdir, str(path)]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith('error: ') and expect in err[0], err


@pytest.mark.parametrize('kind', ['rgba', 'cmyk', 'sixteen_bit'])
def test_other_pixel_formats_are_read_as_tensorflow_reads_them(tmp_path, kind):
  """RGBA loses its alpha, CMYK JPEG becomes RGB, 16-bit grey keeps its high byte (not clipped to white)."""
  rng = np.random.default_rng(0)
  rgb = rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)
  if kind == 'rgba':
    data, want = _encoded(Image.fromarray(np.dstack([rgb, rng.integers(0, 256, (24, 20), dtype=np.uint8)])), 'PNG'), rgb
  elif kind == 'sixteen_bit':
    grey = rng.integers(0, 65536, (24, 20)).astype(np.uint16)
    data = _encoded(Image.fromarray(grey), 'PNG')
    want = np.repeat((grey >> 8).astype(np.uint8)[:, :, None], 3, axis=-1)
  else:
    data = _encoded(Image.fromarray(rgb).convert('CMYK'), 'JPEG', quality=100)
    want = None
  got = transforms.decode(data)
  assert got.shape == (24, 20, 3) and got.dtype == np.uint8
  if want is not None:
    np.testing.assert_array_equal(got, want)
  else:
    import tensorflow as tf
    np.testing.assert_allclose(got, tf.io.decode_image(data, channels=3).numpy(), atol=2)
