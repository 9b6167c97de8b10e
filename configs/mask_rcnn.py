"""Two-stage detectors with FPN on COCO 2017 (TFDS lgvit_coco/2017) over a registered backbone: Mask R-CNN
(this file's default), Faster R-CNN, Cascade R-CNN and Cascade Mask R-CNN (``configs/faster_rcnn.py``,
``configs/cascade_rcnn.py``, ``configs/cascade_mask_rcnn.py`` are this file with ``framework=`` set).

    python main.py --config=configs/mask_rcnn.py:backbone=swin_t --workdir=gs://bucket/mask_rcnn_swin_t
    python main.py --config=configs/cascade_mask_rcnn.py:backbone=nommer_t --workdir=...  # NomMer Table 2 (3x)
    python main.py --config=configs/cascade_rcnn.py:backbone=cotnet50 --workdir=...  # CoTNet Table 7
    python main.py --config=configs/mask_rcnn.py:backbone=salg_t,schedule=3x --workdir=...
    python main.py --config=configs/mask_rcnn.py:backbone=lesa_resnet50,schedule=20e,side=1280 --workdir=...
    python main.py --config=configs/mask_rcnn.py:backbone=resnet50,demo --workdir=/tmp/det_demo  # digits, CPU

Sources, value by value, in docs/detection.md ("Recipes"). Every recipe: global batch 16 (mmdet's 2
images x 8 GPUs), mmcv's linear warm-up of 500 iterations from 0.001 x the LR, the LR x 0.1 at the
listed epochs, eval every epoch on val2017 (bbox and segm AP), the model's test settings (score 0.05,
NMS 0.5, 100 detections).

- ``sgd`` (mmdet's ``mask_rcnn_r50_fpn_1x_coco``; the ResNet rows of SALG Table II, LESA Table 3):
  SGD 0.02, momentum 0.9 (no Nesterov), weight decay 1e-4 on every parameter, 1x = 12 epochs with
  drops after 8 and 11; 1333x800 single scale. LESA (paper, Sec. 4.2 and Table 3): images stretched to
  1024x1024 (``side=1280`` for its higher-resolution rows), 1x or ``schedule=20e`` (drops after 16 and 19).
- ``adamw`` (the Swin detection configs, which SALG follows: paper Sec. IV-B; NomMer's backbones):
  AdamW 1e-4, betas 0.9/0.999, weight decay 0.05 except norms, position embeddings and relative
  tables; multi-scale training (shorter side 480..800 in steps of 32, longer <= 1333), half the images
  first resized to a shorter side of 400/500/600 and cropped to 384..600 px (their AutoAugment), for 1x
  and 3x (36 epochs, drops after 27 and 33).
- CoTNet (paper, Sec. 4.4: synchronized BN, 1x, detectron2 settings of its reference [57]): the ``sgd``
  recipe over detectron2's 90k-iteration 1x (drops at 60k and 80k, 1000 warm-up iterations), no decay on
  norm layers, shorter sides 640..800 (ResNeSt's box-only configs draw any integer in the range, its mask
  configs one of 640, 672, ..., 800) and the backbone's BN trained (synchronized under jit).
- Cascade Mask R-CNN over the transformers defaults to ``3x`` (NomMer Table 2, Swin's cascade configs);
  every other framework and backbone to ``1x``. Box-only frameworks are scored on boxes only.

``demo``: the backbone's digits demo widths under a narrow detector (64-channel FPN) on the embedded
``lgvit_digits_det`` (128x128 canvases with up to five digits, 10 classes), from scratch with AdamW;
docs/detection.md states the AP it reaches.
"""
import ml_collections

from configs import common, cotnet, lesa, nommer, resnet, salg, swin
from lgvit import schema
from lgvit.data import det_pipeline, det_transforms, digits_det
from lgvit.models import model_info

#: framework (the registered family) -> whether it predicts masks.
FRAMEWORKS = {'mask_rcnn': True, 'faster_rcnn': False, 'cascade_rcnn': False, 'cascade_mask_rcnn': True}
CONV = ('resnet50', 'resnet101', 'cotnet50', 'cotnet101', 'cotnext50_2x48d', 'lesa_resnet50', 'lesa_wrn50',
        'sa_resnet50')
TRANSFORMER = ('swin_t', 'swin_s', 'salg_st', 'salg_t', 'salg_s', 'nommer_t', 'nommer_s', 'nommer_b')
#: backbone -> registered Mask R-CNN model (the other frameworks: ``f'{framework}_{backbone}'``).
BACKBONES = {b: f'mask_rcnn_{b}' for b in CONV + TRANSFORMER}
LESA = ('lesa_resnet50', 'lesa_wrn50', 'sa_resnet50')
COTNET = ('cotnet50', 'cotnet101', 'cotnext50_2x48d')
#: COCO train2017 images (every one is kept, also the 1,021 without annotations: docs/detection.md).
COCO_TRAIN_EXAMPLES = 118_287
#: epochs, LR drops (mmdet's step=[...]). 20e: LESA Table 3's second schedule (mmdet's 20e, x0.1 after 16 and 19).
SCHEDULES = {'1x': (12, (8, 11)), '3x': (36, (27, 33)), '20e': (20, (16, 19))}
#: LESA Table 3's square input sides: 1024 by default, 1280 for its higher-resolution (superscript h) rows.
LESA_SIDES = (1024, 1280)
#: CoTNet's reference detection setting: shorter side 640..800 (ResNeSt's detectron2 configs).
COTNET_SCALES = tuple((1333, short) for short in range(640, 801, 32))
#: ResNeSt's box-only configs (MIN_SIZE_TRAIN_SAMPLING "range"): any shorter side from 640 to 800.
COTNET_RANGE_SCALES = tuple((1333, short) for short in range(640, 801))
#: detectron2's schedules in iterations at batch 16: total, LR x 0.1 from these iterations on.
DETECTRON2_SCHEDULES = {'1x': (90_000, (60_000, 80_000)), '3x': (270_000, (210_000, 250_000))}
DETECTRON2_WARMUP_STEPS = 1000

#: backbone -> its classification demo's shrunk widths; the registered entry's own backbone overrides
#: (pad_windows for Swin/NomMer, LESA's detection strides and axial tables) are added in apply_demo.
DEMO_BACKBONES = {
    'resnet50': resnet.DEMO_MODEL, 'resnet101': resnet.DEMO_MODEL,
    'cotnet50': cotnet.demo_model('cotnet50'), 'cotnet101': cotnet.demo_model('cotnet101'),
    'cotnext50_2x48d': cotnet.demo_model('cotnext50_2x48d'),
    **{b: lesa.DEMO_MODEL for b in LESA},
    **{b: swin.DEMO_MODEL for b in ('swin_t', 'swin_s')},
    **{b: salg.DEMO_MODEL for b in ('salg_st', 'salg_t', 'salg_s')},
    **{b: nommer.DEMO_MODEL for b in ('nommer_t', 'nommer_s', 'nommer_b')},
}
DEMO_STEPS = 600
#: The demo's detector around the demo backbone: narrow heads, fewer proposals and samples.
DEMO_HEADS = dict(fpn_channels=64, fc_channels=256, mask_channels=64, rpn_train_pre_nms=500, rpn_test_pre_nms=500,
                  rpn_max_proposals=200, rpn_train_max_proposals=0, rcnn_samples=128, max_detections=20)


def get_config(arg=None, framework: str = 'mask_rcnn'):
  args = common.parse_arg(arg, backbone='resnet50', schedule='', side=0, demo=False, framework=framework)
  with_masks = common.choose(FRAMEWORKS, args.framework, 'detection framework')
  common.choose(BACKBONES, args.backbone, 'detection backbone')
  model = f'{args.framework}_{args.backbone}'
  if not args.schedule:  # NomMer Table 2 and Swin's cascade configs train 3x
    args.schedule = '3x' if args.framework == 'cascade_mask_rcnn' and args.backbone in TRANSFORMER else '1x'
  epochs, drops = common.choose(SCHEDULES, args.schedule, 'schedule')
  c = schema.base_config(model)
  c.task = 'detection'
  c.num_classes = 80
  schema.keep_evals(c, 'main')  # the ImageNet evaluators do not apply; mmdet keeps no EMA
  c.ema_decay = 0.0

  c.data.update(dataset='lgvit_coco/2017', train_split='train', eval_split='validation', shuffle_buffer=1024)
  c.aug.hflip = True  # mmdet RandomFlip(flip_ratio=0.5)
  det_pipeline.default_fields(c)  # data.scale (1333, 800), keep_ratio, pad_size 1344^2, max_instances, mask_stride
  c.data.image_size = c.data.pad_size[0]  # the square the variables are initialised on

  c.det = det = ml_collections.ConfigDict()  # read by lgvit.tasks.detection
  det.iou_types = ('bbox', 'segm') if with_masks else ('bbox',)

  c.batch_size, c.eval_batch_size = 16, 16
  c.schedule.update(lr_base_batch=0, decay='step', decay_epochs=drops, decay_rate=0.1, unit='step',
                    warmup_style='mmcv', min_lr=0.0)
  c.schedule.warmup_steps = 500
  c.num_epochs = float(epochs)
  c.eval_every_epochs = 1.0  # mmdet: evaluation interval 1 epoch
  c.checkpoint_every_steps = COCO_TRAIN_EXAMPLES // 16
  c.best_metric = 'bbox_AP'
  if args.backbone in TRANSFORMER:
    adamw_recipe(c)
  else:
    sgd_recipe(c)
  if args.side and args.backbone not in LESA:
    raise ValueError(f'side={args.side} applies to the LESA backbones ({", ".join(LESA)}) only; the others keep '
                     "mmdet's 1333x800 (multi-scale for the transformers)")
  if args.backbone in LESA:  # LESA, Sec. 4.2: every image stretched to a square, no multi-scale
    side = common.choose({s: s for s in LESA_SIDES}, args.side or LESA_SIDES[0], 'LESA input side')
    c.data.update(scale=(side, side), keep_ratio=False, pad_size=(side, side), image_size=side)
  if args.backbone in COTNET:
    cotnet_recipe(c, args.schedule)
    if not with_masks:
      c.aug.scales = COTNET_RANGE_SCALES

  c.init_from = f'workdirs/{args.backbone}'  # an ImageNet run of the backbone (or a converted checkpoint)
  c.init_skip = r'^(params|batch_stats)/(?!backbone/)'  # everything but the backbone starts fresh
  if args.backbone in LESA:  # LESA's detection code re-initialises the position tables (1024 inputs)
    c.init_skip += r'|/binary/(rel_height|rel_width|similarity_bn|output_bn)(/|$)'
  if args.demo:
    apply_demo(c, args.backbone)
  c.lock()
  return c


def sgd_recipe(c: ml_collections.ConfigDict) -> None:
  """mmdet's default optimiser: SGD 0.02 at batch 16, momentum 0.9, decay 1e-4 on every parameter."""
  c.optim.update(optimizer='sgd', momentum=0.9, nesterov=False, weight_decay=1e-4, wd_exclude='none',
                 grad_clip_norm=0.0)
  c.schedule.update(lr=0.02, warmup_lr=0.02 * 0.001)


def cotnet_recipe(c: ml_collections.ConfigDict, schedule: str) -> None:
  """CoTNet Sec. 4.4 takes ResNeSt's detectron2 Mask R-CNN settings: the SGD recipe over detectron2's
  iteration schedule (1x: 90k iterations, x0.1 from 60k and 80k; 3x: 270k, 210k, 250k; linear warm-up of
  1000 iterations from 0.001 x the LR), no weight decay on the norm layers, shorter side 640..800. (``20e``
  keeps mmdet's epochs.)"""
  c.aug.scales = COTNET_SCALES
  c.optim.wd_exclude = 'norms'  # detectron2 WEIGHT_DECAY_NORM = 0
  if schedule in DETECTRON2_SCHEDULES:
    iterations, drops = DETECTRON2_SCHEDULES[schedule]
    steps_per_epoch = COCO_TRAIN_EXAMPLES // c.batch_size
    c.num_train_steps = iterations
    c.num_epochs = iterations / steps_per_epoch
    c.schedule.decay_epochs = tuple(d / steps_per_epoch for d in drops)  # fractional: iteration milestones
    c.schedule.warmup_steps = DETECTRON2_WARMUP_STEPS


def adamw_recipe(c: ml_collections.ConfigDict) -> None:
  """The Swin detection configs' AdamW (SALG Sec. IV-B), with their multi-scale training."""
  c.optim.update(optimizer='adamw', adam_b1=0.9, adam_b2=0.999, adam_eps=1e-8, weight_decay=0.05,
                 wd_exclude='mmseg_swin', grad_clip_norm=0.0)
  c.schedule.update(lr=1e-4, warmup_lr=1e-4 * 0.001)
  c.aug.scales = det_transforms.MULTISCALE_3X
  c.aug.autoaugment_crop = True  # the configs' AutoAugment: half the images resized, cropped 384..600, then multi-scale


def apply_demo(c: ml_collections.ConfigDict, backbone: str) -> None:
  """The embedded digits detection demo, from scratch (values chosen for 2 CPU cores)."""
  registered = model_info(c.model).defaults.get('backbone_kwargs') or {}
  c.model_kwargs.backbone_kwargs = {**DEMO_BACKBONES[backbone], **registered, 'drop_path_rate': 0.0}
  c.model_kwargs.update(DEMO_HEADS)
  c.model_kwargs.backbone_norm_eval = False  # from scratch: the backbone's BN must train
  c.num_classes = 10
  c.data.update(dataset='lgvit_digits_det', scale=(128, 128), keep_ratio=True, pad_size=(128, 128), image_size=128,
                max_instances=8, mask_stride=2, cache_train=True, shuffle_buffer=1000)
  c.aug.scales, c.aug.autoaugment_crop = (), False
  c.aug.hflip = False  # digits are not mirror-symmetric
  c.optim.update(optimizer='adamw', adam_b1=0.9, adam_b2=0.999, weight_decay=0.05, wd_exclude='mmseg_swin')
  c.schedule.update(lr=1e-3, warmup_lr=1e-6, decay='cosine', min_lr=1e-5, warmup_style='timm')
  c.schedule.warmup_steps = 50
  c.batch_size, c.eval_batch_size = 8, 40
  c.num_train_steps = DEMO_STEPS
  c.num_epochs = DEMO_STEPS * c.batch_size / digits_det.SPLIT_SIZES['train']
  c.eval_every_epochs = c.num_epochs / 2
  c.log_every_steps, c.checkpoint_every_steps, c.keep_checkpoints = 50, 200, 2
  c.init_from = ''
