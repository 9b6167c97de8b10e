"""Tasks: what differs between training a classifier and a segmenter; the loop, state, optimiser, EMA,
checkpoints and logs (lgvit.train) are shared and never name a task.

A task is one object (:class:`Task`) registered under the name ``config.task`` gives it. Adding one is a
new module here that defines a :class:`Task` subclass, registers it (:func:`register`) and its evaluator
types (``lgvit.evals.register``), and a config; docs/architecture.md walks through it.
"""
from lgvit.tasks import classification, detection, segmentation  # noqa: F401  (each registers itself)
from lgvit.tasks.base import TASKS, Task, get, of_config, of_model, register  # noqa: F401

__all__ = ['TASKS', 'Task', 'get', 'of_config', 'of_model', 'register']
