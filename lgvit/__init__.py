"""lgvit: local-global vision backbones in JAX/Flax."""
import os

_YNN_FLAG = 'xla_cpu_experimental_ynn_fusion_type'
#: Every XLA:CPU dot and convolution on Eigen instead of YNNPACK (opt-in, ``LGVIT_XLA_CPU_KERNELS=eigen``).
EIGEN_CPU_FLAG = f'--{_YNN_FLAG}='
#: Convolutions (and their gradients) on Eigen, every other YNNPACK fusion kept: the measured default on
#: x86 CPUs without AVX-512 (docs/kernels.md, "XLA:CPU's kernel libraries per CPU").
EIGEN_CONV_FLAG = f'--{_YNN_FLAG}=-individual_convolution'
CPU_KERNEL_CHOICES = ('auto', 'xla', 'eigen-conv', 'eigen')
#: Names the flag lgvit added, so that a second call, or a child process that inherits XLA_FLAGS, can tell
#: it from a user's own.
_ADDED_ENV = '_LGVIT_ADDED_XLA_CPU_FLAG'


def _jaxlib_is_measured() -> bool:
  # The flag is experimental: an unknown value would abort XLA, and on another jaxlib the libraries'
  # speeds differ, so lgvit only chooses for the jaxlib it was measured on.
  try:
    from importlib.metadata import version
    return version('jaxlib').startswith('0.10.')
  except Exception:  # pylint: disable=broad-except
    return False


def cpu_has_avx512(cpuinfo: str = '/proc/cpuinfo') -> bool | None:
  """Whether this x86 CPU has AVX-512 (``avx512f``); None where that cannot be read (not Linux/x86)."""
  try:
    with open(cpuinfo) as f:
      for line in f:
        if line.startswith('flags'):
          return 'avx512f' in line.split(':', 1)[1].split()
  except OSError:
    pass
  return None


def auto_cpu_kernels(avx512: bool | None) -> str:
  """What ``auto`` picks. On an AVX2-only AMD EPYC (Zen 3) YNNPACK's convolutions do not use a second
  core (a 3x3 conv's forward and gradients ~100 ms on one or two threads, Eigen's ~40 ms on two)
  while its dots are faster than Eigen's (Swin-T training 3.17 vs 2.47 img/s), so convolutions go to
  Eigen there. AVX-512 CPUs keep XLA's defaults, which their side-by-side table was measured with
  (docs/kernels.md, "XLA:CPU's kernel libraries per CPU")."""
  return 'eigen-conv' if avx512 is False else 'xla'


def use_cpu_kernels(choice: str | None = None) -> str:
  """Chooses XLA:CPU's kernel library for dots and convolutions by adding to ``XLA_FLAGS``; returns the choice.

  ``choice`` (default: ``LGVIT_XLA_CPU_KERNELS``, else ``auto``): ``xla`` keeps XLA's defaults
  (YNNPACK), ``eigen-conv`` sends convolutions to Eigen, ``eigen`` sends dots and convolutions to
  Eigen, ``auto`` picks by CPU (:func:`auto_cpu_kernels`). Results agree within float32 round-off
  (tests/test_cpu_kernels.py). XLA reads ``XLA_FLAGS`` only when its CPU client starts, so this runs
  when lgvit is imported (call it yourself only before the first JAX computation). A user's own
  ``--xla_cpu_experimental_ynn_fusion_type`` always wins (returns ``user``); only jaxlib 0.10 gets a
  choice (elsewhere ``xla``). The flag is read by XLA:CPU alone: TPU and GPU programs are unchanged.
  """
  global CPU_KERNELS
  CPU_KERNELS = _choose_cpu_kernels(choice)
  return CPU_KERNELS


def _choose_cpu_kernels(choice: str | None) -> str:
  if choice is None:
    choice = os.environ.get('LGVIT_XLA_CPU_KERNELS') or ('eigen' if os.environ.get('LGVIT_XLA_CPU_EIGEN') == '1'
                                                        else 'auto')
  if choice not in CPU_KERNEL_CHOICES:
    raise ValueError(f'LGVIT_XLA_CPU_KERNELS={choice!r}: use one of {", ".join(CPU_KERNEL_CHOICES)}')
  flags = os.environ.get('XLA_FLAGS', '').split()
  added = os.environ.pop(_ADDED_ENV, None)
  if added in flags:  # lgvit's own earlier choice (this process's, or a parent's): replaced, not kept
    flags.remove(added)
  user_flag = any(_YNN_FLAG in f for f in flags)
  if user_flag or not _jaxlib_is_measured():
    os.environ['XLA_FLAGS'] = ' '.join(flags)
    return 'user' if user_flag else 'xla'
  if choice == 'auto':
    choice = auto_cpu_kernels(cpu_has_avx512())
  flag = {'eigen': EIGEN_CPU_FLAG, 'eigen-conv': EIGEN_CONV_FLAG}.get(choice)
  if flag:
    flags.append(flag)
    os.environ[_ADDED_ENV] = flag
  os.environ['XLA_FLAGS'] = ' '.join(flags)
  return choice


def use_eigen_cpu_kernels():
  """Every XLA:CPU dot and convolution on Eigen (``use_cpu_kernels('eigen')``)."""
  return use_cpu_kernels('eigen')


CPU_KERNELS = 'xla'  #: this process's choice, as use_cpu_kernels last returned it
use_cpu_kernels()
