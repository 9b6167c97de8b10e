"""Evaluators: one interface for everything a run scores, in training and by ``python -m lgvit.evaluate``.

Each entry of ``config.evals`` (``lgvit.schema.eval_entry``) is ``{type, dataset, split, weights, every,
prefix}``; :func:`specs` resolves them into :class:`EvalSpec` values (the main eval of the config's own
split, its EMA twin, the ImageNet test sets, ...). A task registers the evaluator ``type`` s it offers
(:func:`register`); :func:`build` makes an :class:`Evaluator` of a spec, which finds its dataset (a
missing one fails before any training) and whose :meth:`Evaluator.run` scores a set of weights over
every image of its split once. The train loop and the evaluate command iterate over evaluators and
never look inside one (big_vision's ``evaluators/common.py`` is the model). docs/evaluation.md lists the
evaluators and their metrics.
"""
from __future__ import annotations

import dataclasses
import pickle
from typing import Any, Callable

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lgvit import schema
from lgvit.data import pipeline
from lgvit.errors import ConfigError, DatasetNotFoundError
from lgvit.modeling import make_mesh

#: Metrics that are counts, not averages over the scored images.
COUNTS = ('count', 'skipped', 'no_label', 'downscaled')


@dataclasses.dataclass(frozen=True)
class EvalSpec:
  """One resolved entry of ``config.evals``."""
  name: str  # its key in config.evals; the console and the results JSON name it so
  type: str  # a registered evaluator type
  dataset: str  # TFDS name, with its builder config
  split: str
  weights: str = 'raw'  # 'raw' | 'ema'
  every: float = 0.0  # epochs between evals (0: the config's eval_every_epochs)
  prefix: str = ''  # of its metric keys in metrics.jsonl

  @property
  def label(self) -> str:
    """How the console tags its lines ('' for the entry logged as plain ``eval_*``)."""
    return '' if self.prefix == 'eval_' else self.name


@dataclasses.dataclass(frozen=True)
class Context:
  """What every evaluator is built with: the model, the resolved settings and the device mesh."""
  model: Any  # flax.linen.Module
  settings: schema.Settings
  mesh: jax.sharding.Mesh
  options: dict = dataclasses.field(default_factory=dict)  # a command line's evaluator options (e.g. mode)

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())

  @property
  def batch_sharding(self) -> NamedSharding:
    return NamedSharding(self.mesh, P('data'))


class Evaluator:
  """Scores weights on one split. Subclasses (a task's evaluator types) set :attr:`num_examples` when built
  (after finding the dataset) and implement :meth:`run` and :meth:`summary`."""
  num_examples: int = 0

  def __init__(self, spec: EvalSpec, context: Context):
    self.spec, self.context = spec, context

  def run(self, variables) -> dict[str, float]:
    """Metrics of ``variables`` (``{'params', 'batch_stats'}``, replicated over the mesh): averages over the
    scored images and the counts of :data:`COUNTS`; every process returns the metrics of the whole split."""
    raise NotImplementedError

  def summary(self, metrics: dict[str, float]) -> str:
    """One console line of ``metrics``."""
    raise NotImplementedError


TYPES: dict[str, Callable[[EvalSpec, Context], Evaluator]] = {}


def register(name: str, factory: Callable[[EvalSpec, Context], Evaluator]) -> None:
  """Makes ``type: name`` usable in ``config.evals`` (a task module calls it when imported)."""
  TYPES[name] = factory


def build(spec: EvalSpec, context: Context) -> Evaluator:
  if spec.type not in TYPES:
    raise ConfigError(f"evaluator {spec.name}: unknown type {spec.type!r}; use one of {', '.join(map(repr, TYPES))} "
                      f'(--config.evals.{spec.name}.type=...)')
  return TYPES[spec.type](spec, context)


# ---------------------------------------------------------------------------------------------
# config.evals -> specs.
# ---------------------------------------------------------------------------------------------


def _spec(name: str, entry, config) -> EvalSpec:
  return EvalSpec(name=name, type=entry.type or config.task, dataset=entry.dataset or config.data.dataset,
                  split=entry.split or config.data.eval_split, weights=entry.weights, every=float(entry.every),
                  prefix=entry.prefix or f'eval_{schema.eval_key(name)}_')


def specs(config, *, weights: str | None = None) -> list[EvalSpec]:
  """The entries of ``config.evals`` that run: ``main`` first, then ``ema``, then the rest by name; 'ema'
  entries only if the run keeps EMA weights, none with ``every < 0``. ``weights`` (the evaluate command)
  scores every entry on those weights instead, each split once."""
  order = sorted(config.evals, key=lambda n: (n != 'main', n != 'ema', n))
  out = [_spec(n, config.evals[n], config) for n in order if config.evals[n].every >= 0]
  if weights is not None:
    once = {}
    for spec in out:
      once.setdefault((spec.type, spec.dataset, spec.split), dataclasses.replace(spec, weights=weights))
    return list(once.values())
  return [s for s in out if s.weights != 'ema' or config.ema_decay]


def spec_from_name(name: str, config) -> EvalSpec:
  """An evaluator named on a command line: an entry of ``config.evals``, a set of the ImageNet suite
  (``lgvit.schema.IMAGENET_SUITE``) or ``DATASET:SPLIT`` of any TFDS dataset of the config's task."""
  if name in config.get('evals', {}):
    return _spec(name, config.evals[name], config)
  dataset, sep, split = name.partition(':')
  if name in schema.IMAGENET_SUITE or (sep and dataset and split):
    dataset, split = schema.IMAGENET_SUITE.get(name, (dataset, split))
    return _spec(name, schema.eval_entry(dataset=dataset, split=split), config)
  raise ConfigError(f"unknown evaluator {name!r}; use one of {', '.join(schema.IMAGENET_SUITE)} or DATASET:SPLIT of "
                    'a TFDS dataset (e.g. imagenet2012:validation)')


def names(value) -> list[str]:
  """A comma-separated list of evaluator names (``--evals``), each once."""
  out = []
  for name in str(value or '').split(','):
    if name.strip() and name.strip() not in out:
      out.append(name.strip())
  return out


def every_steps(spec: EvalSpec, eval_every_epochs: float, steps_per_epoch: int) -> int:
  """Steps between the evals of ``spec`` (at least 1)."""
  return max(int(round((spec.every or eval_every_epochs) * steps_per_epoch)), 1)


# ---------------------------------------------------------------------------------------------
# Helpers the evaluators share.
# ---------------------------------------------------------------------------------------------


def find_dataset(spec: EvalSpec, data_dir, hint=None):
  """``(builder, number of examples of spec.split)``; a missing dataset or split fails with the
  evaluator's name (and ``hint``: how to prepare it) before any training."""
  try:
    builder = pipeline.get_builder(spec.dataset, data_dir, hint=hint)
    return builder, pipeline.num_examples(builder, spec.split)
  except DatasetNotFoundError as e:
    raise DatasetNotFoundError(f'evaluator {spec.name}: {e}') from None


def on_local_devices(variables):
  """``(variables on this process's devices, the batch sharding over them)``: for evaluators where each
  process scores its own shard with its own (possibly differently shaped) batches."""
  mesh = make_mesh(jax.local_devices())
  return local_copy(variables, NamedSharding(mesh, P())), NamedSharding(mesh, P('data'))


def global_batch(local: dict[str, np.ndarray], sharding) -> dict[str, jax.Array]:
  """A process's share of a global batch as global arrays of ``sharding``."""
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def local_copy(tree, sharding):
  """A replicated global array tree as arrays on this process's devices only (its own shards of them)."""
  def one(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
      return jax.device_put(x, sharding)
    shards = {s.device: s.data for s in x.addressable_shards}
    return jax.make_array_from_single_device_arrays(x.shape, sharding, [shards[d] for d in sharding.mesh.devices.flat])
  return jax.tree_util.tree_map(one, tree)


def pad_batch(batch: dict, size: int) -> dict:
  """A partial batch padded with all-zero (``mask == 0``) slots to ``size`` images."""
  missing = size - len(batch['mask'])
  return {k: np.concatenate([v, np.zeros((missing,) + v.shape[1:], v.dtype)]) if missing else v
          for k, v in batch.items()}


def sum_over_processes(totals: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Per-process int64 sums -> the sums over every process (each process gets them)."""
  if jax.process_count() == 1:
    return totals
  return {k: np.asarray(multihost_utils.process_allgather(np.asarray(v, np.int64))).sum(0) for k, v in totals.items()}


def gather_objects(obj: Any) -> list[Any]:
  """Every process's picklable ``obj``, in process order (``[obj]`` for one process): how evaluators whose
  results do not sum (COCO detections) meet. Each process's pickle travels as a padded uint8 array."""
  if jax.process_count() == 1:
    return [obj]
  data = np.frombuffer(pickle.dumps(obj), np.uint8)
  sizes = np.asarray(multihost_utils.process_allgather(np.int64(data.size))).reshape(-1)
  padded = np.zeros(int(sizes.max()), np.uint8)
  padded[:data.size] = data
  gathered = np.asarray(multihost_utils.process_allgather(padded))
  return [pickle.loads(gathered[i, :int(n)].tobytes()) for i, n in enumerate(sizes)]
