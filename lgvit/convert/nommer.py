"""Official NomMer state_dicts (VisualRecognition-NomMer @ 6e09b71, ``NomMerAttn``) -> lgvit ``NomMer``.

Key scheme: ``docs/official_code.md`` (NomMer state-dict keys). The frozen DCT/IDCT kernels are checked against the
analytic basis of the target model (so a checkpoint built with other DCT block sizes fails loudly)
and then dropped, like the integer buffers ``relative_position_index`` and ``num_batches_tracked``.
"""
from __future__ import annotations

import numpy as np

from lgvit.convert.core import ConversionError, StateDictConverter, register_converter
from lgvit.models.nommer import dct_basis


def _pos_embedding_image_size(sd):
  pos = sd.get('pos_embedding')
  if pos is None or pos.ndim != 4:
    return None
  return int(pos.shape[1]) * 16  # the grid sits after three stride-2 stages on the S/4 stem output


def _take(conv: StateDictConverter, key: str):
  """Like ``conv.take``, but a missing key is recorded for the final report instead of stopping the rule."""
  if conv.has(key):
    return conv.take(key)
  conv.missing.append(key)
  return None


def _put(conv: StateDictConverter, key: str, path: tuple):
  value = _take(conv, key)
  if value is not None:
    conv.put(path, value)


def _check_dct_kernels(conv: StateDictConverter, key: str, block: int):
  """The frozen kernels must be the analytic basis the model uses for DCT block ``block``."""
  basis = dct_basis(block)  # (a*a, N, N)
  a2 = basis.shape[0]
  dct = _take(conv, f'{key}.dct_conv_8x8.weight')  # (a*a*d, 1, N, N), row c*a*a + k
  idct = _take(conv, f'{key}.idct_conv.0.weight')  # (N*N*d, a*a, 1, 1), row c*N*N + r*N + s
  if dct is None or idct is None:
    return
  if dct.shape[1:] != (1, block, block) or dct.shape[0] % a2:
    raise ConversionError(f'{key}.dct_conv_8x8.weight has shape {dct.shape}; the model uses {block}x{block} DCT '
                          f'blocks keeping {a2} frequencies (set dct_blocks to match the checkpoint)')
  d = dct.shape[0] // a2
  want_dct = np.tile(basis[:, None], (d, 1, 1, 1))
  want_idct = np.tile(basis.reshape(a2, block * block).T, (d, 1))[:, :, None, None]
  err = max(np.abs(dct - want_dct).max(), np.abs(idct - want_idct).max() if idct.shape == want_idct.shape else np.inf)
  if err > 1e-5:
    raise ConversionError(f'{key}: stored DCT/IDCT kernels differ from the analytic basis by {err:.3g}')


@register_converter('nommer', image_size_hint=_pos_embedding_image_size)
def convert_nommer(conv: StateDictConverter, model_name, model):
  del model_name
  conv.conv_bn('cnn1', 'bn1', ('stem',))
  for s, depth in enumerate(model.depths):
    for i in range(depth):
      tkey, path = f'transformer{s + 1}.layers.{i}', (f'stage{s + 1}_block{i}',)
      conv.norm(f'{tkey}.0.norm', path + ('norm1',))
      conv.norm(f'{tkey}.1.norm', path + ('norm2',))
      conv.dense(f'{tkey}.1.fn.net.0', path + ('mlp', 'fc1'))
      conv.dense(f'{tkey}.1.fn.net.3', path + ('mlp', 'fc2'))
      if s >= 2:
        conv.dense(f'{tkey}.0.fn.to_qkv', path + ('attn', 'to_qkv'))
        conv.dense(f'{tkey}.0.fn.to_out.0', path + ('attn', 'to_out'))
        continue
      fn, ctx = f'{tkey}.0.fn', path + ('context',)
      for k in (1, 2, 3):
        conv.conv_bn(f'{fn}.cnn.conv{k}', f'{fn}.cnn.bn{k}', ctx + ('cnn', f'conv{k}'))
      _put(conv, f'{fn}.attention.relative_position_bias_table',
           ctx + ('local', 'rel_pos', 'relative_position_bias_table'))
      conv.dense(f'{fn}.attention.qkv', ctx + ('local', 'attn', 'qkv'))
      conv.dense(f'{fn}.attention.proj', ctx + ('local', 'attn', 'proj'))
      _check_dct_kernels(conv, f'{fn}.attentionG', model.dct_blocks[s])
      conv.conv(f'{fn}.attentionG.dw', ctx + ('global', 'compress'))
      conv.bn(f'{fn}.attentionG.bn1', ctx + ('global', 'bn'))
      conv.dense(f'{fn}.attentionG.attn.to_qkv', ctx + ('global', 'attn', 'to_qkv'))
      conv.dense(f'{fn}.attentionG.attn.to_out.0', ctx + ('global', 'attn', 'to_out'))
      conv.conv(f'{fn}.attentionG.up', ctx + ('global', 'expand'))
      conv.dense(f'{fn}.fc', ctx + ('nominator', 'fc'))
  for k in (1, 2, 3):
    conv.conv(f'merge{k}.conv', (f'merge{k}', 'conv'))
    conv.norm(f'merge{k}.norm', (f'merge{k}', 'norm'))
  _put(conv, 'pos_embedding', ('pos_embedding',))
  _put(conv, 'cls_token', ('cls_token',))
  conv.norm('mlp_head.0', ('head_norm',))
  if model.num_classes:
    conv.dense('mlp_head.1', ('head',))
  else:
    conv.ignore(r'^mlp_head\.1\.')
  conv.ignore(r'\.relative_position_index$|\.num_batches_tracked$')
