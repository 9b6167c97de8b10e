"""Pictures of what a model does with one image, from the values its layers sow (docs/introspection.md).

:func:`pictures` takes a :class:`lgvit.inference.LoadedModel` and an image and returns the pictures of the
model's family with the numbers behind them; :func:`save` writes them. ``python -m lgvit.visualize`` is the
command line, and its help lists the pictures of each family. The figures use matplotlib's object API
(no pyplot state, any backend).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from typing import Any, Callable

import flax
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from PIL import Image

from lgvit.errors import LgvitError
from lgvit.models import lesa, model_info

#: Paper Fig. 4 colours, indexed by the sown nomination (0 = CNN, 1 = local, 2 = global).
NOMINATION_COLORS = np.array([(255, 0, 0), (0, 255, 0), (0, 0, 255)], np.uint8)
NOMINATION_NAMES = ('CNN', 'local', 'global')
#: Pictures are drawn at least this many pixels wide per panel (small crops are upscaled).
MIN_PANEL = 224
#: White pixels between the overlay and the flat map of a two-panel picture.
PANEL_GAP = 8
#: How much of the overlay colour is the map (the rest is the crop in grey).
OVERLAY_ALPHA = 0.5
#: SALG region colours: region (r, c) of the window grid gets REGION_COLORS[(r % 3) * 3 + c % 3], so
#: a token's nine candidate regions (its window and the eight neighbours) never share a colour.
REGION_COLORS = np.array([(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
                          (145, 30, 180), (70, 240, 240), (240, 50, 230), (128, 128, 0)], np.uint8)
REGION_BOUNDARY = np.array((255, 255, 255), np.uint8)
FIGURE_DPI = 100


class NothingToDrawError(LgvitError, ValueError):
  pass


@dataclasses.dataclass
class Picture:
  filename: str
  image: Image.Image
  title: str


# ---------------------------------------------------------------------------------------------
# Geometry shared by the map pictures.
# ---------------------------------------------------------------------------------------------


def panel_size(crop_size: int) -> int:
  """Side of a picture panel: the crop upscaled by the smallest integer factor reaching MIN_PANEL."""
  return crop_size * max(1, math.ceil(MIN_PANEL / crop_size))


def token_of_pixel(panel: int, grid: int) -> np.ndarray:
  """Index of the token (of a ``grid``-long side) under each of the ``panel`` pixels (nearest)."""
  return (np.arange(panel) * grid) // panel


def pixel_of_token(panel: int, grid: int) -> np.ndarray:
  """The panel pixel at the centre of each token, the inverse of :func:`token_of_pixel`."""
  return ((np.arange(grid) + 0.5) * panel / grid).astype(int)


def upsample(labels: np.ndarray, panel: int) -> np.ndarray:
  """(h, w) token labels -> (panel, panel) pixel labels (nearest)."""
  h, w = labels.shape
  return labels[token_of_pixel(panel, h)][:, token_of_pixel(panel, w)]


def grey_crop(crop: np.ndarray, panel: int) -> np.ndarray:
  """The crop, upscaled to the panel and in grey (so that only the map gives the overlay its hue)."""
  img = Image.fromarray(crop).resize((panel, panel), Image.BILINEAR).convert('L').convert('RGB')
  return np.asarray(img, np.float32)


def overlay(crop: np.ndarray, colors: np.ndarray) -> np.ndarray:
  panel = colors.shape[0]
  mixed = (1 - OVERLAY_ALPHA) * grey_crop(crop, panel) + OVERLAY_ALPHA * colors.astype(np.float32)
  return np.clip(np.round(mixed), 0, 255).astype(np.uint8)


def side_by_side(left: np.ndarray, right: np.ndarray) -> Image.Image:
  h = left.shape[0]
  gap = np.full((h, PANEL_GAP, 3), 255, np.uint8)
  return Image.fromarray(np.concatenate([left, gap, right], axis=1))


# ---------------------------------------------------------------------------------------------
# Reading the intermediates.
# ---------------------------------------------------------------------------------------------


def sown(intermediates: dict[str, Any], name: str) -> list[tuple[tuple[str, ...], np.ndarray]]:
  """Every value sown under ``name`` as (module path, array of the first image), in path order."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(intermediates))
  found = []
  for path, value in flat.items():
    if path[-1] == name:
      array = np.asarray(value[0] if isinstance(value, tuple) else value)
      found.append((path[:-1], array[0] if array.ndim else array))
  return sorted(found, key=lambda kv: [int(t) if t.isdigit() else t for t in re.split(r'(\d+)', '/'.join(kv[0]))])


def sown_or_explain(intermediates: dict[str, Any], name: str, why_none: str):
  """:func:`sown`, or :class:`NothingToDrawError` with ``why_none`` when the model sowed no ``name``."""
  found = sown(intermediates, name)
  if not found:
    raise NothingToDrawError(why_none)
  return found


def _index(pattern: str, path: tuple[str, ...]) -> tuple[int, ...]:
  for part in path:
    m = re.fullmatch(pattern, part)
    if m:
      return tuple(int(g) for g in m.groups())
  raise ValueError(f'no module matching {pattern!r} in {"/".join(path)}')


# ---------------------------------------------------------------------------------------------
# Figures (matplotlib's object API: no pyplot state, any backend).
# ---------------------------------------------------------------------------------------------


def _figure(width_in: float, height_in: float):
  fig = Figure(figsize=(width_in, height_in), dpi=FIGURE_DPI)
  FigureCanvasAgg(fig)
  return fig


def _to_image(fig) -> Image.Image:
  fig.canvas.draw()
  return Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())


def _legend_patches(colors, names):
  return [Patch(facecolor=np.asarray(c) / 255.0, edgecolor='black', label=n) for c, n in zip(colors, names)]


# ---------------------------------------------------------------------------------------------
# NomMer: nomination maps.
# ---------------------------------------------------------------------------------------------


def nommer_pictures(crop: np.ndarray, intermediates, model) -> tuple[list[Picture], dict[str, Any]]:
  del model
  maps = sown_or_explain(intermediates, 'nomination', 'this NomMer sows no nominations: it runs without the '
                         "nominator (fusion='sum' or a single candidate, see nommer.ABLATIONS)")
  panel = panel_size(crop.shape[0])
  pictures, summary, overlays = [], {}, []
  for path, nomination in maps:
    stage, block = _index(r'stage(\d+)_block(\d+)', path)
    label = f'Layer {stage}_{block + 1}'
    colors = NOMINATION_COLORS[upsample(nomination, panel)]
    over = overlay(crop, colors)
    overlays.append((label, over))
    pictures.append(Picture(f'nommer_nomination_stage{stage}_block{block}.png', side_by_side(over, colors),
                            f'{label}: nominated context per token (red CNN, green local, blue global)'))
    counts = np.bincount(nomination.ravel(), minlength=3) / nomination.size
    summary[label] = {'module': '/'.join(path), 'grid': list(nomination.shape),
                      **{n: float(c) for n, c in zip(NOMINATION_NAMES, counts)}}
  stages = sorted({label.split()[1].split('_')[0] for label, _ in overlays})
  cols = max(sum(label.startswith(f'Layer {s}_') for label, _ in overlays) for s in stages)
  fig = _figure(max(2.2 * cols, 4.5), 2.4 * len(stages) + 0.6)
  for r, s in enumerate(stages):
    row = [(label, img) for label, img in overlays if label.startswith(f'Layer {s}_')]
    for c, (label, img) in enumerate(row):
      ax = fig.add_subplot(len(stages), cols, r * cols + c + 1)
      ax.imshow(img)
      ax.set_title(label, fontsize=9)
      ax.axis('off')
  fig.legend(handles=_legend_patches(NOMINATION_COLORS, NOMINATION_NAMES), loc='lower center', ncol=3, fontsize=9)
  fig.suptitle('NomMer nomination maps', fontsize=10)
  pictures.append(Picture('nommer_nominations.png', _to_image(fig), 'every S-NomMer layer (paper Fig. 4 colours)'))
  return pictures, {'nomination_shares': summary}


# ---------------------------------------------------------------------------------------------
# SALG: region segmentation.
# ---------------------------------------------------------------------------------------------


def region_colors(regions: np.ndarray, grid_width: int) -> np.ndarray:
  """Colour of every region index (row-major over a window grid ``grid_width`` windows wide)."""
  row, col = np.divmod(regions, grid_width)
  return REGION_COLORS[(row % 3) * 3 + col % 3]


def region_boundaries(pixel_regions: np.ndarray) -> np.ndarray:
  """True on pixels whose right or lower neighbour lies in another region."""
  edge = np.zeros(pixel_regions.shape, bool)
  edge[:, :-1] |= pixel_regions[:, :-1] != pixel_regions[:, 1:]
  edge[:-1, :] |= pixel_regions[:-1, :] != pixel_regions[1:, :]
  return edge


def salg_pictures(crop: np.ndarray, intermediates, model) -> tuple[list[Picture], dict[str, Any]]:
  maps = sown_or_explain(intermediates, 'regions', 'this SALG sows no region maps')
  panel = panel_size(crop.shape[0])
  pictures, summary = [], {}
  for path, regions in maps:
    (stage,) = _index(r'stage(\d+)', path)
    grid_width = -(-regions.shape[1] // model.region_size)
    pixel_regions = upsample(regions, panel)
    colors = region_colors(pixel_regions, grid_width)
    colors[region_boundaries(pixel_regions)] = REGION_BOUNDARY
    pictures.append(Picture(f'salg_regions_stage{stage}.png', side_by_side(overlay(crop, colors), colors),
                            f'stage {stage}: semantic regions ({len(np.unique(regions))} regions)'))
    summary[f'stage{stage}'] = {'module': '/'.join(path), 'grid': list(regions.shape),
                                'regions': int(len(np.unique(regions))), 'window_grid_width': grid_width}
  return pictures, {'regions': summary}


# ---------------------------------------------------------------------------------------------
# LESA: unary vs binary weights.
# ---------------------------------------------------------------------------------------------


#: The unary/binary weights of each LESA-family variant as the paper's Tables 1 and 2 define them
#: (lgvit.models.lesa.unary_binary_shares_per_layer): legend labels and the summary's 'definition'.
LESA_SHARE_DEFINITIONS = {
    'lesa': ('unary 1/(1+ω)', 'binary ω/(1+ω)', 'LESA (Tab. 2): 1/(1+ω) and ω/(1+ω) of the fusion gate ω'),
    'sa': ('unary S[i,i]', 'binary 1 - S[i,i]', 'SA (Tabs. 1 and 2): the softmax weight S[i,i] a position puts on '
           'itself, and the rest'),
    'static': ('unary (ω = 1)', 'binary (ω = 1)', 'static LESA: unary + binary with equal weights (ω = 1)'),
}


def _paper_unary_weight(model):
  try:
    return model_info(model.name).paper.get('unary_weight')
  except LgvitError:
    return None


def _binary_share_maps(variant, intermediates) -> list[tuple[tuple[str, ...], np.ndarray]]:
  """(layer path, (h, w) binary share of each position) of the first image: LESA, ω/(1+ω) averaged
  over channels; SA, 1 - S[i,i] averaged over heads. Empty for static LESA (0.5 everywhere)."""
  if variant == 'lesa':
    return [(path, np.mean(g / (1.0 + g), axis=-1)) for path, g in sown(intermediates, 'gate')]
  if variant == 'sa':
    shapes = {path: b.shape[:2] for path, b in sown(intermediates, 'binary_term')}
    return [(path[:-1], (1.0 - np.mean(np.diagonal(a, axis1=1, axis2=2), axis=0)).reshape(shapes[path[:-1]]))
            for path, a in sown(intermediates, 'attention') if path[-1] == 'binary']
  return []


def lesa_pictures(crop: np.ndarray, intermediates, model) -> tuple[list[Picture], dict[str, Any]]:
  del crop
  variant = getattr(getattr(model, 'make_spatial', None), 'variant', None)
  if variant not in LESA_SHARE_DEFINITIONS:
    raise NothingToDrawError(f'{model.name} has no unary/binary weights to draw: '
                             + ('Attention Augmentation concatenates conv and attention channels, and the LESA paper '
                                'defines weights only for SA and LESA' if variant == 'aa' else f'variant {variant!r}'))
  try:
    # Tables 1/2's weights of this one image, per layer: the definitions of unary_binary_shares.
    shares = lesa.unary_binary_shares_per_layer(model, intermediates)
  except ValueError as e:
    raise NothingToDrawError(str(e)) from None
  unary_label, binary_label, definition = LESA_SHARE_DEFINITIONS[variant]
  layers = list(shares)
  unary = [u for u, _ in shares.values()]
  binary = [b for _, b in shares.values()]
  paper = _paper_unary_weight(model)
  fig = _figure(max(6.0, 0.6 * len(layers) + 2), 4.8)
  ax = fig.add_subplot(1, 1, 1)
  x = np.arange(len(layers))
  ax.bar(x, unary, color='tab:blue', label=unary_label)
  ax.bar(x, binary, bottom=unary, color='tab:orange', label=binary_label)
  paper_note = f' (paper, trained {model.name}: {paper:.1%})' if paper is not None else ''
  ax.axhline(float(np.mean(unary)), color='black', linestyle='--', linewidth=1,
             label=f'mean unary {np.mean(unary):.1%}{paper_note}')
  ax.set_xticks(x, [l.split('/')[0] for l in layers], rotation=45, ha='right', fontsize=8)
  ax.set_ylim(0, 1)
  ax.set_ylabel('weight share')
  ax.set_title(f'{model.name}: unary vs binary weight per layer', fontsize=10)
  ax.legend(fontsize=8, loc='upper center', bbox_to_anchor=(0.5, -0.22), ncol=2)
  fig.subplots_adjust(bottom=0.38)
  pictures = [Picture('lesa_unary_binary.png', _to_image(fig),
                      f'unary vs binary weight share of each layer ({variant})')]

  maps = _binary_share_maps(variant, intermediates)
  if maps:
    cols = min(len(maps), 4)
    rows = -(-len(maps) // cols)
    fig = _figure(2.6 * cols + 1.6, 2.6 * rows + 0.3)
    vmax = 0.5 if variant == 'lesa' else 1.0  # omega/(1+omega) < 0.5
    for i, (path, m) in enumerate(maps):
      ax = fig.add_subplot(rows, cols, i + 1)
      im = ax.imshow(m, cmap='viridis', vmin=0, vmax=vmax, interpolation='nearest')
      ax.set_title(path[0], fontsize=9)
      ax.axis('off')
    fig.colorbar(im, ax=fig.axes, shrink=0.8, label=f'binary share {binary_label.split(" ", 1)[1]}')
    pictures.append(Picture('lesa_binary_maps.png', _to_image(fig), 'where each layer weighs the binary term'))
  summary = {l: {'unary': u, 'binary': b} for l, u, b in zip(layers, unary, binary)}
  return pictures, {'variant': variant, 'definition': definition, 'unary_binary': summary,
                    'mean_unary': float(np.mean(unary)), 'mean_binary': float(np.mean(binary)),
                    'paper_mean_unary': paper}


# ---------------------------------------------------------------------------------------------
# CoTNet: static vs dynamic fusion weights.
# ---------------------------------------------------------------------------------------------


def cotnet_pictures(crop: np.ndarray, intermediates, model) -> tuple[list[Picture], dict[str, Any]]:
  del model
  weights = sown(intermediates, 'fusion_weights')
  if not weights:
    raise NothingToDrawError("this CoTNet fuses without attention (context='static'|'dynamic'|'linear'), so "
                             'there are no fusion weights to draw')
  # fusion_weights (C, 2): [..., 0] weighs the dynamic context K2, [..., 1] the static K1.
  layers = []
  for path, w in weights:
    stage, block = _index(r'layer(\d+)_(\d+)', path)
    layers.append((stage, block, '/'.join(path), float(np.mean(w[..., 1])), float(np.mean(w[..., 0]))))
  stages = sorted({s for s, *_ in layers})
  per_stage = {s: (float(np.mean([l[3] for l in layers if l[0] == s])),
                   float(np.mean([l[4] for l in layers if l[0] == s]))) for s in stages}
  fig = _figure(max(7.0, 0.45 * len(layers) + 4), 4.0)
  ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
  x = np.arange(len(stages))
  ax1.bar(x, [per_stage[s][0] for s in stages], color='tab:green', label='static K1')
  ax1.bar(x, [per_stage[s][1] for s in stages], bottom=[per_stage[s][0] for s in stages], color='tab:purple',
          label='dynamic K2')
  ax1.set_xticks(x, [f'stage {s}' for s in stages])
  ax1.set_ylim(0, 1)
  ax1.set_ylabel('fusion weight (mean over channels)')
  ax1.set_title('per stage', fontsize=10)
  ax1.legend(fontsize=8, loc='upper center', bbox_to_anchor=(0.5, -0.12), ncol=2)
  xl = np.arange(len(layers))
  ax2.bar(xl, [l[3] for l in layers], color='tab:green')
  ax2.bar(xl, [l[4] for l in layers], bottom=[l[3] for l in layers], color='tab:purple')
  ax2.set_xticks(xl, [f'layer{s}_{b}' for s, b, *_ in layers], rotation=90, fontsize=7)
  ax2.set_ylim(0, 1)
  ax2.set_title('per CoT layer', fontsize=10)
  fig.suptitle('CoT: static vs dynamic context weight', fontsize=10)
  fig.subplots_adjust(bottom=0.25, wspace=0.3)
  summary = {f'stage{s}': {'static': per_stage[s][0], 'dynamic': per_stage[s][1]} for s in stages}
  per_layer = {path: {'static': st, 'dynamic': dy} for _, _, path, st, dy in layers}
  return ([Picture('cotnet_static_dynamic.png', _to_image(fig), 'static vs dynamic fusion weight')],
          {'per_stage': summary, 'per_layer': per_layer})


RENDERERS: dict[str, Callable[..., tuple[list[Picture], dict[str, Any]]]] = {
    'nommer': nommer_pictures,
    'salg': salg_pictures,
    'lesa': lesa_pictures,
    'cotnet': cotnet_pictures,
}


def pictures(loaded, image) -> tuple[list[Picture], dict[str, Any]]:
  """The pictures of ``image`` (path, bytes or uint8 array) for a :class:`lgvit.inference.LoadedModel`."""
  if loaded.family not in RENDERERS:
    raise NothingToDrawError(f'{loaded.name} ({loaded.family}) sows nothing to draw; pictures exist for the '
                             f"families {', '.join(sorted(RENDERERS))}")
  crop = loaded.preprocess(image)
  logits, intermediates = loaded.intermediates(crop[None])
  pics, summary = RENDERERS[loaded.family](crop, intermediates, loaded.model)
  top = np.argsort(-logits[0], kind='stable')[:5]
  summary = {'model': loaded.name, 'family': loaded.family, 'crop_size': int(crop.shape[0]),
             'top5': [loaded.class_names[i] for i in top], **summary}
  return [Picture('input_crop.png', Image.fromarray(crop), 'the crop the model sees'), *pics], summary


def save(pics: list[Picture], summary: dict[str, Any], out: str) -> list[str]:
  os.makedirs(out, exist_ok=True)
  paths = []
  for pic in pics:
    path = os.path.join(out, pic.filename)
    pic.image.save(path)
    paths.append(path)
  with open(os.path.join(out, 'summary.json'), 'w') as f:
    json.dump(summary, f, indent=2)
  return paths
