"""XLA:CPU's kernel library for dots and convolutions: lgvit's choice per CPU (docs/kernels.md).

jaxlib 0.10's XLA:CPU runs dots and convolutions with YNNPACK by default; an experimental flag in
``XLA_FLAGS`` moves them to Eigen. Which is faster depends on the CPU, so every lgvit entry point
(``main.py``, each ``python -m lgvit.*`` tool, the CPU benchmark scripts) calls :func:`use` first thing;
importing lgvit changes nothing. XLA reads ``XLA_FLAGS`` once, when its CPU client starts at the first
JAX computation, so a notebook or script of your own opts in with ``lgvit.cpu_kernels.use()`` before
that (e.g. in its first cell); a later call changes the environment but not this process's kernels.

The choices (:data:`CHOICES`, also ``LGVIT_XLA_CPU_KERNELS``): ``xla`` keeps XLA's defaults (YNNPACK),
``eigen-conv`` sends convolutions and their gradients to Eigen, ``eigen`` sends dots and convolutions to
Eigen, ``auto`` picks by CPU (:func:`auto_choice`). Results agree within float32 round-off
(tests/test_cpu_kernels.py). The flag is read by XLA:CPU alone: TPU and GPU programs are unchanged.
"""
import os
from importlib.metadata import PackageNotFoundError, version

from lgvit.errors import ConfigError

_YNN_FLAG = 'xla_cpu_experimental_ynn_fusion_type'
#: Every XLA:CPU dot and convolution on Eigen instead of YNNPACK (``eigen``).
EIGEN_FLAG = f'--{_YNN_FLAG}='
#: Convolutions (and their gradients) on Eigen, every other YNNPACK fusion kept (``eigen-conv``): the measured
#: default on x86 CPUs without AVX-512 (docs/kernels.md, "XLA:CPU's kernel libraries per CPU").
EIGEN_CONV_FLAG = f'--{_YNN_FLAG}=-individual_convolution'
CHOICES = ('auto', 'xla', 'eigen-conv', 'eigen')
#: The environment variable :func:`use` reads when called without a choice.
ENV_VAR = 'LGVIT_XLA_CPU_KERNELS'
#: Names the flag lgvit added, so that a second call, or a child process that inherits XLA_FLAGS, can tell
#: it from a user's own.
_ADDED_ENV = '_LGVIT_ADDED_XLA_CPU_FLAG'


def _jaxlib_is_measured() -> bool:
  # The flag is experimental: an unknown value would abort XLA, and on another jaxlib the libraries'
  # speeds differ, so lgvit only chooses for the jaxlib it was measured on.
  try:
    return version('jaxlib').startswith('0.10.')
  except PackageNotFoundError:
    return False


def has_avx512(cpuinfo: str = '/proc/cpuinfo') -> bool | None:
  """Whether this x86 CPU has AVX-512 (``avx512f``); None where that cannot be read (not Linux/x86)."""
  try:
    with open(cpuinfo) as f:
      for line in f:
        if line.startswith('flags'):
          return 'avx512f' in line.split(':', 1)[1].split()
  except OSError:
    pass
  return None


def auto_choice(avx512: bool | None) -> str:
  """What ``auto`` picks. On an AVX2-only AMD EPYC (Zen 3) YNNPACK's convolutions do not use a second
  core (a 3x3 conv's forward and gradients ~100 ms on one or two threads, Eigen's ~40 ms on two)
  while its dots are faster than Eigen's (Swin-T training 3.17 vs 2.47 img/s), so convolutions go to
  Eigen there. AVX-512 CPUs keep XLA's defaults, which their side-by-side table was measured with
  (docs/kernels.md, "XLA:CPU's kernel libraries per CPU")."""
  return 'eigen-conv' if avx512 is False else 'xla'


def use(choice: str | None = None) -> str:
  """Chooses XLA:CPU's kernel library by adding its flag to ``XLA_FLAGS``; returns what was chosen.

  ``choice`` is one of :data:`CHOICES` (default: ``LGVIT_XLA_CPU_KERNELS``, else ``auto``). Call it
  before the first JAX computation of the process. A second call replaces lgvit's earlier flag (this
  process's, or one a parent process passed down) rather than adding another. A user's own
  ``--xla_cpu_experimental_ynn_fusion_type`` always wins (returns ``user``); on a jaxlib other than
  0.10 nothing is added (returns ``xla``). Raises :class:`~lgvit.errors.ConfigError` for an unknown choice.
  """
  if choice is None:
    choice = os.environ.get(ENV_VAR) or 'auto'
  if choice not in CHOICES:
    raise ConfigError(f'{ENV_VAR}={choice!r}: use one of {", ".join(CHOICES)}')
  flags = os.environ.get('XLA_FLAGS', '').split()
  added = os.environ.pop(_ADDED_ENV, None)
  if added in flags:  # lgvit's own earlier choice (this process's, or a parent's): replaced, not kept
    flags.remove(added)
  user_flag = any(_YNN_FLAG in f for f in flags)
  if user_flag or not _jaxlib_is_measured():
    os.environ['XLA_FLAGS'] = ' '.join(flags)
    return 'user' if user_flag else 'xla'
  if choice == 'auto':
    choice = auto_choice(has_avx512())
  flag = {'eigen': EIGEN_FLAG, 'eigen-conv': EIGEN_CONV_FLAG}.get(choice)
  if flag:
    flags.append(flag)
    os.environ[_ADDED_ENV] = flag
  os.environ['XLA_FLAGS'] = ' '.join(flags)
  return choice
