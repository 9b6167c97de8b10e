"""Compiling lgvit's steps ahead of time for hardware this host does not have (``python -m lgvit.aot``).

:func:`topology_devices` gives libtpu's compile-only devices of a TPU topology, :func:`compile_step` compiles
``main.py``'s train (or eval) step of a config over them and reads XLA's memory analysis (:class:`Compiled`,
or :class:`DoesNotFit` where libtpu refuses it), :func:`largest_fitting_batch` / :func:`search_below` find the
largest per-chip batch that fits the chip's HBM, and :func:`export_step` lowers the step for another platform
(e.g. 'cuda') with ``jax.export``.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.util
import math
import os
import pathlib
import re
import sys
import time
from importlib import metadata
from typing import Optional

import jax
import jax.numpy as jnp
from jax.experimental import topologies
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lgvit import modeling, optim, schema
from lgvit.models import kernels, model_info

GIB = 2**30
#: HBM per chip (GiB) by JAX device_kind; what the runtime can give a program is a little less.
HBM_GIB = {'TPU v4': 32, 'TPU v5 lite': 16, 'TPU v5': 95, 'TPU v6 lite': 32}
#: Chips per host of multi-host slices; v5e/v6e single-host slices have up to 8 chips (2x4).
HOST_BOUNDS = {'v4': (2, 2, 1), 'v5p': (2, 2, 1), 'v5e': (2, 2, 1), 'v6e': (2, 2, 1)}
MEGACORE = ('v4', 'v5p')  # two TensorCores per chip, one JAX device per chip
REPO = pathlib.Path(__file__).resolve().parents[1]


class AotError(RuntimeError):
  """A one-line, actionable failure (exit status 2)."""


# ---------------------------------------------------------------------------------------------
# The topology.
# ---------------------------------------------------------------------------------------------


def libtpu_requirement() -> str:
  """The libtpu specifier that this jax's ``[tpu]`` extra pins, e.g. '==0.0.42.*' for jax 0.10.2."""
  for req in metadata.requires('jax') or ():
    name, _, marker = req.partition(';')
    if name.strip().startswith('libtpu') and 'tpu' in marker:
      return name.strip()[len('libtpu'):].strip()
  return ''


def check_libtpu():
  """Fails with one line unless a libtpu matching this jax is installed."""
  from packaging.specifiers import SpecifierSet  # here: packaging is a TPU extra (requirements-tpu.txt)
  want = libtpu_requirement()
  hint = f'pip install -r requirements-tpu.txt (or pip install "jax[tpu]=={jax.__version__}")'
  try:
    have = metadata.version('libtpu')
  except metadata.PackageNotFoundError:
    raise AotError(f'libtpu is not installed; {hint}') from None
  if want and have not in SpecifierSet(want):
    raise AotError(f'libtpu {have} does not match jax {jax.__version__} (needs libtpu{want}); {hint}')


def parse_topology(name: str) -> tuple[str, tuple[int, ...]]:
  generation, _, shape = name.partition(':')
  try:
    dims = tuple(int(d) for d in shape.split('x'))
  except ValueError:
    dims = ()
  if generation not in HOST_BOUNDS or not dims or len(dims) != (3 if generation in MEGACORE else 2):
    raise AotError(f'--topology {name!r}: use GEN:SHAPE with GEN in {sorted(HOST_BOUNDS)}, e.g. v5e:2x4 '
                   '(v5e-8), v5e:4x4 (v5e-16, 4 hosts), v4:2x2x1 (v4-8), v4:2x2x4 (v4-32, 4 hosts)')
  return generation, dims


def use_libtpu_for_compiling() -> None:
  """libtpu's settings for a compile-only client, set before libtpu starts (it reads them then): no
  machine-wide lock file (it would make two AOT runs, or a test beside one, on one host fail) and no GCE
  metadata server to ask on a CPU host. A user's own values win."""
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  os.environ.setdefault('TPU_SKIP_MDS_QUERY', '1')


def topology_devices(name: str, chips_per_host: Optional[tuple[int, ...]] = None):
  """The compile-only devices of a TPU topology (one per chip; several processes for multi-host)."""
  generation, dims = parse_topology(name)
  if chips_per_host is None:
    chips = math.prod(dims)
    single_host = generation in ('v5e', 'v6e') and chips <= 8
    chips_per_host = (dims + (1,))[:3] if single_host else HOST_BOUNDS[generation]
  jax.config.update('jax_platforms', 'cpu')  # the host computes nothing; TPUs exist only to compile for
  use_libtpu_for_compiling()
  try:
    return topologies.get_topology_desc(platform='tpu', topology_name=name,
                                        chip_config_name='megacore' if generation in MEGACORE else 'default',
                                        chips_per_host_bounds=tuple(chips_per_host), num_slices=1).devices
  except Exception as e:  # noqa: BLE001 - libtpu reports bad topologies as runtime errors
    raise AotError(f'--topology {name!r}: libtpu refused it: {str(e).splitlines()[0]}') from None


def chip_hbm_bytes(device, override_gib: float = 0.0) -> int:
  if override_gib:
    return int(override_gib * GIB)
  if device.device_kind not in HBM_GIB:
    raise AotError(f'unknown HBM size for {device.device_kind!r}; pass --hbm-gib')
  return HBM_GIB[device.device_kind] * GIB


# ---------------------------------------------------------------------------------------------
# The compiled steps.
# ---------------------------------------------------------------------------------------------


#: Families whose models share one config file, which takes the backbone as its argument.
TASK_CONFIGS = {**{f: f'{f}.py:backbone={{backbone}}' for f in ('mask_rcnn', 'faster_rcnn', 'cascade_rcnn',
                                                                  'cascade_mask_rcnn')},
                'upernet': 'upernet.py:backbone={backbone}'}


def load_config(model: str, config_path: str = ''):
  """``configs/<model>.py`` (``configs/mask_rcnn.py:backbone=B`` for ``mask_rcnn_B``, likewise UperNet; or
  ``config_path``, optionally ``file.py:arg``) as ``main.py`` reads it.

  A registered model without a config file gets ``lgvit.schema.base_config`` (SGD, batch 256).
  """
  config_path = config_path or TASK_CONFIGS.get(model_info(model).family, '{model}.py').format(
      model=model, backbone=model_info(model).defaults.get('backbone', ''))
  path, _, arg = (config_path if config_path.startswith(('/', '.')) or os.sep in config_path
                  else str(REPO / 'configs' / config_path)).partition(':')
  if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # configs import each other as the package `configs`
  if not os.path.exists(path):
    if config_path:
      raise AotError(f'no config file {path}')
    # Baselines without a paper recipe of their own (resnet101, wide_resnet50_2): the base config.
    print(f'note: no configs/{model}.py; using lgvit.schema.base_config({model!r})', file=sys.stderr)
    return schema.base_config(model)
  spec = importlib.util.spec_from_file_location(f'_lgvit_aot_config_{model}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg or None)


@dataclasses.dataclass
class Compiled:
  batch_per_chip: int
  compile_s: float
  flops_per_image: float
  bytes_accessed_per_image: float
  argument_bytes: int
  temp_bytes: int
  output_bytes: int
  alias_bytes: int
  code_bytes: int

  @property
  def total_bytes(self) -> int:
    return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes + self.code_bytes


def step_and_args(config, batch: int, mode: str = 'train', mesh=None):
  """The jitted train (or inference) step of ``config`` and abstract arguments for a global ``batch``.

  With a ``mesh``, the state is replicated and the batch sharded over its ``data`` axis, as in
  ``lgvit.train``; without one, the arguments carry no sharding (for ``jax.export``).
  """
  # Here, not at the top: lgvit.train and lgvit.tasks load TensorFlow (the input pipeline), which the topology
  # and batch-search helpers do without.
  from lgvit import tasks, train

  replicated = NamedSharding(mesh, P()) if mesh is not None else None
  sharded = NamedSharding(mesh, P('data')) if mesh is not None else None
  size = config.data.image_size
  model = modeling.build_model(config)
  abstract_vars = jax.eval_shape(lambda: modeling.init_variables(model, size, config.seed))

  def spec(tree, sharding):
    return jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), tree)

  task = tasks.of_config(config)
  shapes = task.batch_shapes(task.settings(config), batch, train=mode == 'train')
  data = {k: jax.ShapeDtypeStruct(shape, dtype, sharding=sharded) for k, (shape, dtype) in shapes.items()}
  placed = {} if mesh is None else {'out_shardings': (replicated, replicated) if mode == 'train' else replicated}
  if mode == 'infer':
    return jax.jit(task.eval_step(model, task.settings(config)), **placed), (spec(abstract_vars, replicated), data)
  # The schedule's constants (steps per epoch) change no shape, so one ImageNet-sized guess does.
  steps_per_epoch = max(1_281_167 // config.batch_size, 1)
  schedule = optim.lr_schedule(config.schedule, config.batch_size, steps_per_epoch,
                              int(config.num_epochs * steps_per_epoch))
  tx = optim.make_optimizer(config.optim, abstract_vars['params'], schedule)
  state = spec(jax.eval_shape(functools.partial(train.create_state, model, tx, config)), replicated)
  args = (state, data, jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=replicated))
  step = train.make_train_step(model, tx, config, schedule)
  return jax.jit(step, donate_argnums=0 if mesh is not None else (), **placed), args


class DoesNotFit(Exception):
  """libtpu refused the program: it needs more HBM than the chip has (no memory analysis then)."""

  def __init__(self, batch_per_chip: int, compile_s: float, message: str):
    super().__init__(message)
    self.batch_per_chip, self.compile_s, self.message = batch_per_chip, compile_s, message

  @property
  def needed_bytes(self) -> Optional[int]:
    """What libtpu says the program needed, where its message states it."""
    units = {'K': 2**10, 'M': 2**20, 'G': 2**30, 'T': 2**40}
    found = (re.search(r'temporaries \(?([\d.]+)([KMGT])', self.message)
             or re.search(r'[Uu]sed ([\d.]+)([KMGT])', self.message))
    return int(float(found.group(1)) * units[found.group(2)]) if found else None


def compile_step(config, devices, batch_per_chip: int, mode: str = 'train') -> Compiled:
  """Lowers and compiles the train (or eval) step of ``config`` over a ``data`` mesh of ``devices``.

  Raises ``DoesNotFit`` where libtpu refuses the program for the chip's HBM.
  """
  step, args = step_and_args(config, batch_per_chip * len(devices), mode, modeling.make_mesh(devices))
  t0 = time.perf_counter()
  try:
    compiled = step.lower(*args).compile()
  except Exception as e:  # noqa: BLE001 - jaxlib's runtime error type moves between releases
    if 'RESOURCE_EXHAUSTED' not in str(e):
      raise
    message = ' '.join(str(e).split())
    refusal = message[message.index('RESOURCE_EXHAUSTED'):][:300]
    raise DoesNotFit(batch_per_chip, time.perf_counter() - t0, refusal) from None
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  mem = compiled.memory_analysis()
  return Compiled(batch_per_chip, compile_s, float(cost.get('flops', math.nan)) / batch_per_chip,
                  float(cost.get('bytes accessed', math.nan)) / batch_per_chip, mem.argument_size_in_bytes,
                  mem.temp_size_in_bytes, mem.output_size_in_bytes, mem.alias_size_in_bytes,
                  mem.generated_code_size_in_bytes)


def export_step(config, platform: str, batch: int = 2, mode: str = 'train'):
  """``jax.export`` of the step for ``platform`` ('cuda', 'tpu', ...) with the native kernels.

  Lowering only: it shows that every op of the model has a lowering on that platform, without its
  compiler.
  """
  with kernels.force('native'):
    step, args = step_and_args(config, batch, mode)
    return jax.export.export(step, platforms=[platform])(*args)


def largest_fitting_batch(measure, hbm: int, first: Compiled, search: str = 'verify',
                          refused: Optional[int] = None) -> str:
  """The largest per-chip batch whose program fits ``hbm``, from an affine fit of total bytes.

  ``measure(b)`` compiles at per-chip batch b (and may raise ``DoesNotFit``); ``refused``, a batch
  libtpu already refused, bounds the answer. Returns the batch as text: '0' when even one image per
  chip does not fit, '~N' for an unchecked fit, '>=N' for the one-compile lower bound ('A-B' where
  that bound reaches the refused batch).
  """
  ceiling = math.inf if refused is None else refused - 1
  if search == 'one':
    fixed = first.total_bytes - first.temp_bytes
    bound = max(int(first.batch_per_chip * (hbm - fixed) // max(first.temp_bytes, 1)), 0)
    return f'>={bound}' if bound <= ceiling else f'{first.batch_per_chip}-{ceiling}'

  def checked(b):
    try:
      return measure(b)
    except DoesNotFit as e:  # counts as a program bigger than the chip
      return Compiled(b, e.compile_s, math.nan, math.nan, 0, max(e.needed_bytes or 0, hbm + 1), 0, 0, 0)

  done = {first.batch_per_chip: first}
  probe = max(first.batch_per_chip // 2, 1) if first.batch_per_chip > 1 else 2
  done[probe] = checked(probe)
  (b0, c0), (b1, c1) = sorted(done.items())
  slope = max((c1.total_bytes - c0.total_bytes) / (b1 - b0), 1.0)
  intercept = c0.total_bytes - slope * b0
  guess = int(max(min((hbm - intercept) // slope, ceiling), 0))
  if search == 'fit':
    return f'~{guess}'
  for _ in range(2):  # the fit is checked; one step down if it was optimistic
    if guess == 0:
      break
    if guess not in done:
      done[guess] = checked(guess)
    if done[guess].total_bytes <= hbm:
      break
    guess = max(int(guess * hbm / done[guess].total_bytes) - 1, 0)
  fitting = [b for b, c in done.items() if c.total_bytes <= hbm]
  return str(max(fitting) if fitting else 0)


def search_below(measure, hbm: int, refusal: DoesNotFit, search: str) -> str:
  """The batch search when the requested batch was refused: halve until a program compiles."""
  batch = refusal.batch_per_chip // 2
  while batch >= 1:
    try:
      start = measure(batch)
    except DoesNotFit:
      batch //= 2
      continue
    return largest_fitting_batch(measure, hbm, start, search, refused=refusal.batch_per_chip)
  return '0'
