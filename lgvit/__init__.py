"""lgvit: local-global vision backbones in JAX/Flax."""
import os


def _prefer_eigen_for_cpu_convolutions():
  """Sends XLA:CPU dots and convolutions to Eigen instead of YNNPACK.

  Measured on a 2-core AVX-512 CPU with jaxlib 0.10 (benchmarks/cpu_results.md): inference of the
  convolutional models is 30-40% faster and training is unchanged. XLA only reads XLA_FLAGS when its
  CPU client starts, so this works when lgvit is imported before the first JAX computation. The flag is
  experimental, so it is only set for the jaxlib versions it was measured on (an unknown flag would
  abort XLA); set it yourself, or LGVIT_XLA_CPU_DEFAULTS=0 to leave XLA_FLAGS alone.
  """
  if os.environ.get('LGVIT_XLA_CPU_DEFAULTS', '1') == '0':
    return
  flags = os.environ.get('XLA_FLAGS', '')
  if 'xla_cpu_experimental_ynn_fusion_type' in flags:
    return
  try:
    from importlib.metadata import version
    jaxlib_version = version('jaxlib')
  except Exception:  # pylint: disable=broad-except
    return
  if jaxlib_version.startswith('0.10.'):
    os.environ['XLA_FLAGS'] = (flags + ' --xla_cpu_experimental_ynn_fusion_type=').strip()


_prefer_eigen_for_cpu_convolutions()
