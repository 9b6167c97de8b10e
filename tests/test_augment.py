"""RandAugment ops against PIL (the library timm calls), policy parsing, determinism; random erasing.

Tolerances:
* look-up-table ops, enhancements and Cutout are exact: they do PIL's integer or float32 arithmetic.
* geometric ops: at most 1 grey level on at most 5% of the values (mean |diff| < 0.05). PIL samples in
  double precision, we in float32, and both truncate to uint8. Wherever the exact result is an integer
  (e.g. a shift by 0.3 px between neighbours that differ by a multiple of 10) the two land on either
  side of it; a half-pixel or axis error would instead give differences of tens of grey levels.
"""
import dataclasses
import math
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

from lgvit.data import augment

FILL = (124, 116, 104)
RESAMPLE = {'bilinear': Image.BILINEAR, 'bicubic': Image.BICUBIC}


def _textured(height=37, width=53, lo=20, hi=230, seed=0):
  """Coloured ramps plus noise, kept inside [lo, hi] so autocontrast/equalize have work to do."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:height, 0:width]
  ramps = np.stack([xx * 4, yy * 6, (xx + yy) * 3], -1) % 256
  return np.clip(ramps + rng.integers(-30, 30, (height, width, 3)), lo, hi).astype(np.uint8)


def _hard_edges(height=37, width=53, seed=1):
  """Full-range blocks with sharp edges: bicubic overshoots and must clip at 0 and 255."""
  rng = np.random.default_rng(seed)
  blocks = rng.choice([0, 255], size=(height // 4 + 1, width // 4 + 1, 3))
  return np.kron(blocks, np.ones((4, 4, 1)))[:height, :width].astype(np.uint8)


def _ours(fn, image, *args, **kwargs):
  return fn(tf.constant(image), *args, **kwargs).numpy()


def _assert_exact(ours, reference):
  np.testing.assert_array_equal(np.asarray(ours), np.asarray(reference))


def _assert_geometry_close(ours, reference):
  diff = np.abs(np.asarray(ours, np.int32) - np.asarray(reference, np.int32))
  assert diff.max() <= 1, f'max |diff| {diff.max()}'
  assert np.mean(diff > 0) <= 0.05, f'{np.mean(diff > 0):.3%} of values differ'
  assert diff.mean() < 0.05


# ---------------------------------------------------------------------------------------------
# Point operations and enhancements: exact.
# ---------------------------------------------------------------------------------------------

POINT_CASES = [
    ('auto_contrast', lambda t: augment.auto_contrast(t), ImageOps.autocontrast),
    ('equalize', lambda t: augment.equalize(t), ImageOps.equalize),
    ('invert', lambda t: augment.invert(t), ImageOps.invert),
    *[(f'posterize{b}', lambda t, b=b: augment.posterize(t, b), lambda im, b=b: ImageOps.posterize(im, b))
      for b in (1, 2, 4, 6, 8)],
    *[(f'solarize{th}', lambda t, th=th: augment.solarize(t, th), lambda im, th=th: ImageOps.solarize(im, th))
      for th in (0, 26, 128, 255, 256)],
    # timm's solarize_add is a PIL point() with this table.
    *[(f'solarize_add{a}', lambda t, a=a: augment.solarize_add(t, a),
       lambda im, a=a: im.point([min(255, i + a) if i < 128 else i for i in range(256)] * 3)) for a in (0, 99, 165)],
]


@pytest.mark.parametrize('name,ours,reference', POINT_CASES, ids=[c[0] for c in POINT_CASES])
def test_point_ops_match_pil(name, ours, reference):
  for image in (_textured(), _hard_edges()):
    _assert_exact(ours(tf.constant(image)), reference(Image.fromarray(image)))


def test_point_ops_on_degenerate_histograms_match_pil():
  image = _textured()
  image[..., 1] = 77  # one value only: autocontrast and equalize leave the channel alone
  image[:, :, 2] = np.where(np.arange(53) < 50, 10, 200)[None, :]  # two values, one of them rare
  pil = Image.fromarray(image)
  _assert_exact(_ours(augment.auto_contrast, image), ImageOps.autocontrast(pil))
  _assert_exact(_ours(augment.equalize, image), ImageOps.equalize(pil))


def test_posterize_to_zero_bits_is_black():
  # timm's PosterizeIncreasing reaches 0 bits at magnitude 10; PIL of timm's era masked with
  # ~(2**8 - 1) (current Pillow refuses bits=0), so the reference is that mask in numpy.
  image = _textured()
  _assert_exact(_ours(augment.posterize, image, 0), image & ~np.uint8(255))


@pytest.mark.parametrize('factor', [0.0, 0.1, 0.19, 0.55, 1.0, 1.81, 2.8])
@pytest.mark.parametrize('name', ['color', 'contrast', 'brightness', 'sharpness'])
def test_enhance_ops_match_pil(name, factor):
  enhancer = {'color': ImageEnhance.Color, 'contrast': ImageEnhance.Contrast,
              'brightness': ImageEnhance.Brightness, 'sharpness': ImageEnhance.Sharpness}[name]
  for image in (_textured(), _hard_edges()):
    _assert_exact(_ours(getattr(augment, name), image, factor), enhancer(Image.fromarray(image)).enhance(factor))


# ---------------------------------------------------------------------------------------------
# Geometric operations: PIL's affine sampler, up to float32-vs-double truncation.
# ---------------------------------------------------------------------------------------------


def _pil_affine(image, matrix, interpolation):
  pil = Image.fromarray(image)
  return pil.transform(pil.size, Image.AFFINE, matrix, resample=RESAMPLE[interpolation], fillcolor=FILL)


GEOMETRY_CASES = [
    *[(f'rotate{deg}', lambda t, i, deg=deg: augment.rotate(t, deg, FILL, i),
       lambda im, i, deg=deg: Image.fromarray(im).rotate(deg, resample=RESAMPLE[i], fillcolor=FILL))
      for deg in (3.3, 27.0, -27.0, 45.0)],
    *[(f'shear_x{s}', lambda t, i, s=s: augment.shear_x(t, s, FILL, i),
       lambda im, i, s=s: _pil_affine(im, (1, s, 0, 0, 1, 0), i)) for s in (0.27, -0.45)],
    *[(f'shear_y{s}', lambda t, i, s=s: augment.shear_y(t, s, FILL, i),
       lambda im, i, s=s: _pil_affine(im, (1, 0, 0, s, 1, 0), i)) for s in (0.27, -0.45)],
    *[(f'translate_x{p}', lambda t, i, p=p: augment.translate_x(t, p, FILL, i),
       lambda im, i, p=p: _pil_affine(im, (1, 0, p, 0, 1, 0), i)) for p in (21.465, -13.7, 7.0)],
    *[(f'translate_y{p}', lambda t, i, p=p: augment.translate_y(t, p, FILL, i),
       lambda im, i, p=p: _pil_affine(im, (1, 0, 0, 0, 1, p), i)) for p in (14.985, -13.7, 7.0)],
    ('affine', lambda t, i: augment.affine(t, (0.9, 0.2, 3.1, -0.15, 1.1, -2.4), FILL, i),
     lambda im, i: _pil_affine(im, (0.9, 0.2, 3.1, -0.15, 1.1, -2.4), i)),
]


@pytest.mark.parametrize('interpolation', ['bicubic', 'bilinear'])
@pytest.mark.parametrize('name,ours,reference', GEOMETRY_CASES, ids=[c[0] for c in GEOMETRY_CASES])
def test_geometric_ops_match_pil(name, ours, reference, interpolation):
  for image in (_textured(), _hard_edges()):
    _assert_geometry_close(ours(tf.constant(image), interpolation), reference(image, interpolation))


@pytest.mark.parametrize('center_x,center_y,half', [(10.3, 20.7, 6), (52.9, 1.5, 12), (30.0, 18.0, 0), (5.0, 5.0, 60)])
def test_cutout_matches_cotnet_rectangle(center_x, center_y, half):
  image = _textured()
  reference = Image.fromarray(image)
  height, width = image.shape[:2]
  x0, y0 = int(max(0, center_x - half)), int(max(0, center_y - half))
  ImageDraw.Draw(reference).rectangle((x0, y0, min(width, x0 + 2 * half), min(height, y0 + 2 * half)), FILL)
  _assert_exact(_ours(augment.cutout, image, center_x, center_y, half, FILL), reference)


# ---------------------------------------------------------------------------------------------
# Policies.
# ---------------------------------------------------------------------------------------------


def test_parse_timm_policies():
  swin = augment.parse_policy('rand-m9-mstd0.5-inc1')
  assert swin == augment.RandAugmentPolicy(ops=augment.TIMM_INCREASING_OPS, magnitude=9, num_layers=2,
                                           magnitude_std=0.5, magnitude_max=10, prob_range=(0.5, 0.5))
  assert len(swin.ops) == 15 and swin.fill == FILL
  plain = augment.parse_policy('rand-m7-n3')
  assert plain.ops == augment.TIMM_OPS and (plain.magnitude, plain.num_layers, plain.magnitude_std) == (7, 3, 0)
  assert augment.parse_policy('rand-mstd101').magnitude_std == math.inf  # newer timm: uniform magnitudes
  assert augment.parse_policy('rand-m9').magnitude == 9 and augment.parse_policy('rand').magnitude == 10
  assert augment.parse_policy('rand-m15-mmax15').magnitude_max == 15


def test_parse_cotnet_policy():
  cot = augment.parse_policy('cotrand-m15-mstd0.5-n2')
  assert cot.ops == augment.COTNET_OPS and len(cot.ops) == 16 and 'Cutout' in cot.ops
  assert (cot.magnitude, cot.magnitude_std, cot.magnitude_max, cot.num_layers) == (15, 0.5, 15, 2)
  assert cot.prob_range == (0.2, 0.8)
  assert (cot.translate_const, cot.cutout_const, cot.fill) == (100, 40, FILL)


@pytest.mark.parametrize('policy,match', [
    ('rand-m15-mstd0.5-n2', "cotrand-m15-mstd0.5-n2"),
    ('augmix-m3', "must start with 'rand-'"),
    ('rand-x3', "bad section 'x3'"),
    ('rand-m9-w0', "bad section 'w0'"),
    ('cotrand-m15-inc1', "bad section 'inc1'"),
    ('rand-m', "bad section 'm'"),
])
def test_bad_policies_raise_clear_errors(policy, match):
  with pytest.raises(augment.RandAugmentPolicyError, match=match):
    augment.parse_policy(policy)


def _args(name, magnitude, policy, negate=False, hw=(37, 53)):
  return [float(np.asarray(a)) for a in augment.op_arguments(name, magnitude, negate, hw, policy)]


def test_op_arguments_follow_timm_level_functions():
  timm = augment.parse_policy('rand-m9-mstd0.5-inc1')
  assert _args('Rotate', 9, timm) == pytest.approx([27.0]) and _args('Rotate', 9, timm, True) == pytest.approx([-27.0])
  assert _args('PosterizeIncreasing', 9, timm) == [1] and _args('PosterizeIncreasing', 10, timm) == [0]
  assert _args('SolarizeIncreasing', 9, timm) == [26] and _args('SolarizeIncreasing', 0, timm) == [256]
  assert _args('SolarizeAdd', 9, timm) == [99]
  assert _args('ColorIncreasing', 9, timm) == pytest.approx([1.81])
  assert _args('SharpnessIncreasing', 9, timm, True) == pytest.approx([0.19])
  assert _args('ShearY', 9, timm, True) == pytest.approx([-0.27])
  assert _args('TranslateXRel', 9, timm) == pytest.approx([0.405 * 53])
  assert _args('TranslateYRel', 9, timm) == pytest.approx([0.405 * 37])
  assert _args('Posterize', 9, timm) == [3] and _args('Solarize', 9, timm) == [230]
  assert _args('Brightness', 9, timm) == pytest.approx([1.72])


def test_op_arguments_follow_cotnet_level_functions():
  cot = augment.parse_policy('cotrand-m15-mstd0.5-n2')
  assert _args('Rotate', 15, cot) == pytest.approx([45.0]) and _args('ShearX', 15, cot) == pytest.approx([0.45])
  assert _args('Posterize', 15, cot) == [6] and _args('Solarize', 15, cot) == [384]
  assert _args('SolarizeAdd', 15, cot) == [165] and _args('Contrast', 15, cot) == pytest.approx([2.8])
  assert _args('TranslateX', 15, cot, True) == pytest.approx([-150.0]) and _args('Cutout', 15, cot) == [60]


def _single_op(policy, name, **changes):
  return dataclasses.replace(policy, ops=(name,), num_layers=1, magnitude_std=0.0, prob_range=(1.0, 1.0), **changes)


def test_randaugment_applies_the_drawn_op_like_pil():
  timm = augment.parse_policy('rand-m9-mstd0.5-inc1')
  image = _textured()
  pil = Image.fromarray(image)
  seed = tf.constant([3, 4], tf.int64)
  rotated = augment.randaugment(_single_op(timm, 'Rotate'))(image, seed).numpy()
  candidates = [np.asarray(pil.rotate(sign * 27.0, resample=Image.BICUBIC, fillcolor=FILL)) for sign in (1, -1)]
  best = min(candidates, key=lambda ref: np.abs(ref.astype(int) - rotated).sum())
  _assert_geometry_close(rotated, best)
  posterized = augment.randaugment(_single_op(timm, 'PosterizeIncreasing'))(image, seed)
  _assert_exact(posterized, ImageOps.posterize(pil, 1))
  cot = augment.parse_policy('cotrand-m15-mstd0.5-n2')
  contrasted = augment.randaugment(_single_op(cot, 'Contrast'))(image, seed)
  _assert_exact(contrasted, ImageEnhance.Contrast(pil).enhance(2.8))


def _augment_many(policy: str, image, count: int):
  aug = augment.randaugment_from_policy(policy)
  seeds = tf.data.Dataset.range(count).map(lambda i: tf.stack([i, tf.constant(11, tf.int64)]))
  ds = seeds.map(lambda s: aug(tf.constant(image), s), num_parallel_calls=2, deterministic=False)
  return np.stack(list(ds.as_numpy_iterator()))


@pytest.mark.parametrize('policy', ['rand-m9-mstd0.5-inc1', 'cotrand-m15-mstd0.5-n2'])
def test_randaugment_is_a_pure_function_of_the_seed(policy):
  image = _textured(24, 28)
  aug = augment.randaugment_from_policy(policy)
  seed = tf.constant([5, 6], tf.int64)
  first = aug(tf.constant(image), seed).numpy()
  assert first.dtype == np.uint8 and first.shape == image.shape
  _assert_exact(aug(tf.constant(image), seed), first)
  others = [aug(tf.constant(image), tf.constant([5, s], tf.int64)).numpy().tobytes() for s in range(7, 17)]
  assert len(set(others)) >= 7


@pytest.mark.parametrize('policy,untouched', [
    # Every op changes this image, so it stays untouched only if neither op fires: 0.5^2.
    ('rand-m9-mstd0.5-inc1', 0.25),
    # Ops fire with prob ~U(0.2, 0.8) (mean 0.5), and Solarize at m~15 has threshold > 255 (no-op).
    ('cotrand-m15-mstd0.5-n2', (0.5 + 0.5 / 16)**2),
])
def test_randaugment_fire_rate(policy, untouched):
  image = _textured(20, 24)
  count = 400
  outputs = _augment_many(policy, image, count)
  fraction = np.mean([np.array_equal(out, image) for out in outputs])
  assert abs(fraction - untouched) < 3.5 * math.sqrt(untouched * (1 - untouched) / count)


# ---------------------------------------------------------------------------------------------
# Random erasing.
# ---------------------------------------------------------------------------------------------


ERASE_SHAPE = (512, 20, 24, 3)
ERASE_BACKGROUND = 3.0


@pytest.fixture(scope='module')
def erased():
  """Every erasing variant on one constant batch, in a single compile (jax.random compiles slowly on CPU)."""

  @jax.jit
  def erase_all(key, images):
    variants = {(mode, 1.0): augment.random_erasing(key, images, 1.0, mode) for mode in augment.ERASE_MODES}
    variants['pixel', 0.25] = augment.random_erasing(jax.random.fold_in(key, 1), images, 0.25, 'pixel')
    return variants

  images = jnp.full(ERASE_SHAPE, ERASE_BACKGROUND)
  return {k: np.asarray(v) for k, v in erase_all(jax.random.PRNGKey(0), images).items()}


def _erased_masks(batch):
  return np.any(batch != ERASE_BACKGROUND, axis=-1)


def _timm_boxes(count, height, width, rng):
  """timm 0.4.12 RandomErasing._erase (count 1, prob 1) in plain Python: (h, w, top, left) or None."""
  boxes = []
  for _ in range(count):
    box = None
    for _ in range(10):
      target = rng.uniform(0.02, 1 / 3) * height * width
      aspect = math.exp(rng.uniform(math.log(0.3), math.log(1 / 0.3)))
      h, w = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
      if w < width and h < height:
        box = (h, w, rng.randint(0, height - h), rng.randint(0, width - w))
        break
    boxes.append(box)
  return boxes


def test_random_erasing_draws_one_box_per_image_like_timm(erased):
  batch, height, width, _ = ERASE_SHAPE
  const = erased['const', 1.0]
  masks = _erased_masks(const)
  boxes = []
  for mask in masks:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not len(rows):
      continue
    top, left, h, w = rows[0], cols[0], rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    assert mask.sum() == h * w, 'the erased pixels must form one rectangle'
    assert 0.02 * height * width - (h + w) <= h * w <= height * width / 3 + (h + w)  # rounding of h and w
    boxes.append((h, w, top, left))
  reference = [b for b in _timm_boxes(4000, height, width, random.Random(0)) if b is not None]
  # Images where none of the 10 proposals fits stay untouched, as often as in timm.
  assert abs(len(boxes) / batch - len(reference) / 4000) < 0.05
  ours, ref = np.array(boxes, float), np.array(reference, float)
  # Mean height, width, top, left agree within ~4 standard errors of our sample.
  np.testing.assert_array_less(np.abs(ours.mean(0) - ref.mean(0)), 4 * ref.std(0) / np.sqrt(len(ours)))
  assert np.all(const[masks] == 0.0)


def test_random_erasing_probability(erased):
  images = jnp.ones((4, 8, 8, 3))
  np.testing.assert_array_equal(augment.random_erasing(jax.random.PRNGKey(1), images, 0.0, 'pixel'), images)
  fits = np.mean(_erased_masks(erased['pixel', 1.0]).any(axis=(1, 2)))  # some draws never fit in 10 attempts
  fraction = np.mean(_erased_masks(erased['pixel', 0.25]).any(axis=(1, 2)))
  assert abs(fraction - 0.25 * fits) < 3.5 * math.sqrt(0.25 * 0.75 / ERASE_SHAPE[0])


def test_random_erasing_fill_statistics_per_mode(erased):
  pixel = erased['pixel', 1.0]
  values = pixel[_erased_masks(pixel)]
  assert values.size > pixel.size * 0.05
  assert abs(values.mean()) < 0.02 and abs(values.std() - 1.0) < 0.02  # per-pixel N(0, 1)
  colours = []
  for image in erased['rand', 1.0]:
    box = image[_erased_masks(image)]
    if len(box):
      assert np.all(box == box[0]), "'rand' fills the box with one colour"
      colours.append(box[0])
  colours = np.array(colours)
  assert abs(colours.mean()) < 0.15 and abs(colours.std() - 1.0) < 0.15  # one N(0, 1) colour per image
  assert np.all(colours[:, 0] != colours[:, 1])  # drawn per channel
  assert set(np.unique(erased['const', 1.0])) == {0.0, ERASE_BACKGROUND}


def test_random_erasing_rejects_unknown_modes():
  with pytest.raises(ValueError, match="'pixel', 'rand', 'const'"):
    augment.random_erasing(jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 3)), 0.5, 'noise')


def test_training_pipeline_with_randaugment_is_deterministic_and_resumable(tmp_path):
  from configs import resnet50
  from lgvit.data import pipeline
  c = resnet50.get_config('demo')
  c.data.data_dir = str(tmp_path)
  c.aug.randaugment = 'rand-m9-mstd0.5-inc1'
  c.batch_size = 8
  builder = pipeline.get_builder('lgvit_digits', c.data.data_dir)

  def images(start):
    ds = pipeline.train_dataset(c.data, c.aug, builder, batch_size=c.batch_size, seed=c.seed, epoch=1,
                                start_step=start, steps_per_epoch=3, process_index=0, process_count=1)
    return np.concatenate([b['image'] for b in pipeline.as_numpy(ds)])

  full = images(0)
  np.testing.assert_array_equal(images(1), full[8:])
  # The digits are grey; only RandAugment's geometric ops bring in the (coloured) ImageNet-mean fill.
  assert np.all(full == full[..., :1], axis=-1).mean() < 1
  assert np.any(np.all(full == FILL, axis=-1))
