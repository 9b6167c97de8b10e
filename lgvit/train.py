"""Training and evaluation: one ``jax.jit`` step over a data-parallel device mesh.

Every device of every host holds a replica of the state; the global batch is sharded over the
mesh's ``data`` axis. This is what users know as "pmapped" training, expressed with ``jit`` +
shardings (``pmap`` is in maintenance mode). One consequence: BatchNorm statistics are reduced over
the *global* batch (SyncBN), whereas the papers normalised per GPU.

Randomness is a pure function of ``(seed, step)``: the step's key is ``fold_in(key(seed), step)``,
and the data stream is a pure function of ``(seed, epoch)`` (see ``lgvit.data.pipeline``). A run
resumed from a checkpoint therefore continues bit for bit.
"""
from __future__ import annotations

import functools
import json
import os
import signal
import time
from typing import Any, Optional

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lgvit import checkpoint as ckpt
from lgvit import optim
from lgvit import workdir as layout
from lgvit.data import augment
from lgvit.data import mixup as mixup_lib
from lgvit.data import pipeline
from lgvit.errors import ConfigError, NonFiniteLossError
from lgvit.models import model_info
from lgvit.modeling import RNG_STREAMS, build_model, compute_dtype, cross_entropy, init_variables, normalize

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: the run checkpointed on SIGTERM/preemption; rerun the same command
NOT_AVERAGED = ('skipped_images', 'data_fingerprint')  # per-step metrics that a log row does not average


class Preempted(SystemExit):

  def __init__(self, step):
    super().__init__(EXIT_PREEMPTED)
    self.step = step


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  ema_params: Any = None
  ema_batch_stats: Any = None


# ---------------------------------------------------------------------------------------------
# Set-up helpers.
# ---------------------------------------------------------------------------------------------


def make_mesh(devices=None) -> jax.sharding.Mesh:
  """A 1-D ``data`` mesh over ``devices`` (default: every device of every process)."""
  devices = jax.devices() if devices is None else list(devices)
  return jax.make_mesh((len(devices),), ('data',), axis_types=(jax.sharding.AxisType.Auto,), devices=devices)


def check_config(config):
  if config.batch_size % jax.device_count():
    raise ConfigError(f'batch_size {config.batch_size} is not divisible by the {jax.device_count()} devices; '
                      f'use a multiple of {jax.device_count()} (--config.batch_size=...)')
  if config.eval_batch_size % jax.device_count():
    raise ConfigError(f'eval_batch_size {config.eval_batch_size} is not divisible by the {jax.device_count()} '
                      'devices; use a multiple of the device count')
  compute_dtype(config)  # a ConfigError names the valid dtypes


ARCH_KEYS = ('model', 'model_kwargs', 'num_classes')


def check_workdir_config(config, workdir: str, force: bool):
  """Refuses to resume a workdir whose saved architecture differs from the command's."""
  current = json.loads(config.to_json_best_effort())
  saved = layout.read_saved_config_json(workdir)
  if saved is not None:
    diff = [k for k in ARCH_KEYS if saved.get(k) != current.get(k)]
    if diff and not force:
      details = '; '.join(f'{k}: saved {saved.get(k)!r} vs now {current.get(k)!r}' for k in diff)
      raise ConfigError(f'{workdir} holds a run of another architecture ({details}). Use a new --workdir, '
                        'or pass --force_config to resume anyway.')
  if jax.process_index() == 0:
    layout.write_json(os.path.join(workdir, layout.CONFIG), current)


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
  dtype = compute_dtype(config)

  def train_step(state: TrainState, batch, key):
    key = jax.random.fold_in(key, state.step)
    k_mix, k_erase, *k_streams = jax.random.split(key, 2 + len(RNG_STREAMS))
    images = normalize(batch['image'])
    if config.random_erase_prob > 0:  # per image, before mixing, as timm does
      images = augment.random_erasing(k_erase, images, config.random_erase_prob, config.random_erase_mode)
    images, targets = mixup_lib.mixup_cutmix(
        k_mix, images, batch['label'], num_classes=config.num_classes, mixup_alpha=config.mixup_alpha,
        cutmix_alpha=config.cutmix_alpha, prob=config.mixup_prob, switch_prob=config.mixup_switch_prob,
        smoothing=config.label_smoothing)
    rngs = dict(zip(RNG_STREAMS, k_streams))
    # Unreadable images keep their slot (see lgvit.data.pipeline) but stay out of the loss, and so do
    # the images that Mixup/CutMix blended with them.
    valid = batch['valid'].astype(jnp.float32) if 'valid' in batch else jnp.ones(batch['label'].shape, jnp.float32)
    weight = valid * valid[::-1] if (config.mixup_alpha > 0 or config.cutmix_alpha > 0) else valid

    def loss_fn(params):
      logits, new_vars = model.apply({'params': params, 'batch_stats': state.batch_stats}, images.astype(dtype),
                                     train=True, rngs=rngs, mutable=['batch_stats'])
      loss = jnp.sum(weight * cross_entropy(logits, targets)) / jnp.maximum(jnp.sum(weight), 1.0)
      return loss, (logits, new_vars.get('batch_stats', {}))

    (loss, (logits, new_bs)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
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
        'train_top1': jnp.sum((jnp.argmax(logits, -1) == batch['label']) * valid) / jnp.maximum(jnp.sum(valid), 1.0),
        'skipped_images': jnp.sum(1.0 - valid),
        'data_fingerprint': batch_fingerprint(batch),
    }
    return new_state, metrics

  return train_step


def make_eval_step(model, config):
  dtype = compute_dtype(config)

  def eval_step(variables, batch):
    logits = model.apply(variables, normalize(batch['image'], dtype), train=False).astype(jnp.float32)
    labels, mask = batch['label'], batch['mask'].astype(jnp.float32)
    top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
    loss = cross_entropy(logits, jax.nn.one_hot(labels, logits.shape[-1]))
    return {
        'count': jnp.sum(mask),
        'loss': jnp.sum(loss * mask),
        'top1': jnp.sum((top5[:, 0] == labels) * mask),
        'top5': jnp.sum(jnp.any(top5 == labels[:, None], axis=-1) * mask),
        'skipped': jnp.sum(batch['unreadable']),
    }

  return eval_step


# ---------------------------------------------------------------------------------------------
# Logging.
# ---------------------------------------------------------------------------------------------


class MetricsLog:
  """Console + TensorBoard + ``metrics.jsonl`` (deterministic values only, so reruns compare equal)."""

  def __init__(self, workdir: str, resume_step: int, enabled: bool):
    self.enabled = enabled
    self.path = os.path.join(workdir, layout.METRICS)
    self.tb = None
    if not enabled:
      return
    if os.path.exists(self.path):  # drop rows written after the checkpoint we resume from
      with open(self.path) as f:
        rows = [line for line in f if line.strip() and json.loads(line).get('step', 0) <= resume_step]
      with open(self.path + '.tmp', 'w') as f:
        f.writelines(rows)
      os.replace(self.path + '.tmp', self.path)
    try:
      import tensorflow as tf
      self.tb = tf.summary.create_file_writer(os.path.join(workdir, layout.TENSORBOARD))
    except Exception:  # noqa: BLE001 - TensorBoard is a convenience
      self.tb = None

  def write(self, step: int, row: dict[str, float], extra: Optional[dict[str, float]] = None):
    if not self.enabled:
      return
    with open(self.path, 'a') as f:
      f.write(json.dumps({'step': step, **row}) + '\n')
    if self.tb is not None:
      import tensorflow as tf
      with self.tb.as_default(step=step):
        for k, v in {**row, **(extra or {})}.items():
          if k != 'data_fingerprint':
            tf.summary.scalar(k, v)
      self.tb.flush()


def _fmt_time(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, m, s = seconds // 3600, seconds // 60 % 60, seconds % 60
  return f'{h}h{m:02d}m' if h else f'{m}m{s:02d}s'


# ---------------------------------------------------------------------------------------------
# The loop.
# ---------------------------------------------------------------------------------------------


class _SigtermFlag:

  def __init__(self):
    self.set = False
    self._old = None

  def __enter__(self):
    try:
      self._old = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not in the main thread
      self._old = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.set = True

  def __exit__(self, *exc):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)


def _global_batch(local: dict[str, np.ndarray], sharding) -> dict[str, jax.Array]:
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def evaluate(eval_fn, variables, config, builder, batch_sharding, split: Optional[str] = None) -> dict[str, float]:
  local_batch = config.eval_batch_size // jax.process_count()
  ds, steps = pipeline.eval_dataset(config, builder, local_batch=local_batch, process_index=jax.process_index(),
                                    process_count=jax.process_count(), split=split)
  totals = None
  for batch in pipeline.as_numpy(ds):
    out = eval_fn(variables, _global_batch(batch, batch_sharding))
    totals = out if totals is None else jax.tree_util.tree_map(jnp.add, totals, out)
  totals = jax.device_get(totals)
  n = max(float(totals['count']), 1.0)
  return {'count': int(totals['count']), 'loss': float(totals['loss']) / n, 'top1': float(totals['top1']) / n,
          'top5': float(totals['top5']) / n, 'skipped': int(totals['skipped'])}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, force_config: bool = False,
                       async_checkpoints: bool = True) -> dict[str, Any]:
  """Trains ``config`` in ``workdir``, resuming from its latest checkpoint; returns the final eval."""
  process_index, process_count = jax.process_index(), jax.process_count()
  is_main = process_index == 0
  check_config(config)
  if config.matmul_precision != 'default':
    jax.config.update('jax_default_matmul_precision', config.matmul_precision)
  builder = pipeline.get_builder(config.dataset, config.data_dir)
  n_train = pipeline.num_examples(builder, config.train_split)
  n_eval = pipeline.num_examples(builder, config.eval_split)  # a missing eval split fails before training
  if pipeline.num_classes(builder) != config.num_classes:
    raise ConfigError(f'{config.dataset} has {pipeline.num_classes(builder)} classes but config.num_classes is '
                      f'{config.num_classes}; set --config.num_classes={pipeline.num_classes(builder)}')
  model = build_model(config)
  mesh = make_mesh()
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P('data'))

  try:
    steps_per_epoch = pipeline.steps_per_epoch(config, n_train, process_count)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  if steps_per_epoch == 0:
    raise ConfigError(f'batch_size {config.batch_size} is larger than the {n_train} training examples')
  total_steps = config.num_train_steps if config.num_train_steps > 0 else int(config.num_epochs * steps_per_epoch)
  schedule = optim.lr_schedule(config, steps_per_epoch, total_steps)

  # Abstract init first: an impossible image size fails here with the model's own message.
  abstract_vars = jax.eval_shape(functools.partial(init_variables, model, config.image_size, config.seed))
  tx = optim.make_optimizer(config, abstract_vars['params'], schedule)

  def create_state():
    variables = init_variables(model, config.image_size, config.seed)
    params, bs = variables['params'], variables['batch_stats']
    ema = config.ema_decay > 0
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=bs, opt_state=tx.init(params),
                      ema_params=params if ema else None, ema_batch_stats=bs if ema else None)

  abstract_state = jax.eval_shape(create_state)
  state_sharding = jax.tree_util.tree_map(lambda _: replicated, abstract_state)
  abstract_state = jax.tree_util.tree_map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                                          abstract_state, state_sharding)

  check_workdir_config(config, workdir, force_config)
  checkpointer = ckpt.TrainCheckpointer(workdir, config.keep_checkpoints, async_checkpoints)
  best = ckpt.BestCheckpointer(workdir) if is_main or process_count > 1 else None
  restored = checkpointer.restore_latest(abstract_state)
  if restored is not None:
    state, meta, start_step = restored
    best_value = meta.get('best_value', -1.0)
    if is_main:
      print(f'Resuming {workdir} from step {start_step} (checkpoint {checkpointer.directory}/{start_step}).', flush=True)
  else:
    state = jax.jit(create_state, out_shardings=state_sharding)()
    start_step, best_value = 0, -1.0
    if config.init_from:
      loaded = ckpt.load_variables(config.init_from)
      fitted = ckpt.adapt_variables(loaded, {'params': state.params, 'batch_stats': state.batch_stats},
                                    config.init_skip, model_info(config.model).resize_rules)
      fitted = jax.device_put(fitted, replicated)
      state = state.replace(params=fitted['params'], batch_stats=fitted['batch_stats'],
                            opt_state=jax.jit(tx.init, out_shardings=state_sharding.opt_state)(fitted['params']))
      if config.ema_decay:
        state = state.replace(ema_params=fitted['params'], ema_batch_stats=fitted['batch_stats'])
      if is_main:
        print(f'Initialised from {config.init_from}.', flush=True)

  key = jax.random.PRNGKey(config.seed)
  train_step = jax.jit(make_train_step(model, tx, config, schedule), in_shardings=(state_sharding, batch_sharding, replicated),
                       out_shardings=(state_sharding, replicated), donate_argnums=0)
  eval_step = jax.jit(make_eval_step(model, config), out_shardings=replicated)
  log = MetricsLog(workdir, start_step, is_main)
  eval_every = max(int(round(config.eval_every_epochs * steps_per_epoch)), 1)

  if is_main:
    print(f'{config.model}: {sum(np.prod(p.shape) for p in jax.tree_util.tree_leaves(state.params)):,} params | '
          f'{jax.device_count()} devices on {process_count} process(es) | global batch {config.batch_size} | '
          f'{steps_per_epoch} steps/epoch | {total_steps} steps | {n_eval} eval images', flush=True)

  def run_eval(step) -> dict[str, float]:
    row = {f'eval_{k}': v for k, v in evaluate(eval_step, {'params': state.params, 'batch_stats': state.batch_stats},
                                                config, builder, batch_sharding).items()}
    if config.ema_decay:
      ema = evaluate(eval_step, {'params': state.ema_params, 'batch_stats': state.ema_batch_stats}, config, builder,
                     batch_sharding)
      row.update({f'eval_ema_{k}': v for k, v in ema.items() if k not in ('count', 'skipped')})
    row['epoch'] = step / steps_per_epoch
    log.write(step, row)
    if is_main:
      ema_txt = f" | ema top-1 {row['eval_ema_top1']:.4f}" if config.ema_decay else ''
      print(f"eval @ step {step}: top-1 {row['eval_top1']:.4f} | top-5 {row['eval_top5']:.4f} | "
            f"loss {row['eval_loss']:.4f} | {row['eval_count']} images{ema_txt}", flush=True)
      if row['eval_skipped']:
        print(f"WARNING: eval skipped {row['eval_skipped']} unreadable image(s).", flush=True)
    return row

  def save(step, force=False):
    checkpointer.save(step, state, {'step': step, 'best_value': best_value}, force=force)

  history: list[dict[str, jax.Array]] = []
  t_last, step_last = time.time(), start_step
  last_eval: dict[str, float] = {}
  step = start_step
  with _SigtermFlag() as sigterm:
    while step < total_steps:
      epoch, in_epoch = divmod(step, steps_per_epoch)
      ds = pipeline.train_dataset(config, builder, epoch=epoch, start_step=in_epoch, steps_per_epoch=steps_per_epoch,
                                  process_index=process_index, process_count=process_count)
      for batch in pipeline.as_numpy(ds):
        state, metrics = train_step(state, _global_batch(batch, batch_sharding), key)
        history.append(metrics)
        step += 1
        boundary = step % config.log_every_steps == 0 or step == total_steps
        want_ckpt = step % config.checkpoint_every_steps == 0 or step == total_steps
        want_eval = step % eval_every == 0 or step == total_steps
        preempt = _preemption_requested(sigterm, checkpointer, step)
        if boundary or want_ckpt or want_eval or preempt:
          rows = jax.device_get(history)
          history.clear()
          losses = np.array([r['loss'] for r in rows])
          bad = np.flatnonzero(~np.isfinite(losses))
          if bad.size:
            raise NonFiniteLossError(f'loss became {losses[bad[0]]} at step {step - len(rows) + bad[0] + 1}; '
                                     f'stopping without saving (last good checkpoint: {checkpointer.latest_step()}). '
                                     'Lower the LR, enable grad clipping or use float32.')
          if boundary:
            now = time.time()
            ips = (step - step_last) * config.batch_size / max(now - t_last, 1e-9)
            eta = (total_steps - step) * config.batch_size / max(ips, 1e-9)
            row = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k not in NOT_AVERAGED}
            row['data_fingerprint'] = combine_fingerprints(r['data_fingerprint'] for r in rows)
            skipped = int(sum(r['skipped_images'] for r in rows))
            if skipped:
              row['skipped_images'] = skipped  # summed over the logging interval
              if is_main:
                print(f'WARNING: skipped {skipped} unreadable image(s) in steps {step - len(rows) + 1}..{step}.',
                      flush=True)
            row['epoch'] = step / steps_per_epoch
            log.write(step, row, {'images_per_sec': ips})
            if is_main:
              print(f"step {step}/{total_steps} | epoch {row['epoch']:.2f} | loss {row['loss']:.4f} | "
                    f"lr {row['lr']:.3g} | {ips:.1f} img/s | ETA {_fmt_time(eta)}", flush=True)
            t_last, step_last = now, step
          if want_eval:
            last_eval = run_eval(step)
            metric = last_eval.get('eval_' + config.best_metric, last_eval['eval_top1'])
            if metric > best_value:
              best_value = metric
              if best is not None:
                use_ema = config.best_metric.startswith('ema_')
                best.save(step, {'params': state.ema_params if use_ema else state.params,
                                 'batch_stats': state.ema_batch_stats if use_ema else state.batch_stats},
                          {'step': step, config.best_metric: metric})
          if want_ckpt or preempt:
            save(step, force=True)
          if preempt:
            checkpointer.wait()
            if is_main:
              print(f'Preempted: saved step {step}; rerun the same command to resume.', flush=True)
            checkpointer.close()
            raise Preempted(step)
        if step >= total_steps:
          break
  checkpointer.close()
  if best is not None:
    best.close()
  if not last_eval:  # resumed a finished run
    last_eval = run_eval(step)
  return {'step': step, **last_eval}


def _preemption_requested(sigterm: _SigtermFlag, checkpointer: ckpt.TrainCheckpointer, step: int) -> bool:
  if jax.process_count() == 1:
    return sigterm.set
  # Every process must agree on the step at which to stop.
  from jax.experimental import multihost_utils
  if step % 10:
    return False
  flags = multihost_utils.process_allgather(np.array([sigterm.set], np.int32))
  return bool(np.any(flags)) or checkpointer.manager.reached_preemption(step)
