"""lgvit: local-global vision backbones in JAX/Flax."""
import os

EIGEN_CPU_FLAG = '--xla_cpu_experimental_ynn_fusion_type='


def use_eigen_cpu_kernels():
  """Sends XLA:CPU dots and convolutions to Eigen instead of YNNPACK (opt-in; CPU inference).

  Measured on a 2-core AVX-512 CPU with jaxlib 0.10 (benchmarks/cpu_results.md): inference of the
  convolutional models is 30-40% faster. It is not the default because Eigen's multi-threaded
  reductions depend on how many threads share a computation: a 2-process run then drifts from the
  1-process run by more than round-off, which breaks lgvit's "same result on any host count". XLA
  reads XLA_FLAGS only when its CPU client starts, so call this (or set ``LGVIT_XLA_CPU_EIGEN=1``)
  before the first JAX computation. The flag is experimental, so it is only added for the jaxlib
  versions it was measured on (an unknown flag would abort XLA).
  """
  flags = os.environ.get('XLA_FLAGS', '')
  if 'xla_cpu_experimental_ynn_fusion_type' in flags:
    return
  try:
    from importlib.metadata import version
    jaxlib_version = version('jaxlib')
  except Exception:  # pylint: disable=broad-except
    return
  if jaxlib_version.startswith('0.10.'):
    os.environ['XLA_FLAGS'] = (flags + ' ' + EIGEN_CPU_FLAG).strip()


if os.environ.get('LGVIT_XLA_CPU_EIGEN', '0') == '1':
  use_eigen_cpu_kernels()
