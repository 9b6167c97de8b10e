"""Fine-tune a trained or converted backbone on another TFDS classification dataset (big_vision style).

    python main.py --config=configs/transfer.py:dataset=cifar10,init_from=workdirs/nommer_t --workdir=W
    python main.py --config=configs/transfer.py:model=cotnet50,dataset=oxford_iiit_pet,init_from=/ckpt/cotnet50 \\
        --workdir=W                                             # a `python -m lgvit.convert` directory
    python main.py --config=configs/transfer.py:dataset=lgvit_digits,init_from=/tmp/demo,demo --workdir=W  # CPU

Arguments (docs/transfer.md has the walk-through):

* ``init_from``: a training workdir, an export dir (``python -m lgvit.export``) or a converted
  checkpoint dir (``python -m lgvit.convert``). The config reads the model and its ``model_kwargs``
  (a demo's shrunk widths, drop path) from it, so the new model has the backbone's architecture;
  ``--config.init_from=...`` instead swaps only the weights (fine for registered architectures).
* ``model``: any registered name (``lgvit.models.list_models()``); default: the one ``init_from``
  names. Another variant of the same family is allowed (``nommer_t_384`` from a ``nommer_t`` run).
* ``dataset``: a TFDS name. :data:`DATASETS` holds big_vision's splits, class counts and lengths;
  for any other dataset the splits default to ``train``/``test`` (``train=``, ``eval=`` change them),
  the class count is read from the TFDS builder (or given as ``num_classes=``), and it trains
  ``steps=2000`` steps with 200 warm-up steps.
* ``res``: the training and evaluation size (default: the model's registered input size; ``demo``:
  32). When it differs from the backbone's, ``init_from`` resamples the position tables by the
  model's resize rules (``ModelInfo.resize_rules``); a size the architecture cannot take is refused.
* ``steps``, ``lr``: override the table's length and the base LR (at batch 512).
* ``demo``: a CPU-sized run (32 px, batch 64 at the full lr 0.01, 200 steps).

The classifier (``head`` or ``fc`` Dense) is re-initialised: :data:`HEAD` is ``init_skip``. The
recipe is :func:`configs.common.transfer_style` (big_vision's ``configs/transfer.py``: SGD with
momentum 0.9, no weight decay, clip 1.0, lr 0.01 at batch 512, cosine after a linear warm-up,
inception crop and flip for training, resize for evaluation). The eval split is the held-out part
of ``train`` (big_vision's ``val``), on which the best checkpoint is picked; report the test split
with ``--config.data.eval_split=<test split of the table>`` on a copy of the run.
"""
from configs import common

#: dataset -> (train split, held-out eval split, test split, classes, train examples, steps, warm-up
#: steps). big_vision configs/transfer.py ``_set_dataset``; the example counts are TFDS's.
DATASETS = {
    'cifar10': ('train[:98%]', 'train[98%:]', 'test', 10, 49_000, 10_000, 500),
    'cifar100': ('train[:98%]', 'train[98%:]', 'test', 100, 49_000, 10_000, 500),
    'oxford_iiit_pet': ('train[:90%]', 'train[90%:]', 'test', 37, 3_312, 500, 100),
    'oxford_flowers102': ('train[:90%]', 'train[90%:]', 'test', 102, 918, 500, 100),
    'imagenet2012': ('train[:99%]', 'train[99%:]', 'validation', 1000, 1_268_355, 20_000, 500),
    # The embedded digits (no download): their own train/validation split, a CPU-sized length.
    'lgvit_digits': ('train', 'validation', 'validation', 10, 1_437, 300, 30),
}
#: Unknown datasets: (train split, eval split, steps, warm-up steps).
OTHER_DATASET = ('train', 'test', 2_000, 200)
#: The classifier of every family (``layers.classifier_head``: ``fc`` in the ResNet skeleton, else
#: ``head``); NomMer's ``head_norm`` and the stage norms are backbone, so the match is anchored.
HEAD = r'^params/(head|fc)/'
DEMO = dict(res=32, batch=64, steps=200, warmup=20)


def _num_classes_from_tfds(dataset: str) -> int:
  """The class count a registered TFDS builder declares (its info is code: no data is read)."""
  try:
    import tensorflow_datasets as tfds
    return int(tfds.builder(dataset).info.features['label'].num_classes)
  except Exception as e:  # noqa: BLE001 - unknown name, no 'label' ClassLabel feature, ...
    raise ValueError(f'cannot read the class count of TFDS dataset {dataset!r} ({type(e).__name__}); give it as '
                     f"num_classes=N (known datasets: {', '.join(DATASETS)})") from None


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
  args = common.parse_arg(arg, model='', dataset='cifar10', init_from='', res=0, steps=0, lr=0.0, num_classes=0,
                          train='', eval='', demo=False)
  source = _backbone(args.init_from)
  model = args.model or source['model']
  if not model:
    raise ValueError('configs/transfer.py needs model=NAME (a registered lgvit model) or init_from=DIR naming one '
                     "(e.g. ':model=nommer_t,dataset=cifar10,init_from=workdirs/nommer_t')")
  from lgvit.models import model_info
  info = model_info(model)  # an unknown name is an UnknownModelError listing the registered ones

  if args.dataset in DATASETS:
    train, held_out, _, num_classes, train_examples, steps, warmup = DATASETS[args.dataset]
  else:
    train, held_out, steps, warmup = OTHER_DATASET
    num_classes, train_examples = 0, 0
  num_classes = args.num_classes or num_classes or _num_classes_from_tfds(args.dataset)
  batch = 512
  if args.demo:
    batch, steps, warmup = DEMO['batch'], DEMO['steps'], DEMO['warmup']
  steps = args.steps or steps

  c = common.base_config(model)
  c.model_kwargs.update(source['model_kwargs'])
  c.num_classes = num_classes
  c.data.update(dataset=args.dataset, train_split=args.train or train, eval_split=args.eval or held_out,
                image_size=args.res or (DEMO['res'] if args.demo else info.input_size))
  common.transfer_style(c, init_from=args.init_from, head=HEAD, steps=steps, warmup_steps=warmup, batch=batch,
                        **({'lr': args.lr} if args.lr else {}))
  # About ten evaluations per run (one per epoch where the train split is unknown).
  c.eval_every_epochs = steps * batch / train_examples / 10 if train_examples else 1.0
  if args.demo or args.dataset == 'lgvit_digits':
    c.data.update(shuffle_buffer=2048, cache_train=True)
  if args.dataset == 'lgvit_digits':
    c.aug.hflip = False  # digits are not mirror-symmetric
  if args.demo:
    c.eval_batch_size, c.log_every_steps, c.checkpoint_every_steps, c.keep_checkpoints = 128, 20, 200, 2
  c.lock()
  return c
