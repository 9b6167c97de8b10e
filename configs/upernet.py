"""UperNet on ADE20K (scene_parse150) over a registered backbone, mmsegmentation's UperNet-for-Swin recipe.

    python main.py --config=configs/upernet.py:backbone=nommer_t --workdir=gs://bucket/upernet_nommer_t

Sources, value by value, in docs/segmentation.md: the NomMer paper (Sec. 4.3) sets 512x512 crops and
160k iterations at batch 16; the rest is mmseg's
``upernet_swin_tiny_patch4_window7_512x512_160k_ade20k`` config and its ``_base_`` files (AdamW 6e-5,
betas 0.9/0.999, wd 0.01 without decay on norms / position embedding / relative tables, linear warm-up
of 1500 iterations with ratio 1e-6, poly decay power 1.0 to 0, aux loss 0.4, ADE20K pipeline). The
backbone's drop-path is its UperNet entry's (NomMer-T/S/B 0.2/0.3/0.5, Swin 0.3). Our choice: the
conv backbones use the same AdamW recipe (mmseg trains its ResNet UperNets with SGD 0.01).

Status (issue #19): the config is complete, but ``lgvit.train`` has no segmentation task yet (no
scene_parse150 pipeline, no pixel loss / mIoU hook) and refuses it with one line; there is no demo
dataset, so there is no ``:demo`` argument yet.
"""
import ml_collections

from configs import common

#: backbone -> registered UperNet model.
BACKBONES = {b: f'upernet_{b}' for b in ('nommer_t', 'nommer_s', 'nommer_b', 'swin_t', 'swin_s', 'salg_t',
                                         'cotnet50', 'se_cotnetd50', 'lesa_resnet50')}
ADE20K_TRAIN_EXAMPLES = 20_210


def get_config(arg=None):
  args = common.parse_arg(arg, backbone='nommer_t')
  model = common.choose(BACKBONES, args.backbone, 'UperNet backbone')
  c = common.base_config(model)
  c.task = 'segmentation'
  c.num_classes = 150

  c.data.update(dataset='scene_parse150', train_split='train', eval_split='test',  # TFDS: 'test' = ADE val
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
  c.schedule.poly_power = 1.0  # mmcv PolyLrUpdaterHook (lgvit.optim.lr_schedule)
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

  c.init_from = f'workdirs/{args.backbone}'  # an ImageNet run of the backbone (or a converted checkpoint)
  c.lock()
  return c
