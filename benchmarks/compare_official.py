"""lgvit vs the authors' PyTorch code on a 2-core CPU: one table with the ratios.

    python benchmarks/compare_official.py benchmarks/cpu   # reads the files that cpu_results.sh writes

Inputs in DIR: ``{infer,train}_{1,2}t.json`` from ``python -m lgvit.benchmark --out`` and
``anchor_{1,2}t*.json`` from ``benchmarks/torch_anchor.py`` (timed before and after each block; the
mean is used and the spread printed). The official figures are the ones in
docs/official_code.md (CPU baselines; mean of two runs), measured on another 2-core VM. A plain
PyTorch ResNet-50, timed the same way on both machines, gives this machine's speed relative to that
one, per mode and thread count; the official figures are scaled by it before the ratio is taken.
"""
import glob
import json
import os
import sys

# images/s (eval 1T, train 1T, eval 2T, train 2T): docs/official_code.md, CPU baselines.
OFFICIAL = {
    'nommer_t': ('NomMer-T (official)', (7.02, 2.50, 13.36, 4.53)),
    'cotnet50': ('CoTNet-50 (official)', (7.04, 2.42, 13.23, 3.85)),
    'lesa_resnet50': ('LESA-R50 (official)', (5.13, 1.88, 9.68, 3.90)),
    'resnet50': ('torchvision ResNet-50', (11.55, 3.87, 23.47, 8.08)),
    # SALG has no official code: timm's Swin-T, which SALG builds on, is the nearest PyTorch point.
    'salg_t': ('timm Swin-T (no SALG code exists)', (7.30, 2.89, 13.38, 5.13)),
    'swin_t': ('timm Swin-T', (7.30, 2.89, 13.38, 5.13)),
}
ANCHOR_THERE = (11.55, 3.87, 23.47, 8.08)  # the same torch ResNet-50 on the baseline VM
COLUMNS = (('infer', 1), ('train', 1), ('infer', 2), ('train', 2))


def _load(path):
  with open(path) as f:
    return json.load(f)


def main(directory):
  rows = {}
  for mode, threads in COLUMNS:
    path = os.path.join(directory, f'{mode}_{threads}t.json')
    if os.path.exists(path):
      for r in _load(path)['rows']:
        rows.setdefault(r['model'], {})[(mode, threads)] = r
  factors, notes = [], []
  for i, (mode, threads) in enumerate(COLUMNS):
    key = f"{'eval' if mode == 'infer' else 'train'}_images_per_s"
    paths = sorted(glob.glob(os.path.join(directory, f'anchor_{threads}t*.json')), key=lambda p: 'after' in p)
    here = [_load(p)[key] for p in paths]
    factors.append(sum(here) / len(here) / ANCHOR_THERE[i] if here else None)
    notes.append(f"{mode} {threads}T {factors[-1]:.2f} (anchor {' / '.join(f'{h:.2f}' for h in here)} img/s)"
                 if here else f'{mode} {threads}T ?')
  print('Machine factor (torch ResNet-50 here / on the baseline VM; the anchor timings before / after '
        'the lgvit block): ' + ', '.join(notes))
  print()
  print('| lgvit model | official counterpart | ' +
        ' | '.join(f'{m} {t}c: lgvit / official (scaled) = ratio' for m, t in COLUMNS) + ' |')
  print('|---|---|' + '---|' * len(COLUMNS))
  for name, (label, official) in OFFICIAL.items():
    if name not in rows:
      continue
    cells = []
    for i, key in enumerate(COLUMNS):
      r = rows[name].get(key)
      if r is None or not isinstance(r.get('images_per_s'), (int, float)) or factors[i] is None:
        cells.append('–')
        continue
      scaled = official[i] * factors[i]
      cells.append(f"{r['images_per_s']:.2f} / {scaled:.2f} = **{r['images_per_s'] / scaled:.2f}x**")
    print(f'| {name} | {label} | ' + ' | '.join(cells) + ' |')


if __name__ == '__main__':
  main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), 'cpu'))
