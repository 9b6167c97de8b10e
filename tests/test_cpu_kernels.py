"""lgvit's choice of XLA:CPU kernel library (lgvit.cpu_kernels, docs/kernels.md).

The choice only moves XLA_FLAGS, so it is checked two ways: what it writes to the environment (here,
with the jaxlib check stubbed so the rules are tested on any jaxlib), and, in a fresh process per
choice (XLA reads its flags once), that convolutions and their gradients under that choice agree with
a float64 numpy reference. Importing lgvit must not choose: only the entry points do.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, subprocess_env

from lgvit import cpu_kernels

YNN = 'xla_cpu_experimental_ynn_fusion_type'


@pytest.mark.parametrize('flags,want', [('fpu sse avx2 fma', False), ('fpu avx2 avx512f avx512bw', True)])
def test_has_avx512_reads_the_flags_line(tmp_path, flags, want):
  info = tmp_path / 'cpuinfo'
  info.write_text(f'processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n\nprocessor\t: 1\n')
  assert cpu_kernels.has_avx512(str(info)) is want
  assert cpu_kernels.has_avx512(str(tmp_path / 'absent')) is None


def test_auto_sends_convolutions_to_eigen_only_without_avx512():
  assert cpu_kernels.auto_choice(False) == 'eigen-conv'
  assert cpu_kernels.auto_choice(True) == 'xla'
  assert cpu_kernels.auto_choice(None) == 'xla'  # unknown CPU: XLA's defaults


@pytest.fixture
def clean_env(monkeypatch):
  monkeypatch.setattr(cpu_kernels, '_jaxlib_is_measured', lambda: True)
  for name in ('XLA_FLAGS', cpu_kernels.ENV_VAR, cpu_kernels._ADDED_ENV):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setenv('XLA_FLAGS', '--xla_backend_optimization_level=0')
  return monkeypatch


def test_choices_write_their_flag_and_replace_lgvits_own(clean_env):
  assert cpu_kernels.use('eigen') == 'eigen'
  assert os.environ['XLA_FLAGS'].split() == ['--xla_backend_optimization_level=0', cpu_kernels.EIGEN_FLAG]
  assert cpu_kernels.use('eigen-conv') == 'eigen-conv'  # replaces, does not stack
  assert os.environ['XLA_FLAGS'].split() == ['--xla_backend_optimization_level=0', cpu_kernels.EIGEN_CONV_FLAG]
  assert cpu_kernels.use('xla') == 'xla'
  assert os.environ['XLA_FLAGS'] == '--xla_backend_optimization_level=0'
  clean_env.setattr(cpu_kernels, 'has_avx512', lambda: False)
  assert cpu_kernels.use('auto') == 'eigen-conv'
  clean_env.setattr(cpu_kernels, 'has_avx512', lambda: True)
  assert cpu_kernels.use('auto') == 'xla' and YNN not in os.environ['XLA_FLAGS']


def test_environment_variable_and_a_users_own_flag(clean_env):
  clean_env.setenv('LGVIT_XLA_CPU_KERNELS', 'eigen')
  assert cpu_kernels.use() == 'eigen'
  # A child process inherits XLA_FLAGS with lgvit's flag in it; its own choice still applies.
  clean_env.setenv('LGVIT_XLA_CPU_KERNELS', 'eigen-conv')
  assert cpu_kernels.use() == 'eigen-conv' and cpu_kernels.EIGEN_FLAG not in os.environ['XLA_FLAGS'].split()
  users = f'--{YNN}=-individual_dot'
  clean_env.setenv('XLA_FLAGS', users)
  clean_env.delenv(cpu_kernels._ADDED_ENV)
  assert cpu_kernels.use('eigen-conv') == 'user' and os.environ['XLA_FLAGS'] == users
  clean_env.setenv('LGVIT_XLA_CPU_KERNELS', 'fast')
  with pytest.raises(ValueError, match='use one of auto, xla, eigen-conv, eigen'):
    cpu_kernels.use()


def test_other_jaxlibs_keep_xlas_defaults(clean_env):
  clean_env.setattr(cpu_kernels, '_jaxlib_is_measured', lambda: False)
  assert cpu_kernels.use('eigen') == 'xla' and YNN not in os.environ['XLA_FLAGS']


#: Imports every lgvit module after the libraries it builds on (which set variables of their own at import,
#: e.g. jax's TPU_SKIP_MDS_QUERY and TensorFlow's KMP_*), then prints what lgvit's imports changed.
IMPORTS_CHILD = r'''
import importlib, json, os, pkgutil, sys
import jax, flax, optax, orbax.checkpoint, tensorflow, tensorflow_datasets
before = dict(os.environ)
import lgvit
skip = set(sys.argv[1:])
names = [m.name for m in pkgutil.walk_packages(lgvit.__path__, 'lgvit.') if m.name not in skip]
for name in names:
  importlib.import_module(name)
after = dict(os.environ)
print(json.dumps({'modules': len(names), 'changed': {k: [before.get(k), after.get(k)] for k in set(before) | set(after)
                                                     if before.get(k) != after.get(k)}}))
'''


def test_importing_lgvit_changes_no_environment_variable():
  skip = ['lgvit.convert.__main__']  # a CLI, run with -m, not imported
  env = subprocess_env(JAX_PLATFORMS='cpu', LGVIT_XLA_CPU_KERNELS='eigen')
  proc = subprocess.run([sys.executable, '-c', IMPORTS_CHILD, *skip], env=env, cwd=REPO, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out['modules'] > 30 and out['changed'] == {}


# ---------------------------------------------------------------------------------------------
# Numbers under each choice.
# ---------------------------------------------------------------------------------------------

#: (input shape, kernel shape HWIO, stride, feature groups): a plain, a strided and a grouped conv.
CONV_CASES = [((2, 9, 11, 8), (3, 3, 8, 16), 1, 1), ((2, 10, 9, 6), (3, 3, 6, 4), 2, 1),
              ((1, 7, 8, 8), (3, 3, 4, 8), 1, 2)]

CHILD = r'''
import json, os, sys
import numpy as np
from lgvit import cpu_kernels
choice = cpu_kernels.use()
import jax, jax.numpy as jnp
out = {'choice': choice, 'xla_flags': os.environ.get('XLA_FLAGS', ''), 'cases': []}
for x_shape, w_shape, stride, groups in json.loads(sys.argv[1]):
  rng = np.random.default_rng(len(out['cases']))
  x, w = rng.standard_normal(x_shape).astype(np.float32), rng.standard_normal(w_shape).astype(np.float32)
  conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (stride, stride), ((1, 1), (1, 1)),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=groups)
  y = jax.jit(conv)(x, w)
  cot = rng.standard_normal(y.shape).astype(np.float32)
  dx, dw = jax.jit(jax.grad(lambda x, w: jnp.sum(conv(x, w) * cot), argnums=(0, 1)))(x, w)
  out['cases'].append({k: np.asarray(v).tolist() for k, v in dict(x=x, w=w, cot=cot, y=y, dx=dx, dw=dw).items()})
print(json.dumps(out))
'''


def conv_reference(x, w, cot, stride, groups):
  """Forward and both gradients of a padding-1 conv in float64, one kernel tap at a time."""
  x, w, cot = (np.asarray(a, np.float64) for a in (x, w, cot))
  kh, kw, cin_g, cout = w.shape
  cout_g = cout // groups
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  ho, wo = cot.shape[1:3]
  y, dxp, dw = np.zeros(cot.shape), np.zeros_like(xp), np.zeros_like(w)
  for i in range(kh):
    for j in range(kw):
      window = (slice(None), slice(i, i + stride * ho, stride), slice(j, j + stride * wo, stride))
      patch = xp[window]
      for g in range(groups):
        cin, co = slice(g * cin_g, (g + 1) * cin_g), slice(g * cout_g, (g + 1) * cout_g)
        y[..., co] += patch[..., cin] @ w[i, j, :, co]
        dw[i, j, :, co] += np.einsum('bhwc,bhwo->co', patch[..., cin], cot[..., co])
        dxp[window + (cin,)] += cot[..., co] @ w[i, j, :, co].T
  return y, dxp[:, 1:-1, 1:-1], dw


@pytest.mark.parametrize('choice,flag', [('xla', None), ('eigen-conv', cpu_kernels.EIGEN_CONV_FLAG),
                                         ('eigen', cpu_kernels.EIGEN_FLAG)])
def test_convolutions_and_gradients_agree_with_float64_under_each_choice(choice, flag):
  env = subprocess_env(LGVIT_XLA_CPU_KERNELS=choice, JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, '-c', CHILD, json.dumps(CONV_CASES)], env=env, cwd=REPO,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  if out['choice'] == 'xla' and choice != 'xla':
    pytest.skip(f'jaxlib is not 0.10, where lgvit chooses kernels; XLA_FLAGS={out["xla_flags"]!r}')
  assert out['choice'] == choice
  assert (flag in out['xla_flags'].split()) if flag else YNN not in out['xla_flags']
  for (_, _, stride, groups), case in zip(CONV_CASES, out['cases']):
    want = conv_reference(case['x'], case['w'], case['cot'], stride, groups)
    for name, ref in zip(('y', 'dx', 'dw'), want):
      np.testing.assert_allclose(case[name], ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max(), err_msg=f'{choice} {name}')
