"""Score a trained, exported or converted model on the evaluation suite (docs/evaluation.md).

    python -m lgvit.evaluate --workdir W [--best] [--raw]        # a training workdir of main.py
    python -m lgvit.evaluate --export DIR                         # written by python -m lgvit.export
    python -m lgvit.evaluate --model NAME --checkpoint DIR        # python -m lgvit.convert, or a variables dir
    python -m lgvit.evaluate --workdir W --segment-mode slide     # a UperNet workdir: whole | slide | multiscale
        [--evals imagenet2012:validation,imagenet_v2,imagenet2012_real,imagenet_a,imagenet_r]
        [--data-dir DATA_DIR] [--batch-size N] [--out results.json]

runs each evaluator over every image of its split once and writes the results JSON: one entry per
evaluator with top1, top5, loss (one-label sets), count (scored images), skipped (unreadable images)
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

import ml_collections

from lgvit import cli, cpu_kernels, evals
from lgvit import workdir as layout
from lgvit.errors import ConfigError, WorkdirError

RESULTS = 'eval_results.json'


def eval_config(loaded, config=None, data_dir: Optional[str] = None, batch_size: Optional[int] = None):
  """What the eval pipeline and step read: the data section, the eval batch, dtype and class count."""
  if config is not None:
    config = ml_collections.ConfigDict(config.to_dict())
  else:
    config = ml_collections.ConfigDict({'data': {'dataset': '', 'eval_split': 'validation', 'data_dir': None},
                                        'eval_batch_size': 128, 'dtype': 'float32'})
    config.data.update(image_size=loaded.image_size, crop_pct=loaded.crop_pct, interpolation=loaded.interpolation)
  config.num_classes = len(loaded.class_names)
  if data_dir:
    config.data.data_dir = data_dir
  if batch_size:
    config.eval_batch_size = batch_size
  return config


def default_evals(config, dataset: Optional[str], num_classes: int, from_workdir: bool) -> list[str]:
  if from_workdir:
    return [evals.main_evaluator(config).name] + [e.name for e in evals.extra_evaluators(config)]
  if num_classes == 1000:
    return list(evals.IMAGENET_EVALS)
  if dataset:
    return [f'{dataset}:validation']
  raise ConfigError('the model does not name its dataset: pass --evals DATASET:SPLIT[,...]')


def evaluate_model(loaded, config, requested: Sequence[str]) -> dict[str, dict[str, float]]:
  """``{evaluator name: metrics}`` of ``loaded`` (a ``lgvit.predict.LoadedModel``) on each evaluator."""
  import jax
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  from lgvit.train import make_mesh
  if config.eval_batch_size % jax.device_count():
    raise ConfigError(f'--batch-size {config.eval_batch_size} is not divisible by the {jax.device_count()} devices')
  mesh = make_mesh()
  replicated, batch_sharding = NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))
  chosen = [evals.parse(name) for name in requested]
  prepared = [evals.prepare(e, config, loaded.model, config.data.data_dir, replicated) for e in chosen]  # fail early
  variables = jax.device_put(loaded.variables, replicated)
  results = {}
  for p in prepared:
    results[p.evaluator.name] = evals.run(p, variables, config, batch_sharding)
    print(f'{p.evaluator.name}: {evals.summary(results[p.evaluator.name])}', flush=True)
  return results


def evaluate_segmentation(loaded, config, mode: str) -> dict[str, dict[str, float]]:
  """A segmentation workdir's eval split through mmseg's test ``mode``, each image at its own size."""
  import jax
  from lgvit import segmentation_task
  from lgvit.data import pipeline
  apply_fn = jax.jit(lambda x: loaded.model.apply(loaded.variables, x, train=False))  # normalised images
  builder = pipeline.get_builder(config.data.dataset, config.data.data_dir)
  metrics = segmentation_task.evaluate_per_image(apply_fn, config, builder, mode)
  name = f'{config.data.dataset}:{config.data.eval_split}:{mode}'
  print(f'{name}: {segmentation_task.summary(metrics)}', flush=True)
  return {name: metrics}


def run(args: argparse.Namespace) -> dict[str, Any]:
  from lgvit import predict
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
  loaded = predict.load(source, args.model, best=args.best, image_size=args.image_size, prefer_ema=not args.raw)
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
  if config.get('task') == 'segmentation':
    results = evaluate_segmentation(loaded, config, args.segment_mode)
  else:
    requested = (evals.names(args.evals) if args.evals else
                 default_evals(config, dataset, config.num_classes, kind == layout.TRAINING))
    results = evaluate_model(loaded, config, requested)
  return {'model': loaded.name, 'source': os.path.abspath(source), 'weights': weights,
          'image_size': loaded.image_size, 'crop_pct': loaded.crop_pct, 'interpolation': loaded.interpolation,
          'evals': results}


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
  parser.add_argument('--segment-mode', '--segment_mode', dest='segment_mode', default='whole',
                      choices=('whole', 'slide', 'multiscale'),
                      help="segmentation workdirs: mmseg's test mode, each image at its own size (docs/segmentation.md)")
  args = parser.parse_args(argv)
  if args.checkpoint and not args.model:
    parser.error('--checkpoint needs --model NAME')
  if args.checkpoint and not args.out:
    parser.error('--checkpoint needs --out results.json')
  if args.batch_size is not None and args.batch_size <= 0:
    parser.error('--batch-size must be positive')
  cli.quiet_logs()

  def go():
    import jax
    results = run(args)
    out = args.out or os.path.join(args.workdir or args.export, RESULTS)
    if jax.process_index() == 0:  # every process evaluated its shard; one writes
      layout.write_json(out, results)
      print(f'wrote {out}')

  return cli.report_errors(go)


if __name__ == '__main__':
  sys.exit(main())
