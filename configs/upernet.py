"""UperNet on ADE20K (ADEChallengeData2016, TFDS lgvit_ade20k) over a registered backbone, mmsegmentation's UperNet-for-Swin recipe.

    python main.py --config=configs/upernet.py:backbone=nommer_t --workdir=gs://bucket/upernet_nommer_t
    python main.py --config=configs/upernet.py:backbone=nommer_t,demo --workdir=/tmp/seg_demo  # digits, CPU minutes

Sources, value by value, in docs/segmentation.md: the NomMer paper (Sec. 4.3) sets 512x512 crops and
160k iterations at batch 16; the rest is mmseg's
``upernet_swin_tiny_patch4_window7_512x512_160k_ade20k`` config and its ``_base_`` files (AdamW 6e-5,
betas 0.9/0.999, wd 0.01 without decay on norms / position embedding / relative tables, linear warm-up
of 1500 iterations with ratio 1e-6, poly decay power 1.0 to 0, aux loss 0.4, ADE20K pipeline). The
backbone's drop-path is its UperNet entry's (NomMer-T/S/B 0.2/0.3/0.5, Swin 0.3). Our choice: the
conv backbones use the same AdamW recipe (mmseg trains its ResNet UperNets with SGD 0.01).

Evaluation during training is mmseg's ``mode='whole'`` image by image, the images batched by their
padded shape (lgvit/data/seg_pipeline.py; docs/segmentation.md says where it can differ from mmseg).

``demo``: the backbone's own digits demo (its family config's ``DEMO_MODEL``) under a 64-channel
UperNet on the embedded ``lgvit_digits_seg`` (64x64 canvases, 11 classes), from scratch with AdamW
1e-3, a few CPU minutes; docs/segmentation.md states the mIoU it reaches.
"""
import ml_collections

from configs import common, cotnet, lesa, nommer, salg, swin
from lgvit import schema

#: backbone -> registered UperNet model.
BACKBONES = {b: f'upernet_{b}' for b in ('nommer_t', 'nommer_s', 'nommer_b', 'swin_t', 'swin_s', 'salg_t',
                                         'cotnet50', 'se_cotnetd50', 'lesa_resnet50')}
ADE20K_TRAIN_EXAMPLES = 20_210
_WINDOWED = dict(pad_windows=True)  # the UperNet entries' own backbone override (512 / 32 is not a window multiple)
_AXIAL = dict(lesa_position='axial')  # the UperNet LESA entry's own override (lgvit/models/upernet.py)
#: Backbone variables that an ImageNet run cannot fill: LESA's classification position tables (1-D raster
#: offsets) are replaced by the detection code's 2-D ones, and the BNs around them change width.
FRESH_IN_BACKBONE = {'lesa_resnet50': r'/binary/(rel_height|rel_width|similarity_bn|output_bn)(/|$)'}
#: backbone -> its classification demo's shrunk widths (the family config's DEMO_MODEL).
DEMO_BACKBONES = {
    'nommer_t': {**nommer.DEMO_MODEL, **_WINDOWED}, 'nommer_s': {**nommer.DEMO_MODEL, **_WINDOWED},
    'nommer_b': {**nommer.DEMO_MODEL, **_WINDOWED}, 'swin_t': {**swin.DEMO_MODEL, **_WINDOWED},
    'swin_s': {**swin.DEMO_MODEL, **_WINDOWED}, 'salg_t': salg.DEMO_MODEL, 'cotnet50': cotnet.demo_model('cotnet50'),
    'se_cotnetd50': cotnet.demo_model('se_cotnetd50'), 'lesa_resnet50': {**lesa.DEMO_MODEL, **_AXIAL}}


def get_config(arg=None):
  args = common.parse_arg(arg, backbone='nommer_t', demo=False)
  model = common.choose(BACKBONES, args.backbone, 'UperNet backbone')
  c = schema.base_config(model)
  c.task = 'segmentation'
  c.num_classes = 150
  schema.keep_evals(c, 'main', 'ema')  # the ImageNet evaluators do not apply

  c.data.update(dataset='lgvit_ade20k', train_split='train', eval_split='validation',  # lgvit/data/ade20k.py
                image_size=512, interpolation='bilinear', shuffle_buffer=2048)
  c.data.scale = (2048, 512)  # (long, short) bound of the train resize and of the eval resize (mmseg img_scale)
  c.data.reduce_zero_label = True  # ADE20K class 0 ('other') -> 255, classes 1..150 -> 0..149

  c.aug.ratio_range = (0.5, 2.0)  # random resize of data.scale (mmseg Resize ratio_range)
  c.aug.cat_max_ratio = 0.75  # RandomCrop: at most 75% of the crop one class (10 tries)
  c.aug.hflip = True
  c.aug.photometric = True  # mmseg PhotoMetricDistortion (brightness 32, contrast/saturation 0.5-1.5, hue 18)

  c.optim.update(optimizer='adamw', adam_b1=0.9, adam_b2=0.999, adam_eps=1e-8, weight_decay=0.01,
                 wd_exclude='mmseg_swin', grad_clip_norm=0.0)
  c.schedule.update(lr=6e-5, lr_base_batch=0, decay='poly', warmup_lr=6e-5 * 1e-6, min_lr=0.0, unit='step')
  c.schedule.warmup_steps = 1500  # overrides warmup_epochs
  c.schedule.warmup_style = 'mmcv'  # linear warm-up of the ratio warmup_lr / lr -> 1, times the poly LR
  c.batch_size, c.eval_batch_size = 16, 16
  c.num_train_steps = 160_000
  c.num_epochs = 160_000 * 16 / ADE20K_TRAIN_EXAMPLES
  c.eval_every_epochs = 16_000 * 16 / ADE20K_TRAIN_EXAMPLES  # mmseg: every 16k iterations
  c.checkpoint_every_steps = 16_000
  c.best_metric = 'mIoU'

  c.seg = seg = ml_collections.ConfigDict()  # read by lgvit.segmentation
  seg.ignore_label = 255
  seg.aux_weight = 0.4
  seg.avg_non_ignore = False  # mmseg CrossEntropyLoss default: mean over every pixel
  seg.eval_mode = 'whole'  # 'whole' (mmseg Swin test_cfg) | 'slide'
  seg.eval_crop = (512, 512)
  seg.eval_stride = (341, 341)
  seg.multiscale = False  # opt-in: also evaluate multi-scale (+flip)
  seg.ms_ratios = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
  seg.flip = True
  # Ours: the largest eval image. The keep-ratio resize of data.scale gives ADE20K images a 512 short
  # side; up to 1024 holds every aspect ratio up to 2:1 (wider ones are scaled down to fit and counted
  # as eval_downscaled). The labels keep their size on the label canvas (one shape per compile).
  seg.eval_canvas = (1024, 1024)
  seg.label_canvas = (2048, 2048)

  c.init_from = f'workdirs/{args.backbone}'  # an ImageNet run of the backbone (or a converted checkpoint)
  c.init_skip = r'^(params|batch_stats)/(decode_head|auxiliary_head|norm\d+)/'  # the heads start fresh
  if args.backbone in FRESH_IN_BACKBONE:
    c.init_skip += '|' + FRESH_IN_BACKBONE[args.backbone]
  if args.demo:
    apply_demo(c, args.backbone)
  c.lock()
  return c


def apply_demo(c: ml_collections.ConfigDict, backbone: str) -> None:
  """The embedded digits segmentation demo, from scratch (values chosen for 2 CPU cores)."""
  c.model_kwargs.backbone_kwargs = dict(DEMO_BACKBONES[backbone], drop_path_rate=0.0)
  c.model_kwargs.channels, c.model_kwargs.aux_channels = 64, 32
  c.num_classes = 11
  c.data.update(dataset='lgvit_digits_seg', train_split='train', eval_split='validation', image_size=64,
                cache_train=True)
  c.data.scale = (64, 64)  # the canvases are 64x64: random resize to 32..128, crop 64
  c.data.reduce_zero_label = False  # class 0 is the background, a real class here
  c.aug.cat_max_ratio = 1.0  # the background covers most of every crop: no re-draws
  c.aug.hflip = False  # digits are not mirror-symmetric
  c.seg.eval_canvas = c.seg.label_canvas = (64, 64)
  c.batch_size, c.eval_batch_size = 16, 40
  c.schedule.update(lr=1e-3, warmup_lr=1e-6)
  c.schedule.warmup_steps = 50
  # From scratch the model first predicts the background everywhere (mIoU 0.07) for ~800 steps, then
  # learns the digits: 2000 steps (27 epochs) reach 0.61 on an AMD Zen 3 (docs/segmentation.md).
  c.num_train_steps = 2000
  c.num_epochs = 2000 * 16 / 1200
  c.eval_every_epochs = 4.0
  c.log_every_steps, c.checkpoint_every_steps, c.keep_checkpoints = 50, 500, 2
  c.init_from = ''
