"""Train and evaluate an lgvit model on TFDS.

    python main.py --config=configs/nommer_b.py --workdir=gs://bucket/nommer_b
    python main.py --config=configs/nommer.py:variant=b,res=384 --workdir=gs://bucket/nommer_b_384
    python main.py --config=configs/resnet50.py:demo --workdir=/tmp/demo
    python main.py --config=configs/resnet50.py --workdir=... --config.batch_size=256 --config.schedule.lr=0.2

Rerunning the same command resumes from the latest checkpoint in the workdir; after a SIGTERM the
run checkpoints at the next step and exits with status 75 (EX_TEMPFAIL: rerun it). On several hosts,
start the same command on each (``jax.distributed.initialize`` runs automatically on TPU pods and
under SLURM/Open MPI, or with --multihost / JAX_COORDINATOR_ADDRESS; docs/launch.md).

The console shows lgvit's progress, warnings and errors; --verbosity=0 (absl's info level) adds the
libraries' logs, TensorFlow's start-up lines included.
"""
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from lgvit import cli, cpu_kernels, quiet

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file with optional arguments, e.g. '
                                         'configs/nommer.py:variant=b,demo.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory (local or gs://) for checkpoints and logs.')
_MULTIHOST = flags.DEFINE_bool('multihost', None, 'Call jax.distributed.initialize() (default: auto-detect).')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None, 'host:port of process 0 (multi-process runs '
                                   'outside auto-detected clusters); implies --multihost.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Number of processes (with --coordinator_address).')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process (with --coordinator_address).')
_FORCE = flags.DEFINE_bool('force_config', False, 'Resume even if the saved config has another architecture.')
flags.mark_flags_as_required(['config', 'workdir'])

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: the run checkpointed on SIGTERM/preemption; rerun the same command


def _want_distributed() -> bool:
  if _MULTIHOST.value is not None:
    return _MULTIHOST.value
  env = os.environ
  return any(k in env for k in ('JAX_COORDINATOR_ADDRESS', 'SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE',
                                'MEGASCALE_COORDINATOR_ADDRESS')) or 'TPU_WORKER_HOSTNAMES' in env and ',' in env.get(
                                    'TPU_WORKER_HOSTNAMES', '')


def main(argv):
  cpu_kernels.use()  # before the first JAX computation: XLA reads XLA_FLAGS when its CPU client starts
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if flags.FLAGS['verbosity'].present:  # --verbosity=0 (info) or 1 (debug): every library's logs
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '0')
  else:
    cli.quiet_logs('warning')
  # Here, once the log level is set: jax and lgvit.train load TensorFlow's and XLA's loggers.
  import jax
  tf = quiet.import_tensorflow()
  tf.config.set_visible_devices([], 'GPU')  # TensorFlow only feeds data: keep it off the accelerators
  if _COORDINATOR.value:
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  elif _want_distributed():
    jax.distributed.initialize()

  from lgvit import tasks, train

  def run():
    result = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value, force_config=_FORCE.value)
    if result['status'] == train.PREEMPTED:
      return EXIT_PREEMPTED
    if jax.process_index() == 0:
      print(f"done: step {result['step']} | {tasks.of_config(_CONFIG.value).summary(result)}", flush=True)

  sys.exit(cli.report_errors(run))


def parse_flags(argv):
  """absl parsing, but a bad --config / --config.key override is a one-line error, not a traceback."""
  try:
    args = flags.FLAGS(argv)
    _ = _CONFIG.value.model  # config_flags defers file-loading errors to the first access
    return args
  except (flags.Error, OSError) as e:
    msg = str(e)
    if 'No such file or directory' in msg:
      import glob
      names = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(os.path.dirname(__file__) or '.',
                                                                              'configs', '*.py')))
      names = [n for n in names if n not in ('__init__', 'common')]
      missing = msg.split('No such file or directory:')[-1].strip().splitlines()[0]
      msg = f'config file {missing} not found; ' \
            f"available in configs/: {', '.join(names)}"
    else:
      lines = [l.strip() for l in msg.splitlines() if l.strip()]
      msg = f'{lines[0]} {lines[-1]}' if len(lines) > 1 else lines[0]
    print(f'error: {msg}', file=sys.stderr)
  except (KeyError, AttributeError, ValueError, TypeError) as e:
    msg = str(e.args[0] if e.args else e).strip('\'"').replace('\\n', ' ').replace('\n', ' ').replace("\\'", "'")
    print(f'error: bad --config override: {msg}', file=sys.stderr)
  sys.exit(2)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
