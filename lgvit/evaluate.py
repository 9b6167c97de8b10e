"""Score a trained, exported or converted model on the evaluation suite (docs/evaluation.md).

    python -m lgvit.evaluate --workdir W [--best] [--raw]        # a training workdir of main.py
    python -m lgvit.evaluate --export DIR                         # written by python -m lgvit.export
    python -m lgvit.evaluate --model NAME --checkpoint DIR        # python -m lgvit.convert, or a variables dir
    python -m lgvit.evaluate --workdir W --segment-mode slide     # a UperNet workdir: whole | slide | multiscale
        [--evals imagenet2012:validation,imagenet_v2,imagenet2012_real,imagenet_a,imagenet_r]
        [--data-dir DATA_DIR] [--batch-size N] [--out results.json]

runs each evaluator over every image of its split once and writes the results JSON: one entry per
evaluator (named as in ``config.evals`` or ``--evals``; ``splits`` gives each one's ``DATASET:SPLIT``) with top1, top5, loss (one-label sets), count (scored images), skipped (unreadable images)
and, for ReaL, no_label (images without a ReaL label, left out). Default evaluators: a workdir's
main eval and its ``config.evals``; for an export or a checkpoint, the ImageNet suite when the model
has 1000 classes, else the validation split of the dataset it names. A workdir's EMA weights are
used when the run kept them (as ``lgvit.export``; ``--raw`` for the raw ones). Default ``--out``:
``eval_results.json`` in the workdir or export dir (replaced by each run); needed with --checkpoint.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Optional, Sequence

import jax
import ml_collections

from lgvit import cli, cpu_kernels, evals, inference, schema, tasks
from lgvit import workdir as layout
from lgvit.errors import ConfigError, WorkdirError
from lgvit.modeling import make_mesh

RESULTS = 'eval_results.json'


def eval_config(loaded, config=None, data_dir: Optional[str] = None, batch_size: Optional[int] = None):
  """A workdir's config, or for an export / a checkpoint today's defaults with the model's own transform and
  task; the class count is the loaded model's, ``data_dir`` and ``batch_size`` override."""
  if config is None:
    config = schema.base_config(loaded.name)
    config.task = tasks.of_model(loaded.name).name
    config.data.update(dataset='', image_size=loaded.image_size, crop_pct=loaded.crop_pct,
                       interpolation=loaded.interpolation)
    config.eval_batch_size = 128
  config = ml_collections.ConfigDict(config.to_dict())
  config.num_classes = len(loaded.class_names)
  if data_dir:
    config.data.data_dir = data_dir
  if batch_size:
    config.eval_batch_size = batch_size
  return config


def default_specs(config, dataset: Optional[str], from_workdir: bool) -> list[evals.EvalSpec]:
  """A workdir's ``config.evals``; else the ImageNet suite for a 1000-class model, else ``DATASET:validation``."""
  if from_workdir:
    return evals.specs(config, weights='raw')
  if config.num_classes == 1000:
    names = ['imagenet2012:validation', *schema.IMAGENET_SUITE]
  elif dataset:
    names = [f'{dataset}:validation']
  else:
    raise ConfigError('the model does not name its dataset: pass --evals DATASET:SPLIT[,...]')
  return [evals.spec_from_name(n, config) for n in names]


def evaluate_model(loaded, config, specs: Sequence[evals.EvalSpec],
                   options: Optional[dict] = None) -> dict[str, dict[str, float]]:
  """``{evaluator name: metrics}`` of ``loaded`` (a ``lgvit.inference.LoadedModel``) on each spec."""
  if config.eval_batch_size % jax.device_count():
    raise ConfigError(f'--batch-size {config.eval_batch_size} is not divisible by the {jax.device_count()} devices')
  task = tasks.of_config(config)
  context = evals.Context(loaded.model, task.settings(config), make_mesh(), options or {})
  built = [evals.build(spec, context) for spec in specs]  # every dataset is found before the first eval
  variables = jax.device_put(loaded.variables, context.replicated)
  results = {}
  for evaluator in built:
    metrics = evaluator.run(variables)
    results[evaluator.spec.name] = metrics
    print(f'{evaluator.spec.name}: {evaluator.summary(metrics)}', flush=True)
  return results


def run(args: argparse.Namespace) -> dict[str, Any]:
  if args.workdir:
    source, kind = args.workdir, layout.TRAINING
  elif args.export:
    source, kind = args.export, layout.EXPORT
  else:
    source, kind = args.checkpoint, layout.VARIABLES
  found = layout.kind(os.path.abspath(source))
  if found != kind:
    flag = {layout.TRAINING: '--workdir', layout.EXPORT: '--export', layout.VARIABLES: '--model NAME --checkpoint'}
    raise WorkdirError(f'{source} is a {found}, not a {kind}: pass it as {flag[found]} {source}')
  loaded = inference.load(source, args.model, best=args.best, image_size=args.image_size, prefer_ema=not args.raw)
  config, dataset = None, None
  if kind == layout.TRAINING:
    config = layout.read_config(source)
    dataset = config.data.dataset
  elif kind == layout.EXPORT:
    dataset = layout.read_export_meta(source).get('dataset')
  config = eval_config(loaded, config, args.data_dir, args.batch_size)
  if kind == layout.TRAINING:
    weights = ('best' if args.best else 'latest') + (' (raw)' if args.raw or not config.get('ema_decay') else ' (EMA)')
  else:
    weights = kind
  specs = ([evals.spec_from_name(n, config) for n in evals.names(args.evals)] if args.evals else
           default_specs(config, dataset, kind == layout.TRAINING))
  options = {'mode': args.segment_mode} if args.segment_mode else {}
  results = evaluate_model(loaded, config, specs, options)
  return {'model': loaded.name, 'source': os.path.abspath(source), 'weights': weights,
          'image_size': loaded.image_size, 'crop_pct': loaded.crop_pct, 'interpolation': loaded.interpolation,
          'evals': results, 'splits': {s.name: f'{s.dataset}:{s.split}' for s in specs}}


def main(argv=None) -> int:
  cpu_kernels.use()  # before the first JAX computation: XLA reads XLA_FLAGS when its CPU client starts
  parser = argparse.ArgumentParser(prog='python -m lgvit.evaluate', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument('--workdir', help='training workdir of main.py')
  source.add_argument('--export', help='export dir of python -m lgvit.export')
  source.add_argument('--checkpoint', help='variables dir (python -m lgvit.convert); with --model')
  parser.add_argument('--model', default=None, help='registered model name (needed with --checkpoint)')
  parser.add_argument('--best', action='store_true', help='the best checkpoint of a workdir, not the latest')
  parser.add_argument('--raw', action='store_true', help="a workdir's raw weights even if it kept EMA weights")
  parser.add_argument('--image_size', type=int, default=None, help='input size for --checkpoint')
  parser.add_argument('--evals', default=None, help='comma-separated evaluators (see lgvit.evals)')
  parser.add_argument('--data-dir', '--data_dir', dest='data_dir', default=None, help='TFDS data dir')
  parser.add_argument('--batch-size', '--batch_size', dest='batch_size', type=int, default=None)
  parser.add_argument('--out', default=None, help=f'results JSON (default: SOURCE/{RESULTS})')
  parser.add_argument('--segment-mode', '--segment_mode', dest='segment_mode', default=None,
                      choices=('whole', 'slide', 'multiscale'),
                      help="UperNet workdirs: mmseg's test mode, each image at its own size (default: the in-training eval)")
  args = parser.parse_args(argv)
  if args.checkpoint and not args.model:
    parser.error('--checkpoint needs --model NAME')
  if args.checkpoint and not args.out:
    parser.error('--checkpoint needs --out results.json')
  if args.batch_size is not None and args.batch_size <= 0:
    parser.error('--batch-size must be positive')
  cli.quiet_logs()

  def go():
    results = run(args)
    out = args.out or os.path.join(args.workdir or args.export, RESULTS)
    if jax.process_index() == 0:  # every process evaluated its shard; one writes
      layout.write_json(out, results)
      print(f'wrote {out}')

  return cli.report_errors(go)


if __name__ == '__main__':
  sys.exit(main())
