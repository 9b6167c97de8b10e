"""NomMer: Nominate Synergistic Context in Vision Transformer (Liu et al., CVPR 2022).

Follows the official code (TencentYoutuResearch/VisualRecognition-NomMer @ 6e09b71, class
``NomMerAttn``; facts in ``docs/official_code.md``) wherever it and the paper differ, because that
code produced the published numbers. Reading order, as in the paper:

* stem: conv 4x4/4 (no bias) + BN + ReLU;
* stages 1-2: **S-NomMer** blocks. A pre-norm residual block whose context layer computes three
  candidates from the same ``y = LN(x)`` -- a ResNet bottleneck (CNN), Swin window MHSA (local) and
  the compressed global context aggregator (CGCA: blockwise DCT -> keep the lowest ``ceil(N/2)^2``
  frequencies -> grouped 1x1 + BN -> global MHSA -> grouped 1x1 -> inverse DCT) -- and a
  synergistic context nominator (SCN) that picks exactly one candidate per token;
* reductions ("merge"): conv 3x3/1 (bias) + max-pool 2x2 + LN;
* stage 3: absolute position embedding, then **G-NomMer** blocks (plain global MHSA);
* stage 4: a class token, G-NomMer blocks, LN of the class token and a linear head.

The nominator is straight-through hard Gumbel-softmax in training (rng stream ``'gumbel'``,
temperature :attr:`NomMer.gumbel_temperature`) and the noise-free one-hot argmax in eval. Each
S-block sows ``intermediates/.../context/nomination``: an int32 map (B, H, W) with 0 = CNN,
1 = local window MHSA, 2 = global CGCA (the order of the official nominator logits).

Deliberate choices:

* The DCT/IDCT bases are analytic constants applied as block reshapes + einsum, not the official
  frozen strided depthwise convs (and not parameters). DCT coefficients are flattened as
  ``channel * a^2 + k`` so that the official grouped 1x1 weights transfer unchanged.
* In eval, two exactly tied nominator logits select the first (``argmax``); the official code sums
  the tied branches. Ties have measure zero.
* The 384 variants use window 12 (the official window 7 cannot tile the 96/48 maps) and keep the
  DCT blocks 8/4, which divide 96 and 48; the CGCA then attends over 12x12 compressed tokens.
  Fine-tuning from 224 (``config.init_from``) resizes the relative position tables and the position
  embedding (:func:`lgvit.models.layers.resize_pos_embedding`) bicubically, as Swin/timm do.
* Table 4 of the paper is reproduced by the fields ``use_cnn``, ``global_context`` and ``fusion``
  (see :data:`ABLATIONS`). The paper's "Pool" global context has no public code: ours max-pools
  N x N blocks, runs the same global MHSA on the pooled tokens and repeats each token over its
  block, so it differs from CGCA only in how blocks are summarised and restored.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lgvit.errors import InvalidInputSizeError
from lgvit.models import layers
from lgvit.models import registry

Array = jax.Array

#: Candidate order of the official nominator logits; ``nomination`` values index this tuple.
BRANCHES = ('cnn', 'local', 'global')

#: Paper Table 4 rows as model overrides (all NomMer-T based in the paper).
ABLATIONS = {
    'wo_global_cnn': dict(use_cnn=False, global_context='none', fusion='sum'),
    'wo_global': dict(use_cnn=True, global_context='none', fusion='sum'),
    'wo_gumbel_dct': dict(use_cnn=True, global_context='pool', fusion='sum'),
    'wo_gumbel': dict(use_cnn=True, global_context='dct', fusion='sum'),
    'full': dict(use_cnn=True, global_context='dct', fusion='nominate'),
}

# ---------------------------------------------------------------------------------------------
# Blockwise DCT (CGCA).
# ---------------------------------------------------------------------------------------------


def kept_frequencies(block: int) -> int:
  """Low frequencies kept per axis, ``ceil(N/2)`` (hard-coded in the official code)."""
  return (block + 1) // 2


def dct_basis(block: int) -> np.ndarray:
  """Orthonormal 2-D DCT-II basis of the kept frequencies, shape (a*a, N, N), float32.

  ``basis[v*a + u, r, s] = (2/N) c(v) c(u) cos((2r+1) v pi / 2N) cos((2s+1) u pi / 2N)`` with
  ``c(0) = 1/sqrt(2)``, ``c(>0) = 1``: v is the vertical frequency (paired with row r), u the
  horizontal one (column s). Orthonormal, so the same basis also inverts the transform.
  """
  a = kept_frequencies(block)
  freq, pos = np.arange(a), np.arange(block)
  norm = np.where(freq == 0, np.sqrt(0.5), 1.0)
  cos = np.sqrt(2.0 / block) * norm[:, None] * np.cos((2 * pos[None, :] + 1) * freq[:, None] * np.pi / (2 * block))
  return np.einsum('vr,us->vurs', cos, cos).reshape(a * a, block, block).astype(np.float32)


def blockwise_dct(x: Array, block: int) -> Array:
  """(B, H, W, C) -> (B, H/N, W/N, C*a*a) low-frequency coefficients, channel ``c*a*a + k``."""
  b, h, w, c = x.shape
  basis = jnp.asarray(dct_basis(block), x.dtype)
  blocks = x.reshape(b, h // block, block, w // block, block, c)
  coef = jnp.einsum('bprqsc,krs->bpqck', blocks, basis)
  return coef.reshape(b, h // block, w // block, c * basis.shape[0])


def blockwise_idct(z: Array, block: int) -> Array:
  """Inverse of :func:`blockwise_dct` on the kept frequencies: (B, P, Q, C*a*a) -> (B, P*N, Q*N, C)."""
  b, p, q, ck = z.shape
  basis = jnp.asarray(dct_basis(block), z.dtype)
  coef = z.reshape(b, p, q, ck // basis.shape[0], basis.shape[0])
  blocks = jnp.einsum('bpqck,krs->bprqsc', coef, basis)
  return blocks.reshape(b, p * block, q * block, ck // basis.shape[0])


# ---------------------------------------------------------------------------------------------
# S-NomMer: three candidate contexts and the nominator.
# ---------------------------------------------------------------------------------------------


def global_attention(num_heads: int, dtype, name: str, precision=None) -> layers.MultiHeadAttention:
  """The official global MHSA: qkv without bias (``to_qkv``), output Linear with bias (``to_out``)."""
  return layers.MultiHeadAttention(num_heads, qkv_bias=False, qkv_name='to_qkv', proj_name='to_out', dtype=dtype,
                                   precision=precision, name=name)


class BottleneckContext(nn.Module):
  """CNN candidate: ResNet bottleneck 1x1 -> 3x3 -> 1x1 (each + BN) with its own identity shortcut."""
  width: int
  dtype: Any = None

  @nn.compact
  def __call__(self, y: Array, *, train: bool) -> Array:
    init = layers.torch_default_kernel_init
    z = layers.ConvBN(self.width, 1, kernel_init=init, dtype=self.dtype, name='conv1')(y, train=train)
    z = layers.ConvBN(self.width, 3, kernel_init=init, dtype=self.dtype, name='conv2')(z, train=train)
    z = layers.ConvBN(y.shape[-1], 1, act=None, kernel_init=init, dtype=self.dtype, name='conv3')(z, train=train)
    return nn.relu(z + y)


class CGCA(nn.Module):
  """Compressed global context aggregator: global MHSA over DCT-compressed N x N blocks."""
  num_heads: int
  block: int
  groups: int = 8
  dtype: Any = None

  @nn.compact
  def __call__(self, y: Array, *, train: bool) -> Array:
    b, _, _, d = y.shape
    a2 = kept_frequencies(self.block)**2
    z = blockwise_dct(y, self.block)
    z = layers.Conv2d(d, 1, groups=self.groups, dtype=self.dtype, name='compress')(z)
    z = layers.BatchNorm(dtype=self.dtype, name='bn')(z, train=train)
    p, q = z.shape[1:3]
    z = global_attention(self.num_heads, self.dtype, 'attn')(z.reshape(b, p * q, d)).reshape(b, p, q, d)
    z = layers.Conv2d(d * a2, 1, groups=self.groups, dtype=self.dtype, name='expand')(z)
    return blockwise_idct(z, self.block)


class PooledGlobalContext(nn.Module):
  """Table 4 "Pool" global context: max-pool N x N blocks -> global MHSA -> repeat over each block."""
  num_heads: int
  block: int
  dtype: Any = None

  @nn.compact
  def __call__(self, y: Array, *, train: bool) -> Array:
    del train
    b, _, _, d = y.shape
    z = layers.max_pool(y, self.block, self.block)
    p, q = z.shape[1:3]
    z = global_attention(self.num_heads, self.dtype, 'attn')(z.reshape(b, p * q, d)).reshape(b, p, q, d)
    return jnp.repeat(jnp.repeat(z, self.block, axis=1), self.block, axis=2)


def gumbel_noise(key: Array, shape: Sequence[int]) -> Array:
  """Standard Gumbel samples exactly as the official ``sample_gumbel`` (eps 1e-20 twice)."""
  u = jax.random.uniform(key, shape, jnp.float32)
  return -jnp.log(-jnp.log(u + 1e-20) + 1e-20)


class Nominator(nn.Module):
  """Synergistic context nominator: Linear(d -> k) on the candidate sum, one hard choice per token.

  Returns ``(weights, logits)``: weights (..., k) are exactly one-hot in eval (argmax of the
  logits) and straight-through hard Gumbel-softmax in training: the forward value is
  ``one_hot(argmax(p))`` with ``p = softmax((logits + g) / temperature)``, the gradient that of p.
  """
  num_choices: int
  temperature: float = 1.0
  dtype: Any = None

  @nn.compact
  def __call__(self, candidate_sum: Array, *, train: bool) -> tuple[Array, Array]:
    logits = nn.Dense(self.num_choices, kernel_init=layers.normal_002, dtype=self.dtype, name='fc')(candidate_sum)
    logits = logits.astype(jnp.float32)
    if not train:
      return jax.nn.one_hot(jnp.argmax(logits, axis=-1), self.num_choices, dtype=jnp.float32), logits
    soft = jax.nn.softmax((logits + self.gumbel_noise(logits.shape)) / self.temperature, axis=-1)
    hard = jax.nn.one_hot(jnp.argmax(soft, axis=-1), self.num_choices, dtype=jnp.float32)
    return hard - lax.stop_gradient(soft) + soft, logits

  def gumbel_noise(self, shape: Sequence[int]) -> Array:
    # A method of its own so that tests can substitute fixed noise (flax.linen.intercept_methods).
    return gumbel_noise(self.make_rng('gumbel'), shape)


class SynergisticContext(nn.Module):
  """The S-NomMer layer: candidate contexts of y = LN(x), fused by the nominator (or summed)."""
  num_heads: int
  window: int
  dct_block: int
  cnn_width: int
  use_cnn: bool = True
  global_context: str = 'dct'  # 'dct' (CGCA) | 'pool' | 'none'
  fusion: str = 'nominate'  # 'nominate' | 'sum'
  gumbel_temperature: float = 1.0
  cgca_groups: int = 8
  dtype: Any = None

  @nn.compact
  def __call__(self, y: Array, *, train: bool) -> Array:
    candidates = {}
    if self.use_cnn:
      candidates['cnn'] = BottleneckContext(self.cnn_width, dtype=self.dtype, name='cnn')(y, train=train)
    candidates['local'] = layers.WindowAttention(self.num_heads, self.window, qkv_bias=True, dtype=self.dtype,
                                                 name='local')(y, train=train)
    if self.global_context == 'dct':
      candidates['global'] = CGCA(self.num_heads, self.dct_block, self.cgca_groups, dtype=self.dtype,
                                  name='global')(y, train=train)
    elif self.global_context == 'pool':
      candidates['global'] = PooledGlobalContext(self.num_heads, self.dct_block, dtype=self.dtype,
                                                 name='global')(y, train=train)
    xs = list(candidates.values())
    total = sum(xs[1:], xs[0])
    if self.fusion == 'sum' or len(xs) == 1:
      return total
    weights, _ = Nominator(len(xs), self.gumbel_temperature, dtype=self.dtype, name='nominator')(total, train=train)
    branch_ids = jnp.asarray([BRANCHES.index(n) for n in candidates], jnp.int32)
    self.sow('intermediates', 'nomination', branch_ids[jnp.argmax(weights, axis=-1)])
    weights = weights.astype(xs[0].dtype)
    return sum(weights[..., i:i + 1] * x for i, x in enumerate(xs))


# The blocks' two DropPaths are named (as in the official modules); a module's name is its path,
# which seeds its drop-path RNG.
_DROP_PATH_NAMES = ('drop_path1', 'drop_path2')


class SNomMerBlock(nn.Module):
  """x + DropPath(SynergisticContext(LN(x))), then x + DropPath(FFN(LN(x)))."""
  context: dict  # SynergisticContext fields
  mlp_ratio: float
  drop_path: float = 0.0
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    context = SynergisticContext(**self.context, dtype=self.dtype, name='context')
    return layers.pre_norm_block(x, context, mlp_ratio=self.mlp_ratio, drop_path=self.drop_path, dtype=self.dtype,
                                 train=train, drop_path_names=_DROP_PATH_NAMES)


class GNomMerBlock(layers.PreNormBlock):
  """Pre-norm global MHSA + FFN block over tokens (B, n, d)."""

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    return layers.pre_norm_block(x, global_attention(self.num_heads, self.dtype, 'attn', self.precision),
                                 mlp_ratio=self.mlp_ratio, drop_rate=self.drop_rate, drop_path=self.drop_path,
                                 dtype=self.dtype, train=train, drop_path_names=_DROP_PATH_NAMES)


class MergeBlock(nn.Module):
  """Reduction between stages: conv 3x3 stride 1 (bias) -> max-pool 2x2/2 -> LayerNorm."""
  features: int
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = layers.Conv2d(self.features, 3, padding=1, use_bias=True, dtype=self.dtype, name='conv')(x)
    x = layers.max_pool(x, 2, 2)
    return layers.layer_norm('norm', dtype=self.dtype)(x)


# ---------------------------------------------------------------------------------------------
# The network.
# ---------------------------------------------------------------------------------------------


def valid_size_period(window: int, dct_blocks: Sequence[int], uses_dct: bool = True, pad_windows: bool = False) -> int:
  """Image sides must be multiples of this: stage maps S/4, S/8 tile by the window and DCT blocks
  (by the DCT blocks only with ``pad_windows``, which pads the maps for the windows)."""
  n1, n2 = dct_blocks if uses_dct else (1, 1)
  window = 1 if pad_windows else window
  return math.lcm(32, 4 * math.lcm(window, n1), 8 * math.lcm(window, n2))


class NomMer(nn.Module):
  """NomMer; the defaults are NomMer-T at 224 (official ``configs/nommer_tiny_attn.yaml``)."""
  embed_dim: int = 96
  depths: Sequence[int] = (2, 2, 8, 2)
  num_heads: Sequence[int] = (2, 2, 4, 8)
  window: int = 7
  dct_blocks: Sequence[int] = (8, 4)  # N of the blockwise DCT in stages 1 and 2
  cnn_reductions: Sequence[int] = (2, 2)  # bottleneck width = stage dim / reduction
  mlp_ratios: Sequence[float] = (2, 2, 2, 1)
  cgca_groups: int = 8
  # Table 4 switches (see ABLATIONS).
  use_cnn: bool = True
  global_context: str = 'dct'
  fusion: str = 'nominate'
  gumbel_temperature: float = 1.0
  num_classes: int = 1000
  drop_path_rate: float = 0.1
  features_only: bool = False
  dtype: Any = jnp.float32
  # Pad the stage-1/2 maps that the local windows do not tile (layers.WindowAttention), as Swin's
  # segmentation backbone does: UperNet's 512x512 crops (docs/segmentation.md).
  pad_windows: bool = False

  def check_input_size(self, h: int, w: int):
    period = valid_size_period(self.window, self.dct_blocks, self.global_context != 'none', self.pad_windows)
    if h % period == 0 and w % period == 0 and h > 0 and w > 0:
      return
    bad = h if h % period else w
    below, above = bad // period * period, (bad // period + 1) * period
    nearest = ' or '.join(str(s) for s in (below, above) if s > 0)
    raise InvalidInputSizeError(
        f'{self.name or "NomMer"}: input {h}x{w} does not fit: the stage-1/2 maps (side/4, side/8) must tile by '
        f'window {self.window} and DCT blocks {tuple(self.dct_blocks)}, so each side must be a multiple of '
        f'{period}; nearest valid size: {nearest}. (The *_384 variants use window 12 for 384 inputs; '
        'pad_windows=True pads the maps for the windows.)')

  def _check_fields(self):
    if self.global_context not in ('dct', 'pool', 'none'):
      raise ValueError(f"global_context must be 'dct', 'pool' or 'none', got {self.global_context!r}")
    if self.fusion not in ('nominate', 'sum'):
      raise ValueError(f"fusion must be 'nominate' or 'sum', got {self.fusion!r}")
    if self.gumbel_temperature <= 0:
      raise ValueError(f'gumbel_temperature must be > 0, got {self.gumbel_temperature}')

  @nn.compact
  def __call__(self, x: Array, *, train: bool = False):
    self._check_fields()
    self.check_input_size(*x.shape[1:3])
    dims = [self.embed_dim * 2**i for i in range(4)]
    dpr = layers.drop_path_rates(self.drop_path_rate, self.depths)
    x = x.astype(self.dtype)
    x = layers.ConvBN(dims[0], 4, 4, padding=0, kernel_init=layers.torch_default_kernel_init, dtype=self.dtype,
                      name='stem')(x, train=train)
    features = []
    for s in range(2):
      context = dict(num_heads=self.num_heads[s], window=self.window, dct_block=self.dct_blocks[s],
                     cnn_width=dims[s] // self.cnn_reductions[s], use_cnn=self.use_cnn,
                     global_context=self.global_context, fusion=self.fusion,
                     gumbel_temperature=self.gumbel_temperature, cgca_groups=self.cgca_groups)
      for i in range(self.depths[s]):
        x = SNomMerBlock(context, self.mlp_ratios[s], dpr[s][i], dtype=self.dtype,
                         name=f'stage{s + 1}_block{i}')(x, train=train)
      features.append(x)
      x = MergeBlock(dims[s + 1], dtype=self.dtype, name=f'merge{s + 1}')(x)

    b, h, w, c = x.shape
    x = x + self.position_embedding(h, w, c).astype(x.dtype)
    x = x.reshape(b, h * w, c)
    for i in range(self.depths[2]):
      x = GNomMerBlock(self.num_heads[2], self.mlp_ratios[2], drop_path=dpr[2][i], dtype=self.dtype,
                       name=f'stage3_block{i}')(x, train=train)
    features.append(x.reshape(b, h, w, c))

    x = MergeBlock(dims[3], dtype=self.dtype, name='merge3')(x.reshape(b, h, w, c))
    b, h, w, c = x.shape
    cls = self.param('cls_token', nn.initializers.normal(1.0), (1, 1, c), jnp.float32)
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (b, 1, c)), x.reshape(b, h * w, c)], axis=1)
    for i in range(self.depths[3]):
      x = GNomMerBlock(self.num_heads[3], self.mlp_ratios[3], drop_path=dpr[3][i], dtype=self.dtype,
                       name=f'stage4_block{i}')(x, train=train)
    features.append(x[:, 1:].reshape(b, h, w, c))
    if self.features_only:
      return features
    return layers.classifier_head(x[:, 0], self.num_classes, norm_name='head_norm', dtype=self.dtype,
                                  head_dtype=self.dtype)

  def position_embedding(self, h: int, w: int, c: int) -> Array:
    """The stage-3 ``pos_embedding`` (1, S/16, S/16, 4C); its shape records the training size.

    As a dense-prediction backbone (``features_only``) it is resampled to each input's grid at apply
    time (bicubic, :func:`layers.resize_bicubic`), as mmseg's ViT ``resize_pos_embed`` does, so one set of
    weights runs at every size (UperNet's whole-image and multi-scale inference). The classifier keeps
    its one size: there a different grid means the wrong checkpoint or the wrong input."""
    if self.has_variable('params', 'pos_embedding'):
      trained = self.get_variable('params', 'pos_embedding').shape[1:3]
      if tuple(trained) != (h, w) and self.features_only:
        return layers.resize_bicubic(self.get_variable('params', 'pos_embedding'), (h, w))
      if tuple(trained) != (h, w):
        raise InvalidInputSizeError(
            f'{self.name or "NomMer"}: these variables were made for {trained[0] * 16}x{trained[1] * 16} inputs '
            f'(pos_embedding grid {trained[0]}x{trained[1]}), got {h * 16}x{w * 16}. To run at a new size, '
            'initialise the model at that size and load the checkpoint with config.init_from, which resizes '
            'pos_embedding and the relative position tables (lgvit.checkpoint.adapt_variables).')
    return self.param('pos_embedding', nn.initializers.normal(1.0), (1, h, w, c), jnp.float32)


# ---------------------------------------------------------------------------------------------
# Variants (official configs/nommer_{tiny,small,base}_attn.yaml; 384: ours, see module docstring).
# ---------------------------------------------------------------------------------------------


#: init_from at another input size: relative position tables and the stage-3 (1, S/16, S/16, C) position
#: embedding are resampled.
RESIZE_RULES = {'relative_position_bias_table': layers.resize_relative_position_table,
                'pos_embedding': layers.resize_pos_embedding}


def _create_nommer(name: str, **kwargs) -> NomMer:
  return NomMer(name=name, **kwargs)


# params: the official code's counts (384: ours); paper: params, GFLOPs and top-1 of Tables 1 and 2.
_T = dict(embed_dim=96, depths=(2, 2, 8, 2), cnn_reductions=(2, 2), drop_path_rate=0.1)
_S = dict(embed_dim=96, depths=(6, 6, 16, 4), cnn_reductions=(4, 4), drop_path_rate=0.3)
_B = dict(embed_dim=128, depths=(6, 6, 16, 4), cnn_reductions=(4, 4), drop_path_rate=0.5)
_AT_384 = dict(window=12, input_size=384, crop_pct=1.0)
_variant = registry.family('nommer', _create_nommer, interpolation='bicubic', resize_rules=RESIZE_RULES)
_variant('nommer_t', **_T, params=22_455_804, paper=dict(params=22e6, gmacs=5.4, top1=82.6))
_variant('nommer_s', **_S, params=41_532_388, paper=dict(params=42e6, gmacs=10.1, top1=83.7))
_variant('nommer_b', **_B, params=73_404_900, paper=dict(params=73e6, gmacs=17.6, top1=84.5))
_variant('nommer_t_384', **_T, **_AT_384, params=22_604_604, paper=dict(params=22e6, gmacs=17.2, top1=83.9))
_variant('nommer_s_384', **_S, **_AT_384, params=41_686_948, paper=dict(params=42e6, gmacs=33.1, top1=84.6))
_variant('nommer_b_384', **_B, **_AT_384, params=73_608_100, paper=dict(params=73e6, gmacs=56.2, top1=84.9))
