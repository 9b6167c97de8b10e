"""Every config file and argument loads, locks and builds; arguments and overrides reach the right fields.

configs/transfer.py takes other arguments (a dataset, a backbone): tests/test_transfer.py covers it."""
import importlib
import pathlib

import pytest
from absl import flags
from ml_collections import config_flags

from configs import common
from lgvit.models import create_model, list_models, model_info

REPO = pathlib.Path(__file__).resolve().parents[1]
#: The detection configs (tests/test_detection_task.py covers them).
DETECTION_FILES = ('mask_rcnn', 'faster_rcnn', 'cascade_rcnn', 'cascade_mask_rcnn')
FILES = sorted(p.stem for p in (REPO / 'configs').glob('*.py')
               if p.stem not in ('__init__', 'common', 'transfer', *DETECTION_FILES)
               and not p.stem.startswith('upernet'))
FAMILIES = {  # family config -> the values of its `variant` argument (and other arguments)
    'resnet': [f'variant={v}' for v in ('resnet50', 'wide_resnet50_2', 'resnet101')],
    'nommer': [f'variant={v},res={r}' for v in 'tsb' for r in (224, 384)],
    'cotnet': [f'variant={v}' for v in list_models('cotnet')],
    'lesa': [f'variant={v}' for v in list_models('lesa')],
    'salg': [f'variant={v[len("salg_"):]}' for v in list_models('salg')],
    'swin': [f'variant={v[len("swin_"):]}' for v in list_models('swin')],
}
CASES = [(f, a) for f in FILES for a in (None, 'demo', 'demo_recipe')]
CASES += [(f, f'{a},{mode}' if mode else a) for f, args in FAMILIES.items() for a in args
          for mode in (None, 'demo', 'demo_recipe')]


@pytest.mark.parametrize('name,arg', CASES)
def test_every_config_and_argument_loads_locks_and_builds_its_model(name, arg):
  """Built, not traced: a demo model at 32px, and the registered one at its input size (the full configs
  only set drop rates), are traced and run for every model in tests/test_models.py."""
  c = importlib.import_module(f'configs.{name}').get_config(arg)
  info = model_info(c.model)
  create_model(c.model, num_classes=c.num_classes, **c.model_kwargs)  # every override is the model's
  demo = bool(arg) and 'demo' in arg
  assert c.data.dataset == ('lgvit_digits' if demo else 'imagenet2012')
  if demo:
    assert c.init_from == '' and c.data.image_size == 32  # a demo trains from scratch on 32px digits
  else:  # the authors' evaluation preprocessing
    assert (c.data.image_size, c.data.crop_pct, c.data.interpolation) == (info.input_size, info.crop_pct,
                                                                           info.interpolation)
  for section in (c, c.data, c.aug, c.optim, c.schedule):
    with pytest.raises(AttributeError):
      section.no_such_field = 1  # locked: a misspelled override is an error


def test_families_cover_every_registered_model_and_thin_files_equal_them():
  covered = {importlib.import_module(f'configs.{f}').get_config(a).model for f, args in FAMILIES.items() for a in args}
  assert covered == set(list_models(task='classification'))
  for thin, (family, arg) in {'nommer_b': ('nommer', 'variant=b'), 'nommer_s_384': ('nommer', 'variant=s,res=384'),
                              'se_cotnetd152': ('cotnet', 'variant=se_cotnetd152'),
                              'salg_t_msa': ('salg', 'variant=t_msa')}.items():
    for mode in ('', 'demo_recipe'):
      want = importlib.import_module(f'configs.{family}').get_config(common.with_arg(arg, mode))
      assert importlib.import_module(f'configs.{thin}').get_config(mode or None).to_dict() == want.to_dict()


def test_384_fine_tunes_from_the_224_run_except_in_demos():
  from configs import nommer
  assert nommer.get_config('variant=b,res=384').init_from == 'workdirs/nommer_b'
  assert nommer.get_config('variant=b,res=384,demo').init_from == ''
  assert nommer.get_config('variant=b,res=384,demo_recipe').init_from == ''  # kept it before


@pytest.mark.parametrize('arg,message', [
    ('variant=x', "unknown NomMer variant 'x'"),
    ('size=b', "unknown config argument 'size'"),
    ('variant=b,variant=t', 'given twice'),
    ('res=big', 'is not a int'),
    ('variant', 'needs a value'),
    ('res=256', 'unknown NomMer resolution 256'),
])
def test_bad_arguments_are_clear_errors(arg, message):
  from configs import nommer
  with pytest.raises(ValueError, match=message):
    nommer.get_config(arg)


def parse_command_line(*args):
  """The config main.py's --config flag builds from ``args``."""
  argv = ['main.py', *args]
  values = flags.FlagValues()
  holder = config_flags.DEFINE_config_file('config', None, 'config', flag_values=values, lock_config=True,
                                           sys_argv=argv)
  values(argv)
  return holder.value


def test_command_line_arguments_and_section_overrides():
  c = parse_command_line('--config=configs/nommer.py:variant=b,res=384,demo', '--config.batch_size=8',
                         '--config.data.image_size=64', '--config.schedule.lr=0.5', '--config.model_kwargs.window=2')
  assert (c.model, c.batch_size, c.data.image_size, c.schedule.lr, c.model_kwargs.window) == (
      'nommer_b_384', 8, 64, 0.5, 2)
  with pytest.raises((flags.Error, KeyError, AttributeError)):
    parse_command_line('--config=configs/resnet50.py:demo', '--config.data.imagesize=64')


def test_workdirs_with_the_old_flat_config_still_load(tmp_path):
  import json

  from lgvit import schema, workdir
  flat = {'model': 'resnet50', 'model_kwargs': {}, 'num_classes': 10, 'dataset': 'lgvit_digits', 'image_size': 32,
          'crop_pct': 1.0, 'interpolation': 'bicubic', 'data_shards': 2, 'schedule': 'constant', 'schedule_unit': 'epoch',
          'lr': 0.5, 'optimizer': 'adamw', 'mixup_alpha': 0.8, 'batch_size': 64}
  (tmp_path / 'config.json').write_text(json.dumps(flat))
  c = workdir.read_config(str(tmp_path))
  assert (c.data.image_size, c.data.interpolation, c.data.shards, c.schedule.decay, c.schedule.unit, c.schedule.lr,
          c.optim.optimizer, c.aug.mixup_alpha, c.batch_size) == (32, 'bicubic', 2, 'constant', 'epoch', 0.5, 'adamw',
                                                                  0.8, 64)
  base = schema.base_config()
  sections = {(s, k) for s in ('data', 'aug', 'optim', 'schedule') for k in base[s]}
  # Added after the sections (UperNet's schedule, transfer's crop): no flat config has them.
  born_in_sections = {('schedule', 'warmup_steps'), ('schedule', 'warmup_style'), ('schedule', 'poly_power'),
                      ('schedule', 'decay_epochs'), ('schedule', 'decay_rate'), ('aug', 'crop')}
  assert {*schema._MOVED.values(), ('schedule', 'decay')} == sections - born_in_sections  # every moved field is mapped


def test_upernet_configs_cover_every_segmentation_model_with_the_recipe():
  from configs import upernet, upernet_nommer_t
  assert {upernet.get_config(f'backbone={b}').model for b in upernet.BACKBONES} == set(list_models(task='segmentation'))
  c = upernet.get_config('backbone=swin_t')
  assert c.task == 'segmentation' and c.num_classes == 150 and c.data.image_size == 512
  assert c.data.image_size == model_info(c.model).input_size and c.init_from == 'workdirs/swin_t'
  assert (c.schedule.lr, c.optim.weight_decay, c.optim.wd_exclude) == (6e-5, 0.01, 'mmseg_swin')
  assert (c.num_train_steps, c.batch_size, c.schedule.warmup_steps, c.seg.aux_weight) == (160_000, 16, 1500, 0.4)
  assert upernet_nommer_t.get_config().to_dict() == upernet.get_config('backbone=nommer_t').to_dict()
  for section in (c, c.data, c.aug, c.optim, c.schedule, c.seg):
    with pytest.raises(AttributeError):
      section.no_such_field = 1
  with pytest.raises(ValueError, match='unknown UperNet backbone'):
    upernet.get_config('backbone=vit')
  with pytest.raises(ValueError, match="unknown config argument 'demo_recipe'"):
    upernet.get_config('demo_recipe')
  demo = upernet.get_config('backbone=swin_t,demo')
  assert (demo.data.dataset, demo.num_classes, demo.data.image_size, demo.init_from) == ('lgvit_digits_seg', 11, 64, '')
  assert demo.model_kwargs.backbone_kwargs['pad_windows'] and demo.model_kwargs.backbone_kwargs['embed_dim'] == 32


def test_main_without_ade20k_says_how_to_build_it_in_one_line_before_writing(tmp_path):
  import subprocess
  import sys
  from conftest import subprocess_env
  workdir = tmp_path / 'w'
  run = subprocess.run([sys.executable, str(REPO / 'main.py'), '--config=configs/upernet_nommer_t.py',
                        f'--workdir={workdir}', f'--config.data.data_dir={tmp_path / "tfds"}'], cwd=REPO,
                       env=subprocess_env(), capture_output=True, text=True, timeout=300)
  assert run.returncode == 2
  lines = [l for l in run.stderr.splitlines() if l.startswith('error:')]
  assert len(lines) == 1 and "dataset 'lgvit_ade20k' is not prepared" in lines[0]
  assert 'python -m lgvit.data.ade20k --manual_dir=MANUAL_DIR' in lines[0]
  assert not workdir.exists()
