"""SALG against independent references: brute-force numpy segmentation, region-by-region numpy attention,
Swin window attention for the "base model" ablation, and parameter counts computed by hand."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from lgvit.models import create_model, list_models, model_info, salg, swin

# ---------------------------------------------------------------------------------------------
# (a) Segmentation equals a brute-force numpy version.
# ---------------------------------------------------------------------------------------------


def brute_force_segmentation(x: np.ndarray, s: int, p: int):
  """Per token: every region whose coverage area contains it, cosine similarity in float64, argmax.

  Returns (regions (B, H, W), margin (B, H, W)): the chosen region (ties -> lowest index) and the gap
  between the best and second-best candidate (inf when only one region covers the token).
  """
  x = x.astype(np.float64)
  b, h, w, _ = x.shape
  nh, nw = -(-h // s), -(-w // s)
  means = np.stack([x[:, i * s:(i + 1) * s, j * s:(j + 1) * s].mean((1, 2)) for i in range(nh) for j in range(nw)], 1)
  regions = np.full((b, h, w), -1)
  margin = np.full((b, h, w), np.inf)
  for bi in range(b):
    for u in range(h):
      for v in range(w):
        sims = {}
        for r in range(nh * nw):
          i, j = divmod(r, nw)
          if i * s - p <= u < (i + 1) * s + p and j * s - p <= v < (j + 1) * s + p:
            f, m = x[bi, u, v], means[bi, r]
            sims[r] = f @ m / (np.linalg.norm(f) * np.linalg.norm(m))
        best = max(sims.values())
        regions[bi, u, v] = min(r for r, val in sims.items() if val == best)
        others = sorted(sims.values())[:-1]
        if others:
          margin[bi, u, v] = best - others[-1]
  return regions, margin


@pytest.mark.parametrize('h,w,s,p', [(10, 17, 4, 1), (16, 9, 7, 2), (8, 8, 3, 3), (7, 14, 7, 0)])
def test_segmentation_matches_brute_force(h, w, s, p):
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(h * w + p), (2, h, w, 6)))
  regions, means = jax.jit(salg.segment_regions, static_argnums=(1, 2))(jnp.asarray(x), s, p)
  regions = np.asarray(regions)
  hp, wp = -(-h // s) * s, -(-w // s) * s
  assert regions.shape == (2, hp, wp)
  assert (regions[:, h:] == -1).all() and (regions[:, :, w:] == -1).all()  # padding: no region
  regions = regions[:, :h, :w]
  ref, margin = brute_force_segmentation(x, s, p)
  clear = margin > 1e-5  # float32 vs float64 may only differ on near-ties
  assert clear.mean() > 0.95
  np.testing.assert_array_equal(regions[clear], ref[clear])
  # Everywhere: exactly one region per token, whose coverage area contains the token.
  nw = -(-w // s)
  ri, rj = np.divmod(regions, nw)
  u = np.arange(h)[None, :, None]
  v = np.arange(w)[None, None, :]
  assert ((ri * s - p <= u) & (u < (ri + 1) * s + p) & (rj * s - p <= v) & (v < (rj + 1) * s + p)).all()
  # Region means are over the real tokens only.
  ref_means = np.stack([x[:, i * s:(i + 1) * s, j * s:(j + 1) * s].mean((1, 2))
                        for i in range(-(-h // s)) for j in range(nw)], 1)
  np.testing.assert_allclose(np.asarray(means), ref_means, rtol=1e-5, atol=1e-6)


def test_segmentation_ties_go_to_lowest_region_index():
  x = jnp.ones((1, 8, 8, 4))  # every token is equally similar to every region mean
  regions = np.asarray(salg.segment_regions(x, 4, 2)[0])
  ref, _ = brute_force_segmentation(np.ones((1, 8, 8, 4)), 4, 2)
  np.testing.assert_array_equal(regions, ref)
  assert regions[0, 3, 3] == 0 and regions[0, 5, 5] == 0 and regions[0, 6, 6] == 3


def test_no_segmentation_means_own_window():
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 9, 9, 3))
  regions = np.asarray(salg.segment_regions(x, 3, 0)[0])
  np.testing.assert_array_equal(regions[0], (np.arange(9)[:, None] // 3) * 3 + np.arange(9)[None, :] // 3)


def test_unfold_is_the_coverage_gather_and_fold_its_adjoint():
  s, p, nh, nw, d = 3, 2, 2, 3, 2
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (2, nh * s, nw * s, d)))
  got = np.asarray(salg.unfold_coverage(jnp.asarray(x), s, p))
  cover = s + 2 * p
  ref = np.zeros((2, nh * nw, cover * cover, d))
  for r in range(nh * nw):
    i, j = divmod(r, nw)
    for a in range(cover):
      for c in range(cover):
        u, v = i * s - p + a, j * s - p + c
        if 0 <= u < nh * s and 0 <= v < nw * s:
          ref[:, r, a * cover + c] = x[:, u, v]
  np.testing.assert_array_equal(got, ref)
  y = np.asarray(jax.random.normal(jax.random.PRNGKey(2), ref.shape))
  folded = np.asarray(salg.fold_coverage(jnp.asarray(y), s, p, nh, nw))
  np.testing.assert_allclose(np.sum(got * y), np.sum(x * folded), rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# (b) Batched masked attention equals attention computed region by region in numpy.
# ---------------------------------------------------------------------------------------------


def _np_ln(x, p):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu)**2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + 1e-5) * p['scale'] + p['bias']


def _np_dense(x, p):
  return x @ p['kernel'] + p.get('bias', 0.0)


def _np_mlp(x, p):
  hdn = _np_dense(x, p['fc1'])
  hdn = 0.5 * hdn * (1.0 + scipy.special.erf(hdn / math.sqrt(2.0)))
  return _np_dense(hdn, p['fc2'])


def _np_mha(x, p, heads, bias=None):
  """x (T, C) -> attention output before the residual; ``bias`` (heads, T, T)."""
  t, c = x.shape
  qkv = _np_dense(x, p['qkv']).reshape(t, 3, heads, c // heads).transpose(1, 2, 0, 3)
  q, k, v = qkv
  logits = q @ k.transpose(0, 2, 1) * (c // heads)**-0.5
  if bias is not None:
    logits = logits + bias
  wts = np.exp(logits - logits.max(-1, keepdims=True))
  wts /= wts.sum(-1, keepdims=True)
  return _np_dense((wts @ v).transpose(1, 0, 2).reshape(t, c), p['proj'])


def region_by_region(params, x, agr, regions, heads, s, p, inter_region):
  """Eq. 2 for one region at a time over exactly its member tokens, then Eq. 3/4 on the AGR tokens."""
  b, h, w, c = x.shape
  cover = s + 2 * p
  table = params['rel_pos']['relative_position_bias_table']  # ((2 cover - 1)^2, heads)
  num_regions = (-(-h // s)) * (-(-w // s))
  x_out, agr_out = np.zeros_like(x), None if agr is None else np.zeros_like(agr)
  for bi in range(b):
    for r in range(num_regions):
      members = [(u, v) for u in range(h) for v in range(w) if regions[bi, u, v] == r]
      seq = [x[bi, u, v] for u, v in members]
      pos = np.array(members, dtype=int).reshape(-1, 2)
      bias = table[((pos[:, None, 0] - pos[None, :, 0]) + cover - 1) * (2 * cover - 1) +
                   (pos[:, None, 1] - pos[None, :, 1]) + cover - 1].transpose(2, 0, 1)
      if agr is not None:
        seq = [agr[bi, r]] + seq
        full = np.zeros((heads, len(seq), len(seq)))
        full[:, 1:, 1:] = bias
        full[:, 0, :] = full[:, :, 0] = params['agr_bias'][:, None]
        bias = full
      if not seq:
        continue
      seq = np.stack(seq)
      seq = seq + _np_mha(_np_ln(seq, params['norm1']), params, heads, bias)
      seq = seq + _np_mlp(_np_ln(seq, params['norm2']), params['mlp'])
      if agr is not None:
        agr_out[bi, r], seq = seq[0], seq[1:]
      for (u, v), val in zip(members, seq):
        x_out[bi, u, v] = val
  if agr is not None and inter_region == 'ap':
    agr_out = np.broadcast_to(agr_out.mean(1, keepdims=True), agr_out.shape)
  elif agr is not None and inter_region == 'msa':
    new = []
    for t in agr_out:
      t = t + _np_mha(_np_ln(t, params['inter_norm1']), params['inter_attn'], heads)
      new.append(t + _np_mlp(_np_ln(t, params['inter_norm2']), params['inter_mlp']))
    agr_out = np.stack(new)
  return x_out, agr_out


def _randomized(params, key):
  """Replaces every parameter by noise so that biases, norms and the AGR bias all matter."""
  leaves, tree = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(key, len(leaves))
  return jax.tree_util.tree_unflatten(tree, [0.3 * jax.random.normal(k, l.shape) + (l if l.ndim == 1 else 0)
                                             for k, l in zip(keys, leaves)])


@pytest.mark.parametrize('inter_region,use_agr,p', [('msa', True, 1), ('ap', True, 2), ('none', False, 1)])
def test_batched_masked_attention_matches_region_by_region(inter_region, use_agr, p):
  s, heads, c, h, w = 4, 2, 8, 9, 10  # padded to 12x12: 9 regions, some with few members
  kx, ka, kp = jax.random.split(jax.random.PRNGKey(3), 3)
  x = jax.random.normal(kx, (2, h, w, c))
  agr = jax.random.normal(ka, (2, 9, c)) if use_agr else None
  regions, _ = salg.segment_regions(x, s, p)
  block = salg.LocalGlobalBlock(heads, region_size=s, pad=p, inter_region=inter_region, mlp_ratio=2.0)
  params = _randomized(block.init(kp, x, agr, regions)['params'], kp)
  with jax.default_matmul_precision('highest'):
    x_out, agr_out = jax.jit(lambda prm, x, a, r: block.apply({'params': prm}, x, a, r))(params, x, agr, regions)
  np_params = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
  regions = np.asarray(regions)
  own_window = (np.arange(12)[:, None] // s) * 3 + np.arange(12)[None, :] // s
  assert (regions[:, :h, :w] != own_window[:h, :w]).any()  # the regions are not just the windows
  ref_x, ref_agr = region_by_region(np_params, np.asarray(x, np.float64),
                                    None if agr is None else np.asarray(agr, np.float64), regions, heads, s, p,
                                    inter_region)
  np.testing.assert_allclose(np.asarray(x_out), ref_x, rtol=2e-4, atol=2e-4)
  if use_agr:
    np.testing.assert_allclose(np.asarray(agr_out), ref_agr, rtol=2e-4, atol=2e-4)
  else:
    assert agr_out is None


def test_base_model_ablation_is_swin_without_shift():
  """segmentation=False + no AGR tokens: every block is a Swin block on regular windows."""
  heads, s, c = 2, 4, 8
  x = jax.random.normal(jax.random.PRNGKey(4), (2, 8, 12, c))
  regions, _ = salg.segment_regions(x, s, 0)
  block = salg.LocalGlobalBlock(heads, region_size=s, pad=0, inter_region='none')
  params = _randomized(block.init(jax.random.PRNGKey(5), x, None, regions)['params'], jax.random.PRNGKey(6))
  ours, _ = block.apply({'params': params}, x, None, regions)
  swin_params = {'norm1': params['norm1'], 'norm2': params['norm2'], 'mlp': params['mlp'],
                 'attn': {'rel_pos': params['rel_pos'], 'attn': {'qkv': params['qkv'], 'proj': params['proj']}}}
  theirs = swin.SwinBlock(heads, window=s, shift=0).apply({'params': swin_params}, x)
  np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# The whole network.
# ---------------------------------------------------------------------------------------------


def _tiny(name='salg_st', **kw):
  return create_model(name, num_classes=5, embed_dim=16, num_heads=(1, 1, 2, 2), region_size=3, **kw)


def _random_variables(model, x, key=jax.random.PRNGKey(0)):
  """Variables of the right shapes filled with noise, without compiling the init."""
  shapes = jax.eval_shape(model.init, key, x)
  leaves, tree = jax.tree_util.tree_flatten(shapes)
  keys = jax.random.split(key, len(leaves))
  variables = jax.tree_util.tree_unflatten(tree, [0.1 * jax.random.normal(k, l.shape) for k, l in zip(keys, leaves)])
  variables['batch_stats'] = jax.tree_util.tree_map(jnp.abs, variables['batch_stats'])  # variances > 0
  return variables


def test_train_step_odd_sizes_intermediates_and_gradients():
  model = _tiny('salg_st_msa', depths=(2, 1, 1, 1))
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 50, 38, 3))  # maps 13x10, 7x5, 4x3, 2x2
  variables = _random_variables(model, x)

  def loss(params):
    out, state = model.apply({**variables, 'params': params}, x, train=True, mutable=['batch_stats', 'intermediates'],
                             rngs={'dropout': jax.random.PRNGKey(2), 'drop_path': jax.random.PRNGKey(3)})
    return jnp.sum(out**2), (out, state['intermediates'])

  grads, (logits, inter) = jax.jit(jax.grad(loss, has_aux=True))(variables['params'])
  assert logits.shape == (2, 5) and np.isfinite(np.asarray(logits)).all()
  for stage, (h, w) in (('stage1', (13, 10)), ('stage2', (7, 5)), ('stage3', (4, 3))):
    regions = np.asarray(inter[stage]['regions'][0])
    assert regions.shape == (2, h, w)
    assert regions.min() >= 0 and regions.max() < (-(-h // 3)) * (-(-w // 3))
  flat = jax.tree_util.tree_flatten_with_path(grads)[0]
  dead = [jax.tree_util.keystr(k) for k, g in flat if not np.all(np.isfinite(g)) or not np.any(np.asarray(g))]
  assert not dead, dead
  assert 'inter_attn' in grads['stage1']['block0']
  feats = jax.eval_shape(model.clone(features_only=True).apply, variables, x)
  assert [f.shape for f in feats] == [(2, 13, 10, 16), (2, 7, 5, 32), (2, 4, 3, 64), (2, 2, 2, 128)]


@pytest.mark.parametrize('ablation', sorted(salg.TABLE3_ABLATIONS))
def test_table3_ablations_build(ablation):
  model = _tiny(depths=(2, 1, 1, 1), **salg.TABLE3_ABLATIONS[ablation])
  x = jnp.ones((1, 32, 32, 3))
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  assert jax.eval_shape(model.apply, variables, x).shape == (1, 5)
  names = str(jax.tree_util.tree_structure(variables['params']))
  assert ('agr_token' in names) == model.agr_tokens
  assert ('inter_attn' in names) == (model.inter_region == 'msa')
  rel_pos = variables['params']['stage1']['block0']['rel_pos']['relative_position_bias_table']
  assert rel_pos.shape[0] == (2 * (3 + 2 * model.segmentation) - 1)**2  # coverage 5x5, or the 3x3 window


def test_bad_settings_raise_clear_errors():
  x = jnp.ones((1, 32, 32, 3))
  init = lambda model, x=x: jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  with pytest.raises(ValueError, match="inter_region='none'"):
    init(_tiny(agr_tokens=False, inter_region='ap'))
  with pytest.raises(ValueError, match='coverage pad'):
    init(_tiny(coverage_pad=(4, 1, 1)))
  with pytest.raises(ValueError, match='NHWC'):
    init(_tiny(), jnp.ones((1, 3, 32, 32)))


# ---------------------------------------------------------------------------------------------
# Parameter counts: jax.eval_shape against a count written out by hand.
# ---------------------------------------------------------------------------------------------


def hand_count(c, depths, heads, pads, msa, s=7, classes=1000, stem_k=3):
  dims = [c * 2**i for i in range(4)]
  block = lambda d: 12 * d * d + 13 * d  # LN, qkv(+b), proj(+b), LN, fc1(+b), fc2(+b)
  stem = (stem_k**2 * 3 * (c // 2) + 2 * (c // 2)) + (stem_k**2 * (c // 2) * c + 2 * c) + (stem_k**2 * c * c + c) + 2 * c
  n = stem
  for i, (d, depth, hd) in enumerate(zip(dims, depths, heads)):
    if i:
      n += 4 * dims[i - 1] * 2 + 8 * dims[i - 1]**2  # merging: LN(4C) + Linear(4C -> 2C, no bias)
    n += depth * block(d)
    if i < 3:
      cover = s + 2 * pads[i]
      n += d + depth * ((2 * cover - 1)**2 * hd + hd)  # AGR token; rel-pos table + AGR bias per block
      n += msa * (depth - 1) * block(d)  # inter-region MSA + MLP, not in a stage's last block
  return n + 2 * dims[-1] + dims[-1] * classes + classes


@pytest.mark.parametrize('name', list_models('salg'))
def test_param_counts_by_hand(name):
  """The registered counts (checked against eval_shape for every variant in test_models.py), written out."""
  model = create_model(name)
  assert model_info(name).params == hand_count(model.embed_dim, model.depths, model.num_heads, model.coverage_pad,
                                               model.inter_region == 'msa')


def test_registered_variants():
  assert set(list_models('salg')) == {'salg_st', 'salg_st_msa', 'salg_t', 'salg_t_msa', 'salg_s'}


# ---------------------------------------------------------------------------------------------
# Full size (jax.eval_shape: traced, not run; the forward that runs and the demo: tests/test_models.py
# and tests/test_demos.py, -m slow).
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize('size', [224, 200])
def test_full_size_regions_follow_the_padded_maps(size):
  x = jnp.zeros((1, size, size, 3))
  _, state = jax.eval_shape(
      lambda: create_model('salg_t').init_with_output(jax.random.PRNGKey(0), x, train=False, mutable=True))
  side = -(-size // 4)
  for s in ('stage1', 'stage2', 'stage3'):  # odd maps are padded before merging: 50, 25, 13 at 200
    assert state['intermediates'][s]['regions'][0].shape == (1, side, side)
    side = -(-side // 2)
