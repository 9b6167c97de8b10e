"""The task interface and the registry of tasks (lgvit.tasks imports every task module)."""
from __future__ import annotations

from typing import Any, Callable, Optional

from lgvit import schema
from lgvit.errors import ConfigError
from lgvit.models import model_info


class Task:
  """The interface every task implements (see lgvit/tasks/classification.py for one)."""
  name: str = ''
  #: The eval metric ``best/`` falls back to when ``config.best_metric`` is not in an eval row.
  main_metric: str = ''
  #: The task's own config section (``config.<section>``, e.g. ``seg``), '' if none.
  section: str = ''

  def check_model(self, name: str) -> None:
    """Refuses a model that this task cannot train (by default: one registered for another task)."""
    if model_info(name).task != self.name:
      raise ConfigError(f'{name} is a {model_info(name).task} model but config.task is {self.name!r}; use a config '
                        'of its task (configs/upernet.py for UperNet models, configs/mask_rcnn.py for Mask R-CNN)')

  def settings(self, config) -> schema.Settings:
    return schema.resolve(config, self.section)

  def train_forward(self, model, settings: schema.Settings) -> Callable:
    """``(params, batch_stats, images, batch, rngs, aug_keys) -> (loss, (metrics, new batch_stats))``: the
    forward pass and loss of a train step on normalised ``images`` (``batch`` holds the rest: labels,
    ``valid`` slots); ``aug_keys`` are two keys for on-device augmentation."""
    raise NotImplementedError

  def eval_step(self, model, settings: schema.Settings) -> Callable:
    """``(variables, batch) -> sums`` of the task's default evaluator (what ``lgvit.aot`` compiles)."""
    raise NotImplementedError

  def shard_fn(self, settings: schema.Settings) -> Callable:
    """One input shard's train batches (``lgvit.data.pipeline.train_dataset``'s ``shard_fn``)."""
    raise NotImplementedError

  def dataset_classes(self, builder, settings: schema.Settings) -> Optional[int]:
    """The training dataset's class count as the model sees it, or None where it cannot be read."""
    raise NotImplementedError

  def summary(self, result: dict[str, Any]) -> str:
    """The final line's scores of a run's result (its last eval row, keys ``eval_*``)."""
    raise NotImplementedError

  def batch_shapes(self, settings: schema.Settings, batch: int, train: bool) -> dict[str, tuple[tuple, Any]]:
    """``{field: (shape, dtype)}`` of a global train (or eval) batch as the input pipeline feeds it: what
    ``lgvit.aot`` compiles the steps for without data."""
    raise NotImplementedError(f'the {self.name} task does not describe its batches (Task.batch_shapes)')


TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
  TASKS[task.name] = task
  return task


def get(name: str) -> Task:
  if name not in TASKS:
    raise ConfigError(f"task must be one of {', '.join(map(repr, TASKS))}, got {name!r} (--config.task=...)")
  return TASKS[name]


def of_config(config) -> Task:
  return get(config.task)


def of_model(name: str) -> Task:
  """The task a registered model is built for."""
  return get(model_info(name).task)
