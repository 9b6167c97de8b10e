"""lgvit: local-global vision backbones in JAX/Flax."""
import os

EIGEN_CPU_FLAG = '--xla_cpu_experimental_ynn_fusion_type='


def use_eigen_cpu_kernels():
  """Sends XLA:CPU dots and convolutions to Eigen instead of YNNPACK (opt-in; CPU inference).

  Measured earlier on a 2-core AVX-512 AMD EPYC with jaxlib 0.10: inference of ResNet-50, NomMer-T,
  CoTNet-50, LESA-R50 and SALG-T 17-22% faster (Swin-T 6% slower); on an Intel Xeon some cells got
  slower with it (ResNet-50 1-core inference 0.79x), so it is not the default (the side-by-side
  table, benchmarks/official/, is at the default flags). It is as correct as the default kernels: the multi-device and multi-process tests
  (tests/test_distributed.py, docs/determinism.md) pass with it. XLA reads XLA_FLAGS only when its
  CPU client starts, so call this (or set ``LGVIT_XLA_CPU_EIGEN=1``) before the first JAX
  computation. The flag is experimental, so it is only added for the jaxlib versions it was measured
  on (an unknown flag would abort XLA).
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
