"""Training and evaluation: one ``jax.jit`` step over a data-parallel device mesh.

Every device of every host holds a replica of the state; the global batch is sharded over the
mesh's ``data`` axis. This is what users know as "pmapped" training, expressed with ``jit`` +
shardings (``pmap`` is in maintenance mode). One consequence: BatchNorm statistics are reduced over
the *global* batch (SyncBN), whereas the papers normalised per GPU.

Randomness is a pure function of ``(seed, step)``: the step's key is ``fold_in(key(seed), step)``,
and the data stream is a pure function of ``(seed, epoch)`` (see ``lgvit.data.pipeline``). A run
resumed from a checkpoint therefore continues bit for bit.

The loop (:func:`train_and_evaluate`) runs train steps and, when it is time (:func:`itstime`), a few
periodic actions, each a function from the loop's state to the next: :func:`flush_history` (fetches
the step metrics, stops on a non-finite loss), :func:`log_row`, :func:`evaluate_and_keep_best` and
:func:`checkpoint`. A SIGTERM ends the run at a step boundary with a checkpoint and the status
:data:`PREEMPTED`; ``main.py`` turns that into exit status 75. The handler is in place from the very
start, so a SIGTERM during setup or compilation ends the same way.

Before anything is written to the workdir the config and the workdir are validated
(:func:`check_config`, ``lgvit.workdir.check_writable_workdir``, the saved config and the
checkpoint's state structure); then the run takes the workdir's lock
(``lgvit.bookkeeping.WorkdirLock``: one run per workdir), records its config and trains. The
metrics of the steps since the last log row travel in each checkpoint's meta, so a resumed run
logs the same rows as an uninterrupted one.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from typing import Any, Optional, Sequence

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lgvit import bookkeeping
from lgvit import checkpoint as ckpt
from lgvit import evals, optim, schema, tasks
from lgvit import workdir as layout
from lgvit.data import pipeline
from lgvit.errors import ConfigError, NonFiniteLossError
from lgvit.evals import global_batch
from lgvit.modeling import RNG_STREAMS, build_model, init_variables, make_mesh, normalize
from lgvit.models import model_info

#: What :func:`train_and_evaluate` reports in ``result['status']``.
FINISHED, PREEMPTED = 'finished', 'preempted'
NOT_AVERAGED = ('skipped_images', 'data_fingerprint')  # per-step metrics that a log row does not average


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  ema_params: Any = None
  ema_batch_stats: Any = None

  def variables(self, ema: bool = False) -> dict[str, Any]:
    """The raw (or EMA) weights as model variables."""
    if ema:
      return {'params': self.ema_params, 'batch_stats': self.ema_batch_stats}
    return {'params': self.params, 'batch_stats': self.batch_stats}


def best_metric_uses_ema(config) -> bool:
  """Whether ``config.best_metric`` scores the EMA weights (those are what ``best/`` keeps)."""
  return bool(config.best_metric.startswith('ema_') and config.ema_decay)


def check_config(config) -> tasks.Task:
  """Refuses a config that cannot run here (lgvit.schema.check, an unknown task); returns its task."""
  schema.check(config, device_count=jax.device_count())
  task = tasks.of_config(config)
  task.check_model(config.model)
  return task


# ---------------------------------------------------------------------------------------------
# Steps.
# ---------------------------------------------------------------------------------------------


def _mix32(x: jax.Array) -> jax.Array:
  """murmur3's 32-bit finaliser: a bijection that spreads every input bit over the output."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x85EBCA6B)
  x = x ^ (x >> 13)
  x = x * jnp.uint32(0xC2B2AE35)
  return x ^ (x >> 16)


def batch_fingerprint(batch: dict[str, jax.Array]) -> jax.Array:
  """A uint32 digest of a global batch: every value, at its global position, in every field.

  Each element contributes ``mix(value, field, position)`` to a sum modulo 2**32. Integer addition
  is exact and associative, so the digest is the same however the batch is sharded over devices and
  processes, while moving, changing or swapping any element changes it (up to 2**-32 collisions).
  It is logged as ``data_fingerprint`` so that runs on different topologies, and resumed runs, can
  prove that they saw the same data stream.
  """
  total = jnp.zeros((), jnp.uint32)
  for field, key in enumerate(sorted(batch)):
    flat = batch[key].reshape(-1)
    if flat.dtype.itemsize == 4:
      flat = lax.bitcast_convert_type(flat, jnp.uint32)
    else:
      flat = flat.astype(jnp.uint32)
    position = lax.iota(jnp.uint32, flat.size) + jnp.uint32(field * 0x9E3779B9 % 2**32)
    total = total + jnp.sum(_mix32(_mix32(position) ^ flat), dtype=jnp.uint32)
  return total


def combine_fingerprints(fingerprints) -> int:
  """One order-sensitive digest of several steps' fingerprints (a logging interval)."""
  digest = 0
  for f in fingerprints:
    digest = (digest * 1_000_003 ^ int(f)) % 2**32
  return digest


def ema_update(ema, new, decay):
  return jax.tree_util.tree_map(lambda e, n: decay * e + (1.0 - decay) * n, ema, new)


def make_train_step(model, tx, config, schedule):
  """The jit-able ``(state, batch, key) -> (state, metrics)`` of ``config.task``: the task's forward
  and loss, then the optimiser update, EMA and the step metrics shared by every task."""
  task = tasks.of_config(config)
  forward = task.train_forward(model, task.settings(config))

  def train_step(state: TrainState, batch, key):
    key = jax.random.fold_in(key, state.step)
    k_mix, k_erase, *k_streams = jax.random.split(key, 2 + len(RNG_STREAMS))
    rngs = dict(zip(RNG_STREAMS, k_streams))
    fed = batch if 'valid' in batch else {**batch, 'valid': jnp.ones(batch['label'].shape[:1], jnp.int32)}
    images = normalize(batch['image'])
    (loss, (task_metrics, new_bs)), grads = jax.value_and_grad(
        lambda p: forward(p, state.batch_stats, images, fed, rngs, (k_mix, k_erase)), has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=new_bs, opt_state=opt_state)
    if config.ema_decay:
      new_state = new_state.replace(ema_params=ema_update(state.ema_params, params, config.ema_decay),
                                    ema_batch_stats=ema_update(state.ema_batch_stats, new_bs, config.ema_decay))
    metrics = {
        'loss': loss,
        'grad_norm': optax.global_norm(grads),
        'lr': schedule(state.step),
        **task_metrics,
        'skipped_images': jnp.sum(1.0 - fed['valid'].astype(jnp.float32)),
        'data_fingerprint': batch_fingerprint(batch),
    }
    return new_state, metrics

  return train_step


# ---------------------------------------------------------------------------------------------
# The run: what is fixed for its whole length, and the loop's state between steps.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Run:
  """Everything a run fixes before its first step."""
  config: ml_collections.ConfigDict
  workdir: str
  builder: Any
  tx: optax.GradientTransformation
  steps_per_epoch: int
  total_steps: int
  task: tasks.Task
  settings: schema.Settings  # resolved once from config (lgvit.schema.resolve)
  train_step: Any
  batch_sharding: NamedSharding
  checkpointer: ckpt.TrainCheckpointer
  best: Optional[ckpt.BestCheckpointer]
  log: bookkeeping.MetricsLog
  is_main: bool
  evaluators: tuple[tuple[evals.Evaluator, int], ...] = ()  # config.evals, each with its steps between evals

  def say(self, text: str):
    if self.is_main:
      print(text, flush=True)


@dataclasses.dataclass(frozen=True)
class LoopState:
  """What changes from step to step: the train state and the loop's own bookkeeping."""
  train: TrainState
  step: int
  best_value: float
  history: tuple = ()  # per-step metrics (device arrays) since the last flush
  pending: tuple = ()  # per-step metrics (host values) flushed since the last log row
  last_log: tuple[float, int] = (0.0, 0)  # (time, step) of the previous log row
  last_eval: dict = dataclasses.field(default_factory=dict)


def itstime(step: int, every: int, total_steps: int) -> bool:
  """big_vision's rule: every ``every`` steps, and at the last step."""
  return step == total_steps or (every > 0 and step % every == 0)


def setup(config: ml_collections.ConfigDict, workdir: str, force_config: bool, async_checkpoints: bool,
          cleanup: contextlib.ExitStack) -> tuple[Run, LoopState]:
  """Checks the config against the data and devices, builds the steps, and restores or creates the state.

  Nothing is written to ``workdir`` until every check passed; what is opened then (the workdir's
  lock, the checkpointers) is closed by ``cleanup``.
  """
  layout.check_writable_workdir(workdir)
  task = check_config(config)
  settings = task.settings(config)
  if config.matmul_precision != 'default':
    jax.config.update('jax_default_matmul_precision', config.matmul_precision)
  builder = pipeline.get_builder(config.data.dataset, config.data.data_dir)
  n_train = pipeline.num_examples(builder, config.data.train_split)
  n_eval = pipeline.num_examples(builder, config.data.eval_split)  # a missing eval split fails before training
  classes = task.dataset_classes(builder, settings)
  if classes is not None and classes != config.num_classes:
    raise ConfigError(f'{config.data.dataset} has {classes} classes but config.num_classes is '
                      f'{config.num_classes}; set --config.num_classes={classes}')
  try:
    steps_per_epoch = pipeline.steps_per_epoch(config.data, config.batch_size, n_train, jax.process_count())
  except ValueError as e:
    raise ConfigError(str(e)) from None
  if steps_per_epoch == 0:
    raise ConfigError(f'batch_size {config.batch_size} is larger than the {n_train} training examples')
  total_steps = config.num_train_steps if config.num_train_steps > 0 else int(config.num_epochs * steps_per_epoch)
  schedule = optim.lr_schedule(config.schedule, config.batch_size, steps_per_epoch, total_steps)
  model = build_model(config)
  # Abstract init first: an impossible image size fails here with the model's own message.
  abstract_vars = jax.eval_shape(functools.partial(init_variables, model, config.data.image_size, config.seed))
  tx = optim.make_optimizer(config.optim, abstract_vars['params'], schedule)
  mesh = make_mesh()
  replicated, batch_sharding = NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))
  create = functools.partial(create_state, model, tx, config)
  abstract_state = jax.eval_shape(create)
  state_sharding = jax.tree_util.tree_map(lambda _: replicated, abstract_state)
  # A missing dataset of an evaluator fails here, before anything is written or trained.
  context = evals.Context(model, settings, mesh)
  evaluators = tuple((evals.build(spec, context), evals.every_steps(spec, config.eval_every_epochs, steps_per_epoch))
                     for spec in evals.specs(config))
  changes = bookkeeping.check_workdir_config(config, workdir, force_config)

  cleanup.enter_context(bookkeeping.WorkdirLock(workdir))  # the first write to the workdir
  checkpointer = ckpt.TrainCheckpointer(workdir, config.keep_checkpoints, async_checkpoints)
  cleanup.callback(checkpointer.close)
  is_main = jax.process_index() == 0
  try:
    restored = checkpointer.restore_latest(jax.tree_util.tree_map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), abstract_state, state_sharding))
  except ckpt.StateMismatchError as e:
    why = f"config changes since it was saved: {'; '.join(changes)}" if changes else 'no config field changed'
    raise ckpt.StateMismatchError(f'{e}; {why}. Such a change cannot resume: use a new --workdir (with '
                                  f'--config.init_from={workdir} to start from these weights).') from None
  if restored is not None:
    state, meta, start_step = restored
    loop = LoopState(state, start_step, meta.get('best_value', -1.0), pending=tuple(meta.get('pending_rows', ())))
    run_say = print if is_main else (lambda *a, **k: None)
    run_say(f'Resuming {workdir} from step {start_step} (checkpoint {checkpointer.directory}/{start_step}).',
            flush=True)
    for line in changes:
      run_say(f'Config changed at resume (step {start_step}): {line}', flush=True)
  else:
    state = jax.jit(create, out_shardings=state_sharding)()
    if config.init_from:
      state = init_from_checkpoint(state, tx, config, replicated, state_sharding)
    loop = LoopState(state, 0, -1.0)
  bookkeeping.record_config(config, workdir, loop.step)
  best = ckpt.BestCheckpointer(workdir) if is_main or jax.process_count() > 1 else None
  if best is not None:
    cleanup.callback(best.close)
  run = Run(config, workdir, builder, tx, steps_per_epoch, total_steps, task=task, settings=settings,
            train_step=jax.jit(make_train_step(model, tx, config, schedule),
                               in_shardings=(state_sharding, batch_sharding, replicated),
                               out_shardings=(state_sharding, replicated), donate_argnums=0),
            batch_sharding=batch_sharding, checkpointer=checkpointer, best=best,
            log=bookkeeping.MetricsLog(workdir, loop.step, is_main), is_main=is_main, evaluators=evaluators)
  scored = ', '.join(f'{e.spec.name} ({e.num_examples})' for e, _ in evaluators)
  run.say(f'{config.model}: {sum(np.prod(p.shape) for p in jax.tree_util.tree_leaves(state.params)):,} params | '
          f'{jax.device_count()} devices on {jax.process_count()} process(es) | global batch {config.batch_size} | '
          f'{steps_per_epoch} steps/epoch | {total_steps} steps | {n_eval} eval images | evals: {scored}')
  return run, dataclasses.replace(loop, last_log=(time.time(), loop.step))


def create_state(model, tx, config) -> TrainState:
  variables = init_variables(model, config.data.image_size, config.seed)
  params, bs = variables['params'], variables['batch_stats']
  ema = config.ema_decay > 0
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=bs, opt_state=tx.init(params),
                    ema_params=params if ema else None, ema_batch_stats=bs if ema else None)


def init_from_checkpoint(state: TrainState, tx, config, replicated, state_sharding) -> TrainState:
  """``config.init_from``'s weights in a fresh state, resized by the model's rules (fresh optimiser)."""
  loaded = ckpt.load_variables(config.init_from)
  if 'backbone' in state.params and 'backbone' not in loaded.get('params', {}):
    # A classification run (or converted checkpoint) of the backbone: its weights go under 'backbone';
    # its classifier has no place here, and the segmentation heads keep their fresh values.
    loaded = {col: {'backbone': tree} for col, tree in loaded.items()}
  fitted = ckpt.adapt_variables(loaded, {'params': state.params, 'batch_stats': state.batch_stats},
                                config.init_skip, model_info(config.model).resize_rules,
                                zeros=config.init_zeros)
  fitted = jax.device_put(fitted, replicated)
  state = state.replace(params=fitted['params'], batch_stats=fitted['batch_stats'],
                        opt_state=jax.jit(tx.init, out_shardings=state_sharding.opt_state)(fitted['params']))
  if config.ema_decay:
    state = state.replace(ema_params=fitted['params'], ema_batch_stats=fitted['batch_stats'])
  if jax.process_index() == 0:
    print(f'Initialised from {config.init_from}.', flush=True)
  return state


# ---------------------------------------------------------------------------------------------
# The periodic actions.
# ---------------------------------------------------------------------------------------------


def train_one_step(run: Run, loop: LoopState, batch, key) -> LoopState:
  state, metrics = run.train_step(loop.train, global_batch(batch, run.batch_sharding), key)
  return dataclasses.replace(loop, train=state, step=loop.step + 1, history=loop.history + (metrics,))


def _host_row(row: dict[str, Any]) -> dict[str, Any]:
  """A step's metrics as JSON values (they travel in the checkpoint's meta until their log row)."""
  return {k: int(v) if k == 'data_fingerprint' else float(v) for k, v in row.items()}


def flush_history(run: Run, loop: LoopState) -> LoopState:
  """Fetches the metrics of the steps since the last flush; a non-finite loss stops the run unsaved.

  The rows join ``loop.pending`` (every step since the last log row, which :func:`log_row` averages).
  """
  run.checkpointer.check()  # a failed background save stops the run before more work goes unsaved
  rows = [_host_row(r) for r in jax.device_get(list(loop.history))]
  losses = np.array([r['loss'] for r in rows])
  bad = np.flatnonzero(~np.isfinite(losses))
  if bad.size:
    run.checkpointer.wait()  # a save still in flight is either finished or reported before we name one
    finished = run.checkpointer.finished_steps()
    last = f'{run.checkpointer.directory}/{finished[-1]}' if finished else 'none, the run has no checkpoint yet'
    warning = run.log.divergence_before(finished[-1]) if finished else None
    if warning:
      run.say(f'WARNING: {warning}.')
    raise NonFiniteLossError(f'loss became {losses[bad[0]]} at step {loop.step - len(rows) + bad[0] + 1}; '
                             f'stopping without saving (last good checkpoint: {last}). '
                             'Lower the LR, enable grad clipping or use float32.')
  return dataclasses.replace(loop, history=(), pending=loop.pending + tuple(rows))


def log_row(run: Run, loop: LoopState) -> LoopState:
  """One row of the step metrics averaged since the last row (skipped images summed, fingerprints combined).

  It covers ``loop.pending``: every step since the previous row, whatever evals or checkpoints
  flushed the device metrics in between.
  """
  rows = loop.pending
  step, total, batch = loop.step, run.total_steps, run.config.batch_size
  now, (t_last, step_last) = time.time(), loop.last_log
  ips = (step - step_last) * batch / max(now - t_last, 1e-9)
  eta = (total - step) * batch / max(ips, 1e-9)
  row = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k not in NOT_AVERAGED}
  row['data_fingerprint'] = combine_fingerprints(r['data_fingerprint'] for r in rows)
  skipped = int(sum(r['skipped_images'] for r in rows))
  if skipped:
    row['skipped_images'] = skipped  # summed over the logging interval
    run.say(f'WARNING: skipped {skipped} unreadable image(s) in steps {step - len(rows) + 1}..{step}.')
  row['epoch'] = step / run.steps_per_epoch
  run.log.write(step, row, {'images_per_sec': ips})
  run.say(f"step {step}/{total} | epoch {row['epoch']:.2f} | loss {row['loss']:.4f} | "
          f"lr {row['lr']:.3g} | {ips:.1f} img/s | ETA {bookkeeping.format_duration(eta)}")
  return dataclasses.replace(loop, last_log=(now, step), pending=())


def evaluate_and_log(run: Run, loop: LoopState, due: Optional[Sequence[evals.Evaluator]] = None) -> LoopState:
  """Runs the ``due`` evaluators (default: all) on the weights each entry names; logs their metrics as one row
  (each under its entry's prefix) and a console line each."""
  step, row = loop.step, {}
  for evaluator in (due if due is not None else [e for e, _ in run.evaluators]):
    spec = evaluator.spec
    metrics = evaluator.run(loop.train.variables(ema=spec.weights == 'ema'))
    row.update({spec.prefix + k: v for k, v in metrics.items()})
    run.say(f'eval @ step {step}' + (f' [{spec.label}]' if spec.label else '') + f': {evaluator.summary(metrics)}')
    if metrics.get('skipped'):
      run.say(f"WARNING: eval {spec.name} skipped {metrics['skipped']} unreadable image(s).")
  row['epoch'] = step / run.steps_per_epoch
  run.log.write(step, row)
  return dataclasses.replace(loop, last_eval=row)


def evaluate_and_keep_best(run: Run, loop: LoopState, due: Sequence[evals.Evaluator]) -> LoopState:
  """:func:`evaluate_and_log`, then saves the weights to ``best/`` when ``config.best_metric`` improved."""
  loop = evaluate_and_log(run, loop, due)
  metric_name, state = run.config.best_metric, loop.train
  metric = loop.last_eval.get('eval_' + metric_name, loop.last_eval.get('eval_' + run.task.main_metric))
  if metric is None or metric <= loop.best_value:
    return loop
  if run.best is not None:
    run.best.save(loop.step, state.variables(ema=best_metric_uses_ema(run.config)),
                  {'step': loop.step, metric_name: metric})
  return dataclasses.replace(loop, best_value=metric)


def checkpoint(run: Run, loop: LoopState) -> LoopState:
  run.checkpointer.save(loop.step, loop.train, {'step': loop.step, 'best_value': loop.best_value,
                                                'pending_rows': list(loop.pending)}, force=True)
  return loop


def finish(run: Run, loop: LoopState, status: str) -> dict[str, Any]:
  """Waits for the last save; the result is ``{'status', 'step', **last eval row}``.

  A rerun of a finished run reports the eval row its first run logged (or evaluates once if none).
  """
  if status == FINISHED and not loop.last_eval:
    logged = run.log.eval_row(loop.step)
    loop = dataclasses.replace(loop, last_eval=logged) if logged else evaluate_and_log(run, loop)
  run.checkpointer.wait()
  if status == PREEMPTED:
    run.say(f'Preempted: saved step {loop.step}; rerun the same command to resume.')
  return {'status': status, 'step': loop.step, **loop.last_eval}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, force_config: bool = False,
                       async_checkpoints: bool = True) -> dict[str, Any]:
  """Trains ``config`` in ``workdir``, resuming from its latest checkpoint.

  Returns ``{'status': FINISHED or PREEMPTED, 'step': ..., 'eval_top1': ..., ...}`` (the last eval).
  """
  key = jax.random.PRNGKey(config.seed)
  # SIGTERM is caught from the start: during setup and compilation too it ends the run as PREEMPTED.
  with bookkeeping.SigtermFlag() as sigterm, contextlib.ExitStack() as cleanup:
    run, loop = setup(config, workdir, force_config, async_checkpoints, cleanup)
    while loop.step < run.total_steps:
      epoch, in_epoch = divmod(loop.step, run.steps_per_epoch)
      ds = pipeline.train_dataset(config.data, config.aug, run.builder, batch_size=config.batch_size, seed=config.seed,
                                  epoch=epoch, start_step=in_epoch, steps_per_epoch=run.steps_per_epoch,
                                  process_index=jax.process_index(), process_count=jax.process_count(),
                                  shard_fn=run.task.shard_fn(run.settings))
      for batch in pipeline.as_numpy(ds):
        loop = train_one_step(run, loop, batch, key)
        due_log, due_ckpt = (itstime(loop.step, every, run.total_steps) for every in
                             (config.log_every_steps, config.checkpoint_every_steps))
        due_eval = [e for e, every in run.evaluators if itstime(loop.step, every, run.total_steps)]
        preempt = bookkeeping.preemption_requested(sigterm, run.checkpointer, loop.step)
        if due_log or due_eval or due_ckpt or preempt:
          loop = flush_history(run, loop)
          if due_log:
            loop = log_row(run, loop)
          if due_eval:
            loop = evaluate_and_keep_best(run, loop, due_eval)
          if due_ckpt or preempt:
            loop = checkpoint(run, loop)
          if preempt:
            return finish(run, loop, PREEMPTED)
        if loop.step >= run.total_steps:
          break
    return finish(run, loop, FINISHED)
