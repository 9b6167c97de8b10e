"""Fine-tune a trained or converted backbone on another TFDS classification dataset (big_vision style).

    python main.py --config=configs/transfer.py:dataset=cifar10,init_from=workdirs/resnet50 --workdir=W
    python main.py --config=configs/transfer.py:model=nommer_t_384,dataset=oxford_iiit_pet,init_from=/ckpt/nommer_t \\
        --workdir=W                                             # a `python -m lgvit.convert` directory
    python main.py --config=configs/transfer.py:dataset=lgvit_digits,init_from=/tmp/demo,demo --workdir=W  # CPU

Arguments (docs/transfer.md has the walk-through and every value's source):

* ``init_from``: a training workdir, an export dir (``python -m lgvit.export``) or a converted
  checkpoint dir (``python -m lgvit.convert``). The config reads the model and its ``model_kwargs``
  (a demo's shrunk widths) from it, so the new model has the backbone's architecture;
  ``--config.init_from=...`` instead swaps only the weights (fine for registered architectures).
* ``model``: any registered name (``lgvit.models.list_models()``); default: the one ``init_from``
  names. Another variant of the same family is allowed (``nommer_t_384`` from a ``nommer_t`` run).
* ``dataset``: a TFDS name. :data:`DATASETS` holds big_vision's splits, class counts, lengths and
  crops; any other dataset takes the splits ``train``/``test`` (``train=``, ``eval=`` change them),
  the class count of the TFDS builder (or ``num_classes=``) and BiT's hyper-rule for its length
  (:func:`bit_schedule`) from the size of its train split, read from the prepared dataset in
  ``data_dir`` (default: TFDS's) or given as ``train_examples=``.
* ``res``: the training and evaluation size, big_vision's 384 by default (``demo``: 32); evaluation
  resizes the shorter side to ``res * 448 / 384`` first. When it differs from the backbone's size,
  ``init_from`` resamples the position tables by the model's resize rules
  (``ModelInfo.resize_rules``); a size the architecture cannot take is refused.
* ``crop``: ``resmall_crop`` or ``inception_crop`` for training (default: the table's).
* ``steps``, ``lr``: override the length and the base LR (at batch 512).
* ``demo``: a CPU-sized run (32 px, batch 64 at the full lr 0.01, 200 steps).

The recipe is :func:`configs.common.transfer_style`; the classifier (``head`` or ``fc`` Dense,
:data:`HEAD`) starts at zero. The eval split is the held-out part of ``train`` (big_vision's
``val``), on which the best checkpoint is picked; report the test split with
``--config.data.eval_split=<test split of the table>`` on a copy of the run.
"""
from typing import NamedTuple

from configs import common
from lgvit import schema


class Dataset(NamedTuple):
  train: str
  held_out: str  # big_vision's ``val``: what the best checkpoint is picked on
  test: str
  classes: int
  examples: int  # in ``train`` (TFDS's counts)
  steps: int
  warmup: int
  crop: str  # the train crop (lgvit.data.pipeline.TRAIN_CROPS)


#: big_vision configs/transfer.py: splits, classes and lengths from ``_set_dataset``; the crop from its
#: docstring's best setting per dataset (selected on minival); the example counts are TFDS's.
DATASETS = {
    'cifar10': Dataset('train[:98%]', 'train[98%:]', 'test', 10, 49_000, 10_000, 500, 'resmall_crop'),
    'cifar100': Dataset('train[:98%]', 'train[98%:]', 'test', 100, 49_000, 10_000, 500, 'resmall_crop'),
    'oxford_iiit_pet': Dataset('train[:90%]', 'train[90%:]', 'test', 37, 3_312, 500, 100, 'inception_crop'),
    'oxford_flowers102': Dataset('train[:90%]', 'train[90%:]', 'test', 102, 918, 500, 100, 'inception_crop'),
    'imagenet2012': Dataset('train[:99%]', 'train[99%:]', 'validation', 1000, 1_268_355, 20_000, 500,
                            'inception_crop'),
    # The embedded digits (no download): their own train/validation split, a CPU-sized length (lgvit's).
    'lgvit_digits': Dataset('train', 'validation', 'validation', 10, 1_437, 300, 30, 'resmall_crop'),
}
#: Unknown datasets: train split, eval split, and big_vision's default crop (its ``crop`` argument).
OTHER_DATASET = ('train', 'test', 'resmall_crop')
#: big_vision's ``l_res`` and ``h_res``: train/eval at 384, the eval resizing the shorter side to 448.
RES, RESIZE = 384, 448
#: The classifier of every family (``layers.classifier_head``: ``fc`` in the ResNet skeleton, else
#: ``head``); NomMer's ``head_norm`` and the stage norms are backbone, so the match is anchored.
HEAD = r'^params/(head|fc)/'
CROPS = ('resmall_crop', 'inception_crop')
DEMO = dict(res=32, batch=64, steps=200, warmup=20)


def bit_schedule(train_examples: int) -> tuple[int, int]:
  """(steps, warm-up steps) by BiT's hyper-rule (big_transfer ``bit_hyperrule.get_schedule``: the first
  and last of its boundaries); it gives big_vision's lengths of the :data:`DATASETS` it shares."""
  if train_examples < 20_000:
    return 500, 100
  if train_examples < 500_000:
    return 10_000, 500
  return 20_000, 500


def _num_classes_from_tfds(dataset: str) -> int:
  """The class count a registered TFDS builder declares (its info is code: no data is read)."""
  try:
    import tensorflow_datasets as tfds
    return int(tfds.builder(dataset).info.features['label'].num_classes)
  except Exception as e:  # noqa: BLE001 - unknown name, no 'label' ClassLabel feature, ...
    raise ValueError(f'cannot read the class count of TFDS dataset {dataset!r} ({type(e).__name__}); give it as '
                     f"num_classes=N (known datasets: {', '.join(DATASETS)})") from None


def _train_examples_from_tfds(dataset: str, split: str, data_dir: str) -> int:
  """The size of ``split`` of a prepared TFDS dataset (TFDS only knows it once the data is there)."""
  import tensorflow_datasets as tfds
  where = data_dir or 'the default TFDS data_dir'
  try:
    builder = tfds.builder(dataset, data_dir=data_dir or None)
    if builder.is_prepared():
      return int(builder.info.splits[split].num_examples)
    why = f'not prepared in {where}'
  except Exception as e:  # noqa: BLE001 - an unknown name, a bad split, ...
    why = f'{type(e).__name__}: {e}'.splitlines()[0]
  raise ValueError(f'cannot read the size of split {split!r} of TFDS dataset {dataset!r} ({why}), which sets '
                   "its length by BiT's hyper-rule; give train_examples=N or data_dir=DIR (where it is prepared; "
                   '--config.data.data_dir is read too late for this)') from None


def _backbone(init_from: str) -> dict:
  if not init_from:
    return {'model': None, 'model_kwargs': {}}
  from lgvit import checkpoint
  from lgvit.errors import WorkdirError
  try:
    return checkpoint.describe_weights(init_from)
  except WorkdirError as e:
    raise ValueError(f'init_from={init_from}: {e}') from None


def get_config(arg=None):
  args = common.parse_arg(arg, model='', dataset='cifar10', init_from='', res=0, crop='', steps=0, lr=0.0,
                          num_classes=0, train='', eval='', train_examples=0, data_dir='', demo=False)
  source = _backbone(args.init_from)
  model = args.model or source['model']
  if not model:
    raise ValueError('configs/transfer.py needs model=NAME (a registered lgvit model) or init_from=DIR naming one '
                     "(e.g. ':model=nommer_t_384,dataset=cifar10,init_from=workdirs/nommer_t')")
  from lgvit.models import model_info
  model_info(model)  # an unknown name is an UnknownModelError listing the registered ones
  if args.crop and args.crop not in CROPS:
    raise ValueError(f"unknown crop {args.crop!r}; choose one of {', '.join(CROPS)}")

  if args.dataset in DATASETS:
    if args.train_examples:
      raise ValueError(f'train_examples is for datasets outside the table; {args.dataset} has its length '
                       'there (steps=N changes it)')
    d = DATASETS[args.dataset]
    train, held_out, num_classes, train_examples, steps, warmup, crop = (d.train, d.held_out, d.classes, d.examples,
                                                                         d.steps, d.warmup, d.crop)
  else:
    train, held_out, crop = OTHER_DATASET
    num_classes = args.num_classes or _num_classes_from_tfds(args.dataset)
    train_examples = args.train_examples or _train_examples_from_tfds(args.dataset, args.train or train,
                                                                      args.data_dir)
    steps, warmup = bit_schedule(train_examples)
  num_classes = args.num_classes or num_classes
  batch = 512
  if args.demo:
    batch, steps, warmup = DEMO['batch'], DEMO['steps'], DEMO['warmup']
  steps = args.steps or steps
  res = args.res or (DEMO['res'] if args.demo else RES)

  c = schema.base_config(model)
  c.model_kwargs.update(source['model_kwargs'])
  c.num_classes = num_classes
  c.data.update(dataset=args.dataset, train_split=args.train or train, eval_split=args.eval or held_out,
                image_size=res)
  if args.data_dir:
    c.data.data_dir = args.data_dir
  common.transfer_style(c, init_from=args.init_from, head=HEAD, steps=steps, warmup_steps=warmup, batch=batch,
                        crop=args.crop or crop, crop_pct=RES / RESIZE, **({'lr': args.lr} if args.lr else {}))
  c.eval_every_epochs = steps * batch / train_examples / 10  # about ten evaluations per run
  if args.demo or args.dataset == 'lgvit_digits':
    c.data.update(shuffle_buffer=2048, cache_train=True)
  if args.dataset == 'lgvit_digits':
    c.aug.hflip = False  # digits are not mirror-symmetric
  if args.demo:
    c.eval_batch_size, c.log_every_steps, c.checkpoint_every_steps, c.keep_checkpoints = 128, 20, 200, 2
  c.lock()
  return c
