"""Shared test fixtures: where the reference data lives, and JAX settings for exact comparisons."""
import os
import pathlib
import shutil
import tempfile

import numpy as np
import pytest

try:  # before anything imports TensorFlow: torchvision's import of triton segfaults once TensorFlow is loaded
  import torchvision.ops  # noqa: F401  (the RoIAlign/NMS references of tests/test_box_ops.py)
except ImportError:
  pass

from lgvit import cpu_kernels

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get('LGVIT_SHARED', REPO.parent / 'shared'))
#: CI sets CI=true: there a missing reference fixture is an error, never a silent skip.
IN_CI = os.environ.get('CI', '').lower() in ('1', 'true', 'yes')


def subprocess_env(**extra) -> dict[str, str]:
  """The environment for a ``main.py``/helper subprocess: lgvit importable, TensorFlow quiet, and
  ``XLA_FLAGS`` only as ``extra`` gives it (a device count of the parent must not leak in)."""
  env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL='3')
  env.pop('XLA_FLAGS', None)
  env.update(extra)
  return env


_CREATED_CACHE = None


#: Added to XLA_FLAGS of the pytest processes (not of the main.py runs they start, see subprocess_env):
#: the suite's in-process work is dominated by compiling many small models, which LLVM's lower
#: optimisation level makes about 1.8x faster, with results within the tests' float32 tolerances.
#: LGVIT_TEST_XLA_OPT=default keeps XLA's default level.
FAST_COMPILE_FLAG = '--xla_backend_optimization_level=0'


def _fast_compile():
  flags = os.environ.get('XLA_FLAGS', '')
  if os.environ.get('LGVIT_TEST_XLA_OPT') != 'default' and 'xla_backend_optimization_level' not in flags:
    os.environ['XLA_FLAGS'] = f'{flags} {FAST_COMPILE_FLAG}'.strip()


_fast_compile()  # at import: before any test module starts XLA's CPU client
cpu_kernels.use()  # the suite runs under the kernels main.py would pick here (docs/kernels.md)


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


@pytest.fixture(scope='session')
def digits_dir(tmp_path_factory):
  """A TFDS data_dir holding lgvit_digits, built once per test process (runs only read it)."""
  from lgvit.data import pipeline
  path = str(tmp_path_factory.mktemp('tfds'))
  pipeline.get_builder('lgvit_digits', path)
  return path


def demo_config(data_dir, **overrides):
  """configs/resnet50.py:demo on ``data_dir`` for 2 steps; ``a__b=v`` in ``overrides`` sets ``config.a.b``."""
  from configs import resnet50
  c = resnet50.get_config('demo')
  c.unlock()
  c.data.data_dir = data_dir
  c.num_train_steps, c.checkpoint_every_steps, c.log_every_steps = 2, 2, 1
  for dotted, value in overrides.items():
    *parents, leaf = dotted.split('__')
    target = c
    for p in parents:
      target = target[p]
    target[leaf] = value
  return c


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


# ---------------------------------------------------------------------------------------------
# Small models and their variables, shared by the model, introspection and prediction tests.
# ---------------------------------------------------------------------------------------------

RESNET_TINY = dict(stage_depths=(1, 1, 1, 1), stem_width=8, stage_planes=(8, 8, 16, 16))


def small_kwargs(name):
  """Overrides that shrink registered model ``name`` to its config's ``:demo`` size (32x32 inputs)."""
  import importlib
  from lgvit.models import model_info
  if model_info(name).family == 'resnet':
    return dict(RESNET_TINY)
  return dict(importlib.import_module(f'configs.{name}').get_config('demo').model_kwargs)


def init_shapes(model, size, batch=1):
  """The variables of ``model`` for (batch, size, size, 3) inputs, as ShapeDtypeStructs (no compute)."""
  import jax
  import jax.numpy as jnp
  x = jnp.zeros((batch, size, size, 3))
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))


def random_variables(model, x, seed=0, scale=0.05):
  """Random values in the shapes of ``model.init`` (BatchNorm variances 1) without compiling the init."""
  import jax
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    if path[-1].key == 'var':  # BatchNorm running variance
      return np.ones(leaf.shape, leaf.dtype)
    return (scale * rng.standard_normal(leaf.shape)).astype(leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def save_variables_dir(path, name, kwargs, variables, num_classes=10, image_size=32, dataset='lgvit_digits'):
  """A directory as ``python -m lgvit.export`` writes its ``variables/`` (orbax + meta naming the model)."""
  from lgvit import checkpoint
  checkpoint.save_variables(str(path), variables, {'model': name, 'num_classes': num_classes, 'model_kwargs': kwargs,
                                                   'image_size': image_size, 'dataset': dataset})
  return str(path)


#: One registered model per family, for the tests that exercise a family's introspection.
FAMILY_MODELS = {'resnet': 'resnet50', 'nommer': 'nommer_t', 'lesa': 'lesa_resnet50', 'cotnet': 'cotnet50',
                 'salg': 'salg_st', 'swin': 'swin_st'}


# ---------------------------------------------------------------------------------------------
# TFDS datasets prepared by TFDS's own builders from small synthetic inputs.
# ---------------------------------------------------------------------------------------------


def jpeg(rng, h, w) -> bytes:
  """A random (h, w) RGB JPEG."""
  import io
  from PIL import Image
  buf = io.BytesIO()
  Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, format='JPEG')
  return buf.getvalue()


def add_to_tar(tar, name, data):
  import io
  import tarfile
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def build_tiny_imagenet(root: pathlib.Path) -> str:
  """imagenet2012 in ``root/tfds`` from a synthetic ``root/manual`` (3 synsets; 8 val images, one truncated)."""
  import io
  import tarfile
  import tensorflow_datasets as tfds
  from tensorflow_datasets.datasets.imagenet2012 import imagenet_common
  manual, data_dir = root / 'manual', root / 'tfds'
  manual.mkdir()
  rng = np.random.default_rng(0)
  synsets = pathlib.Path(imagenet_common.label_names_file()).read_text().split()[:3]
  with tarfile.open(manual / 'ILSVRC2012_img_train.tar', 'w') as outer:
    for syn in synsets:
      inner = io.BytesIO()
      with tarfile.open(fileobj=inner, mode='w') as t:
        for i in range(6):
          add_to_tar(t, f'{syn}_{i}.JPEG', jpeg(rng, 40 + 3 * i, 50))
        if syn == synsets[0]:  # unreadable files that real crawls contain: truncated and not an image at all
          add_to_tar(t, f'{syn}_truncated.JPEG', jpeg(rng, 40, 50)[:200])
          add_to_tar(t, f'{syn}_garbage.JPEG', b'<html>404 not found</html>')
      add_to_tar(outer, f'{syn}.tar', inner.getvalue())
  with tarfile.open(manual / 'ILSVRC2012_img_val.tar', 'w') as t:
    for i in range(1, 8):
      add_to_tar(t, f'ILSVRC2012_val_{i:08d}.JPEG', jpeg(rng, 48, 36 + i))
    add_to_tar(t, 'ILSVRC2012_val_00000008.JPEG', jpeg(rng, 48, 40)[:150])
  builder = tfds.builder('imagenet2012', data_dir=str(data_dir))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
  assert builder.info.splits['validation'].num_examples == 8
  assert builder.info.splits['train'].num_examples == 20
  return str(data_dir)


#: The synthetic evaluation suite: what each builder is fed (see build_eval_suite).
SUITE_V2_LABELS = (0, 0, 1, 2, 999, 500, 7)  # 7 images, folder names = 1000-class labels
SUITE_A_SYNSETS = ('n01498041', 'n01498041', 'n01531178', 'n12267677', 'n02037110')  # 5 images
SUITE_R_SYNSETS = ('n01443537', 'n01484850', 'n01484850', 'n12267677', 'n07768694', 'n02086240')  # 6 images
#: ReaL label sets of the 8 tiny validation images (the 8th is truncated): two empty sets, one of three labels.
SUITE_REAL = ([0], [], [1, 2, 3], [500], [], [7, 8], [999], [4])


def build_eval_suite(root: pathlib.Path) -> str:
  """imagenet2012, imagenet_v2/matched-frequency, imagenet2012_real, imagenet_a and imagenet_r in
  ``root/tfds``, each prepared by TFDS's own builder from synthetic files; the downloads that the
  builders ask for are answered with local folders (as TFDS's own builder tests do)."""
  import json
  from unittest import mock
  import tensorflow_datasets as tfds
  data_dir = build_tiny_imagenet(root)
  rng = np.random.default_rng(1)

  def folders(top, names):
    for i, name in enumerate(names):
      (top / name).mkdir(parents=True, exist_ok=True)
      (top / name / f'img{i}.jpg').write_bytes(jpeg(rng, 36 + i, 44))
    return str(top.parent)

  downloads = {
      'imagenet_v2/matched-frequency': folders(root / 'v2' / 'imagenetv2-matched-frequency-format-val',
                                               [str(label) for label in SUITE_V2_LABELS]),
      'imagenet_a': folders(root / 'a' / 'imagenet-a', SUITE_A_SYNSETS),
      'imagenet_r': folders(root / 'r' / 'imagenet-r', SUITE_R_SYNSETS),
  }
  real_json = root / 'real.json'
  real_json.write_text(json.dumps(list(SUITE_REAL)))
  for name, folder in downloads.items():
    with mock.patch.object(tfds.download.DownloadManager, 'download_and_extract', lambda self, url, f=folder: f):
      tfds.builder(name, data_dir=data_dir).download_and_prepare()
  with mock.patch.object(tfds.download.DownloadManager, 'download', lambda self, url: str(real_json)):
    tfds.builder('imagenet2012_real', data_dir=data_dir).download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(root / 'manual')))
  return data_dir
