"""Train and evaluate an lgvit model on TFDS.

    python main.py --config=configs/nommer_b.py --workdir=gs://bucket/nommer_b
    python main.py --config=configs/resnet50.py:demo --workdir=/tmp/demo
    python main.py --config=configs/resnet50.py --workdir=... --config.batch_size=256 --config.num_epochs=90

Rerunning the same command resumes from the latest checkpoint in the workdir. On several hosts,
start the same command on each (``jax.distributed.initialize`` runs automatically on TPU pods and
under SLURM/Open MPI, or with --multihost / JAX_COORDINATOR_ADDRESS).
"""
import os
import sys

# TensorFlow only feeds data: keep it off the accelerators and quiet.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file, optionally with :demo.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory (local or gs://) for checkpoints and logs.')
_MULTIHOST = flags.DEFINE_bool('multihost', None, 'Call jax.distributed.initialize() (default: auto-detect).')
_FORCE = flags.DEFINE_bool('force_config', False, 'Resume even if the saved config has another architecture.')
flags.mark_flags_as_required(['config', 'workdir'])


def _want_distributed() -> bool:
  if _MULTIHOST.value is not None:
    return _MULTIHOST.value
  env = os.environ
  return any(k in env for k in ('JAX_COORDINATOR_ADDRESS', 'SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE',
                                'MEGASCALE_COORDINATOR_ADDRESS')) or 'TPU_WORKER_HOSTNAMES' in env and ',' in env.get(
                                    'TPU_WORKER_HOSTNAMES', '')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  import jax
  import tensorflow as tf
  tf.config.set_visible_devices([], 'GPU')
  if _want_distributed():
    jax.distributed.initialize()
  logging.set_verbosity(logging.WARNING)

  from lgvit import train
  from lgvit.checkpoint import CheckpointError
  from lgvit.data.pipeline import DatasetNotFoundError
  from lgvit.models import UnknownModelError
  from lgvit.models.layers import InvalidInputSizeError
  try:
    result = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value, force_config=_FORCE.value)
  except (UnknownModelError, InvalidInputSizeError, DatasetNotFoundError, train.ConfigError, CheckpointError,
          train.NonFiniteLossError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  if jax.process_index() == 0:
    print(f"done: step {result['step']} | top-1 {result.get('eval_top1', float('nan')):.4f} | "
          f"top-5 {result.get('eval_top5', float('nan')):.4f}", flush=True)


if __name__ == '__main__':
  app.run(main)
