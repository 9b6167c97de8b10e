"""Makes docs/gallery.md and its PNGs: the papers' pictures, drawn by lgvit's demo models.

    PYTHONPATH=. python docs/make_gallery.py                      # trains each demo model, then draws
    PYTHONPATH=. python docs/make_gallery.py --steps 0 --out /tmp/g   # untrained models (seconds, not minutes)

For each family (NomMer, SALG, LESA, CoTNet) the script trains the family's ``configs/<variant>.py:demo``
on the embedded digits for ``--steps`` steps (fixed seed, the same run every time on one machine), loads
the workdir back as ``python -m lgvit.visualize --workdir`` does, and draws the pictures of one digit
with :func:`lgvit.introspection.pictures`. It writes ``OUT/<family>/*.png`` and ``OUT.md`` (the gallery
page, whose captions carry the numbers behind the pictures). PNGs are optimised; each stays < 100 KB
(tests/test_gallery.py checks).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import pathlib
import sys
import tempfile

#: The family's demo model: (family, registered variant, paper figure the pictures follow).
FAMILIES = (
    ('nommer', 'nommer_t', 'NomMer nomination maps (the paper\'s Fig. 4): the context each token of each '
     'S-NomMer layer nominated, red = CNN, green = local window attention, blue = compressed global context'),
    ('salg', 'salg_t', 'SALG semantic regions (the paper\'s Fig. 4): each token joins the most similar of its '
     'nine neighbouring window regions; white lines are the region borders'),
    ('lesa', 'lesa_resnet50', 'LESA unary vs binary gates (the paper\'s Table 2, per layer): the weights '
     '1/(1+ω) of the local convolution and ω/(1+ω) of self-attention. An untrained demo model gives about the '
     'same (67.1% / 32.9% on the photo of what_the_models_see.ipynb), so the share below says little about the '
     'paper\'s'),
    ('cotnet', 'cotnet50', 'CoTNet static vs dynamic context: the split-attention fusion weights of the '
     'static keys (3x3 conv) and of the dynamic context (local attention), per stage and per layer'),
)
#: The digit drawn (index into sklearn's digits; a '3', whose strokes fill the crop).
DIGIT_INDEX = 3
MAX_PNG_BYTES = 100_000


def demo_model(variant: str, steps: int, workdir: str, data_dir: str | None):
  """The variant's demo model after ``steps`` training steps (0: freshly initialised, seed 0)."""
  from lgvit import inference, train
  config = importlib.import_module(f'configs.{variant}').get_config('demo')
  if steps == 0:
    return inference.from_config(config), None
  config.unlock()
  config.num_train_steps = steps
  config.data.data_dir = data_dir
  config.log_every_steps = max(steps // 3, 1)
  result = train.train_and_evaluate(config, workdir, async_checkpoints=False)
  return inference.load(workdir), float(result['eval_top1'])


def save_png(image, path: pathlib.Path):
  path.parent.mkdir(parents=True, exist_ok=True)
  image.save(path, optimize=True)
  if path.stat().st_size > MAX_PNG_BYTES:  # a palette keeps the flat-coloured maps exact, and small
    image.convert('RGB').quantize(colors=256).save(path, optimize=True)


def section(family: str, variant: str, about: str, steps: int, top1: float | None, files: list[tuple[str, str]],
            summary: dict) -> str:
  """The gallery's markdown for one family: what the pictures show, how the model was made, the PNGs."""
  how = (f'`configs/{variant}.py:demo` trained for {steps} steps on the embedded digits '
         f'(validation top-1 {top1:.3f})' if steps else
         f'`configs/{variant}.py:demo`, untrained (seed 0)')
  lines = [f'## {family_title(family)}', '', f'{about}.', '', f'Model: {how}; top-5 for this digit: '
           f"{', '.join(summary['top5'])}. {numbers(family, summary)}", '']
  for rel, title in files:
    lines += [f'![{title}]({rel})', f'*{title}*', '']
  return '\n'.join(lines)


def numbers(family: str, summary: dict) -> str:
  """The numbers behind a family's pictures, in one sentence (from introspection.pictures' summary)."""
  if family == 'nommer':
    return 'Nominations: ' + '; '.join(
        f"{layer} " + ', '.join(f'{name} {share[name]:.0%}' for name in ('CNN', 'local', 'global'))
        for layer, share in summary['nomination_shares'].items()) + '.'
  if family == 'salg':
    return 'Regions: ' + ', '.join(f"{stage} {info['regions']} on a {info['grid'][0]}x{info['grid'][1]} token map"
                                   for stage, info in summary['regions'].items()) + '.'
  if family == 'lesa':
    return (f"Mean weights over the LESA layers: unary {summary['mean_unary']:.1%}, binary "
            f"{summary['mean_binary']:.1%} (the paper's trained LESA-ResNet50: 67.0% / 33.0%).")
  return 'Fusion weights: ' + ', '.join(f"{stage} static {w['static']:.0%} / dynamic {w['dynamic']:.0%}"
                                        for stage, w in summary['per_stage'].items()) + '.'


def family_title(family: str) -> str:
  return {'nommer': 'NomMer', 'salg': 'SALG', 'lesa': 'LESA', 'cotnet': 'CoTNet'}[family]


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--steps', type=int, default=150, help='training steps per demo model (0: untrained)')
  parser.add_argument('--out', default=str(pathlib.Path(__file__).parent / 'gallery'),
                      help='folder for the PNGs; the page is written next to it as OUT.md')
  parser.add_argument('--data_dir', default=None, help='TFDS data_dir for the embedded digits')
  parser.add_argument('--families', default=','.join(f for f, *_ in FAMILIES), help='comma-separated subset')
  args = parser.parse_args(argv)
  from lgvit import cli, cpu_kernels, introspection
  cpu_kernels.use()  # before the first JAX computation: XLA reads XLA_FLAGS when its CPU client starts
  from lgvit.data.digits import to_rgb32
  from PIL import Image
  from sklearn.datasets import load_digits
  cli.quiet_logs()

  out = pathlib.Path(args.out)
  digit = load_digits()
  image = to_rgb32(digit.images[DIGIT_INDEX])
  wanted = args.families.split(',')
  page = ['# Gallery: what the demo models see', '',
          f'Made by `PYTHONPATH=. python docs/make_gallery.py --steps {args.steps}` from the demo configs '
          f'(32x32 inputs, shrunk widths and depths, the papers\' block types) on the embedded digits, '
          f'for one digit (a {digit.target[DIGIT_INDEX]}, upscaled to 32x32). The same pictures of any '
          'model and image: `python -m lgvit.visualize --workdir WORKDIR --image photo.jpg --out DIR` '
          '([docs/introspection.md](introspection.md)). Toy models on toy images: the pictures show what '
          'each mechanism computes, not the papers\' ImageNet results.', '']
  with tempfile.TemporaryDirectory(prefix='lgvit-gallery-') as tmp:
    for family, variant, about in FAMILIES:
      if family not in wanted:
        continue
      loaded, top1 = demo_model(variant, args.steps, os.path.join(tmp, variant), args.data_dir)
      pictures, summary = introspection.pictures(loaded, image)
      files = []
      for picture in pictures:
        path = out / family / picture.filename
        if picture.filename == 'input_crop.png':  # 32x32 is a dot on a web page: the maps' panel size
          side = introspection.panel_size(picture.image.width)
          picture.image = picture.image.resize((side, side), Image.NEAREST)
        save_png(picture.image, path)
        files.append((f'{out.name}/{family}/{picture.filename}', picture.title))
        print(f'{path}  {path.stat().st_size / 1000:.0f} KB  {picture.title}', flush=True)
      (out / family / 'summary.json').write_text(json.dumps({**summary, 'steps': args.steps, 'eval_top1': top1},
                                                            indent=2) + '\n')
      page.append(section(family, variant, about, args.steps, top1, files, summary))
  page_path = out.parent / f'{out.name}.md'
  page_path.write_text('\n'.join(page).rstrip() + '\n')
  print(page_path)
  return 0


if __name__ == '__main__':
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
  sys.exit(main())
