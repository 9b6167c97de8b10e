"""The task interface (lgvit.tasks): a third task is a module and a config; the loop does not change.

The toy task below lives in this file only: it trains a registered classifier to tell odd digits from
even ones on the embedded digits and has its own evaluator type. ``lgvit.train`` runs it, logs its
metrics under the entry's prefix and picks ``best/`` by its main metric without knowing it exists.
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import RESNET_TINY

from configs import resnet50
from lgvit import checkpoint, evals, schema, tasks, train
from lgvit.data import pipeline
from lgvit.errors import ConfigError
from lgvit.modeling import build_model, cross_entropy, normalize


class ParityEvaluator(evals.Evaluator):
  """Accuracy of the odd/even call over a split (an independent numpy count of the same thing is below)."""

  def __init__(self, spec, context):
    super().__init__(spec, context)
    self.builder = pipeline.get_builder(spec.dataset, context.settings.data_dir)
    self.num_examples = pipeline.num_examples(self.builder, spec.split)
    model, dtype = context.model, context.settings.dtype

    def step(variables, batch):
      logits = model.apply(variables, normalize(batch['image'], dtype), train=False)
      right = (jnp.argmax(logits, -1) == batch['label'] % 2) * batch['mask']
      return {'right': jnp.sum(right), 'count': jnp.sum(batch['mask'])}

    self.step = jax.jit(step, out_shardings=context.replicated)

  def run(self, variables):
    settings = self.context.settings
    ds, _ = pipeline.eval_dataset(settings.data, self.builder, local_batch=settings.eval_batch_size, process_index=0,
                                  process_count=1, split=self.spec.split)
    right = count = 0
    for batch in pipeline.as_numpy(ds):
      out = jax.device_get(self.step(variables, evals.global_batch(batch, self.context.batch_sharding)))
      right, count = right + int(out['right']), count + int(out['count'])
    return {'accuracy': right / max(count, 1), 'count': count}

  def summary(self, metrics):
    return f"parity accuracy {metrics['accuracy']:.4f} | {metrics['count']} images"


class Parity(tasks.Task):
  name = 'parity'
  main_metric = 'accuracy'

  def check_model(self, name):
    if tasks.of_model(name).name != 'classification':  # any classifier with a 2-way head
      raise ConfigError(f'parity trains classifiers, not {name}')

  def train_forward(self, model, settings):
    def forward(params, batch_stats, images, batch, rngs, aug_keys):
      del aug_keys
      logits, new_vars = model.apply({'params': params, 'batch_stats': batch_stats}, images, train=True, rngs=rngs,
                                     mutable=['batch_stats'])
      loss = jnp.mean(cross_entropy(logits, jax.nn.one_hot(batch['label'] % 2, 2)))
      return loss, ({}, new_vars.get('batch_stats', {}))
    return forward

  def eval_step(self, model, settings):
    raise NotImplementedError

  def shard_fn(self, settings):
    return pipeline.shard_dataset

  def dataset_classes(self, builder, settings):
    return 2

  def summary(self, result):
    return f"parity {result['eval_accuracy']:.4f}"


@pytest.fixture
def parity():
  tasks.register(Parity())
  evals.register('parity', ParityEvaluator)
  yield
  del tasks.TASKS['parity'], evals.TYPES['parity']


def test_a_task_registered_from_a_test_file_trains_and_evaluates(digits_dir, parity, tmp_path):
  c = resnet50.get_config('demo')
  c.unlock()
  c.task, c.num_classes = 'parity', 2
  c.data.data_dir = digits_dir
  c.model_kwargs.update(RESNET_TINY)
  c.num_train_steps, c.log_every_steps, c.checkpoint_every_steps, c.best_metric = 6, 3, 6, 'accuracy'
  c.evals.train = schema.eval_entry(split='train', every=1000.0)  # a second entry: only at the last step
  result = train.train_and_evaluate(c, str(tmp_path / 'run'), async_checkpoints=False)
  assert result['status'] == train.FINISHED and 0.0 <= result['eval_accuracy'] <= 1.0
  assert result['eval_count'] == 360 and result['eval_train_count'] == 1437
  assert tasks.get('parity').summary(result).startswith('parity ')

  # The logged accuracy is the share of odd/even calls that a separate numpy pass over the split gets right.
  model = build_model(c)
  variables = checkpoint.load_variables(str(tmp_path / 'run'))  # the latest weights, which the last row scored
  builder = pipeline.get_builder('lgvit_digits', c.data.data_dir)
  ds, _ = pipeline.eval_dataset(c.data, builder, local_batch=120, process_index=0, process_count=1)
  right = 0
  for batch in pipeline.as_numpy(ds):
    logits = np.asarray(model.apply(variables, normalize(jnp.asarray(batch['image'])), train=False))
    right += int(np.sum((logits.argmax(-1) == batch['label'] % 2) * batch['mask']))
  rows = [json.loads(l) for l in (tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()]
  last = [r for r in rows if 'eval_accuracy' in r][-1]
  assert abs(last['eval_accuracy'] - right / 360) < 1e-9 and last == {**last, **{k: result[k] for k in last}}
  assert [r['step'] for r in rows if 'eval_train_accuracy' in r] == [6]


def test_an_unknown_task_or_evaluator_type_is_a_config_error(parity, tmp_path):
  c = resnet50.get_config('demo')
  c.unlock()
  c.task = 'captioning'
  with pytest.raises(ConfigError, match=r"task must be one of 'classification', 'detection', 'segmentation', 'parity'"):
    train.check_config(c)
  c.task = 'classification'
  c.evals.main.type = 'bleu'
  c.data.data_dir = str(tmp_path / 'tfds')
  with pytest.raises(ConfigError, match=r"evaluator main: unknown type 'bleu'"):
    train.train_and_evaluate(c, str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()


@pytest.mark.parametrize('config_arg,shape', [('resnet50', (224, 224)), ('upernet:backbone=nommer_t', (512, 704))])
def test_every_task_steps_trace_at_the_sizes_users_run(config_arg, shape):
  """The tasks' train step (train crop: the config's size) and eval step (a padded eval bucket of ``shape``,
  non-square for UperNet; labels on the full label canvas) at full size, by jax.eval_shape (no compute)."""
  import functools
  import importlib
  from lgvit import optim
  from lgvit.modeling import init_variables
  module, _, arg = config_arg.partition(':')
  c = importlib.import_module(f'configs.{module}').get_config(arg or None)
  task, size = tasks.of_config(c), c.data.image_size
  model = build_model(c)
  abstract = jax.eval_shape(functools.partial(init_variables, model, size, 0))
  tx = optim.make_optimizer(c.optim, abstract['params'], lambda s: 1e-3)
  state = jax.eval_shape(functools.partial(train.create_state, model, tx, c))
  dense = task.section == 'seg'
  spec = jax.ShapeDtypeStruct
  batch = {'image': spec((2, size, size, 3), jnp.uint8), 'valid': spec((2,), jnp.int32),
           'label': spec((2, size, size), jnp.uint8) if dense else spec((2,), jnp.int32)}
  if dense:
    batch['content'] = spec((2, 2), jnp.int32)
  _, metrics = jax.eval_shape(train.make_train_step(model, tx, c, lambda s: 1e-3), state, batch, jax.random.PRNGKey(0))
  assert metrics['loss'].shape == () and ('train_pixel_acc' if dense else 'train_top1') in metrics
  batch = {'image': spec((2, *shape, 3), jnp.uint8), 'mask': spec((2,), jnp.int32), 'unreadable': spec((2,), jnp.int32)}
  if dense:
    batch.update(label=spec((2, *c.seg.label_canvas), jnp.uint8), scaled=spec((2, 2), jnp.int32),
                 size=spec((2, 2), jnp.int32), downscaled=spec((2,), jnp.int32))
  else:
    batch['label'] = spec((2,), jnp.int32)
  sums = jax.eval_shape(task.eval_step(model, task.settings(c)), abstract, batch)
  assert (sums['confusion'].shape == (150, 150)) if dense else (sums['top1'].shape == ())
