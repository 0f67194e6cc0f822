"""StyleSwin generator (mrisr_jax.models.styleswin): parameter counts at 256 px against the public code's
measured numbers (transmrsr_reference.md 2.2, 2.8), the g_ema state_dict layout of the torch mirror and the
key maps, forward parity per module and end to end against the torch mirror on fixed random weights at a
small size, and the flax -> state_dict -> flax round trip.

Small config: size 32, channel_base 64 (64 channels everywhere, 4 heads), style_dim 32, n_mlp 2: layers at
4 px (window 4, no shift), 8 px (window 8 = grid, no shift), 16 and 32 px (window 8, shift 4)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrisr_jax.interop import styleswin_keys
from mrisr_jax.models import styleswin

pytestmark = pytest.mark.unit

SMALL = dict(size=32, style_dim=32, n_mlp=2, channel_multiplier=1, channel_base=64)
B = 2
# Tiny graphs: LLVM's -O0 compiles them 3-5x faster on CPU than the default and changes no sums that matter here.
_jit = functools.partial(
  jax.jit, compiler_options={'xla_backend_optimization_level': 0} if jax.default_backend() == 'cpu' else None
)


def _count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def _abstract(model, style_dim):
  return jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, style_dim)))


def _get(tree, path):
  for p in path:
    tree = tree[p]
  return tree


def _set(tree, path, value):
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  tree[path[-1]] = value


def _to_torch(a: np.ndarray, transform: str) -> np.ndarray:
  a = np.asarray(a)
  if transform == 'conv':
    return a.transpose(3, 2, 0, 1)
  if transform == 'linear':
    return a.T
  if transform in ('const_nchw', 'rgb_bias'):
    return a.transpose(0, 3, 1, 2)
  assert transform == 'copy', transform
  return a


def _from_torch(a: np.ndarray, transform: str) -> np.ndarray:
  if transform == 'conv':
    return a.transpose(2, 3, 1, 0)
  if transform == 'linear':
    return a.T
  if transform in ('const_nchw', 'rgb_bias'):
    return a.transpose(0, 2, 3, 1)
  return a


def to_state_dict(key_map, buffers, variables) -> dict[str, np.ndarray]:
  return {
    k: buffers[k] if path is None else np.ascontiguousarray(_to_torch(_get(variables, path), t))
    for k, (path, t) in key_map.items()
  }


def from_state_dict(key_map, buffers, state) -> dict:
  assert list(state) == list(key_map)
  out = {}
  for k, (path, t) in key_map.items():
    if path is None:
      if not k.endswith('_float_tensor'):  # torch leaves that one uninitialised
        np.testing.assert_array_equal(state[k], buffers[k], err_msg=k)
        assert state[k].dtype == buffers[k].dtype, k
    else:
      _set(out, path, np.ascontiguousarray(_from_torch(state[k], t)))
  return out


def _fill(abstract, seed=0):
  """Random weights that exercise every term: alpha != 0, bias tables large enough to move the softmax,
  EqualLinear weights N(0,1)/lr_mul (the mapping's lr_mul is 0.01), Dense kernels U(+-1/sqrt(in))."""
  rng = np.random.default_rng(seed)

  def leaf(path, x):
    names = [getattr(p, 'key', str(p)) for p in path]
    name, shape = names[-1], x.shape
    if name == 'alpha':
      return np.full(shape, 0.7, np.float32)
    if name == 'relative_position_bias_table':
      return rng.normal(0, 0.5, shape).astype(np.float32)
    if name == 'weight':  # EqualLinear (torch layout); the mapping network's lr_mul is 0.01
      return (rng.normal(size=shape) / (0.01 if names[1] == 'style' else 1.0)).astype(np.float32)
    if name == 'kernel':
      bound = 1.0 / np.sqrt(np.prod(shape[:-1]))
      return rng.uniform(-bound, bound, shape).astype(np.float32)
    if name == 'scale':
      return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    if name == 'input':
      return rng.normal(size=shape).astype(np.float32)
    assert name == 'bias', names
    return (rng.normal(0, 0.1, shape) / (0.01 if names[1] == 'style' else 1.0)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(leaf, abstract)


def _t(a):
  return np.ascontiguousarray(np.asarray(a))


def _nchw(a):
  return _t(np.asarray(a).transpose(0, 3, 1, 2))


def _close(got, want, atol=1e-5):
  got, want = np.asarray(got), np.asarray(want)
  assert got.shape == want.shape, (got.shape, want.shape)
  err = float(np.max(np.abs(got - want)))
  assert err <= atol, f'max abs err {err:.3g} > {atol} (max |want| {np.max(np.abs(want)):.3g})'


# --- parameter counts at the public size (no weights) ---


def test_param_counts_256():
  abstract = _abstract(styleswin.StyleSwinGenerator(), 512)['params']
  assert _count(abstract) == 40_628_048
  assert _count(abstract['style']) == 2_101_248
  syn = abstract['synthesis']
  assert _count(syn) == 38_520_614
  assert _count(syn['input']) == 8_192
  assert [_count(syn[f'layers_{k}']) for k in range(7)] == [
    8_666_657,
    8_672_289,
    8_672_289,
    8_541_217,
    2_664_977,
    931_081,
    363_912,
  ]
  assert [_count(abstract[f'to_rgbs_{k}']) for k in range(7)] == [1542, 1542, 1542, 774, 390, 198, 198]
  block = syn['layers_3']['blocks_0']
  assert _count(block) == 4_204_560 and _count(syn['layers_0']['blocks_0']) == 4_201_744
  assert block['attn_0']['relative_position_bias_table'].shape == (225, 8)
  assert syn['layers_0']['blocks_0']['attn_1']['relative_position_bias_table'].shape == (49, 8)
  assert syn['layers_6']['blocks_1']['attn_1']['relative_position_bias_table'].shape == (225, 2)
  assert 'upsample' not in syn['layers_6'] and syn['layers_5']['upsample']['reduction']['kernel'].shape == (128, 64)
  assert styleswin.styleswin_channels(256) == {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64}
  assert styleswin.styleswin_channels(64, 2, 64) == {4: 64, 8: 64, 16: 64, 32: 64, 64: 64}


def test_init_distributions():
  """StyleSwin's init: EqualLinear N(0,1)/lr_mul, Linear trunc-normal 0.02 / bias 0, LayerNorm 1/0, alpha 0,
  ToRGB conv xavier_normal(0.02), the constant N(0,1). Pieces, not the whole generator (init runs the forward)."""

  @_jit
  def init(key):
    k = jax.random.split(key, 4)
    w = jnp.zeros((1, 32))
    return dict(
      layer=styleswin.StyleLayer(4, 4, 64).init(k[0], jnp.zeros((1, 4, 4, 128)), w, w)['params'],
      mapping=styleswin.MappingNetwork(32, 1).init(k[1], w)['params'],
      rgb=styleswin.ToRGB(3).init(k[2], jnp.zeros((1, 8, 8, 64)))['params'],
      const=styleswin.ConstantInput(128).init(k[3], 1)['params'],
    )

  v = jax.tree_util.tree_map(np.asarray, init(jax.random.PRNGKey(1)))
  assert 90 < np.std(v['mapping']['layers_1']['weight']) < 110 and not np.any(v['mapping']['layers_1']['bias'])
  blk = v['layer']['blocks_0']
  for lin in (blk['qkv'], blk['mlp']['fc1'], blk['mlp']['fc2']):
    assert 0.019 < np.std(lin['kernel']) < 0.021 and not np.any(lin['bias'])
  assert 0.9 < np.std(blk['norm1']['style']['weight']) < 1.1 and not np.any(blk['norm1']['style']['bias'])
  assert 0.015 < np.std(blk['attn_1']['relative_position_bias_table']) < 0.025
  up = v['layer']['upsample']
  assert not np.any(up['alpha']) and np.all(up['norm']['scale'] == 1) and not np.any(up['norm']['bias'])
  assert 0.018 < np.std(up['reduction']['kernel']) < 0.022 and 'bias' not in up['reduction']
  xavier = 0.02 * np.sqrt(2 / (64 + 3))
  assert 0.8 * xavier < np.std(v['rgb']['conv']['kernel']) < 1.2 * xavier
  assert not np.any(v['rgb']['bias']) and not np.any(v['rgb']['conv']['bias'])
  assert v['const']['input'].shape == (1, 4, 4, 128) and 0.9 < np.std(v['const']['input']) < 1.1


# --- torch mirror layout at the public size ---


@pytest.fixture(scope='module')
def tmod():
  torch = pytest.importorskip('torch')
  torch.set_num_threads(2)
  from mrisr_jax.interop import torch_styleswin

  return torch, torch_styleswin


def test_state_dict_layout_256(tmod):
  torch, ts = tmod
  abstract = _abstract(styleswin.StyleSwinGenerator(), 512)
  with torch.device('meta'):
    g = ts.TorchStyleSwinGenerator(256, 512, 8, 1, 512, 0.01, 3)
    syn = ts.TorchSynthesis(256, 512, 1, 512)
  sd = g.state_dict()
  assert len(sd) == 308 and sum(p.numel() for p in g.parameters()) == 40_628_048
  key_map = styleswin_keys.styleswin_g_key_map(abstract)
  assert list(key_map) == list(sd)
  buffers = styleswin_keys.styleswin_g_buffers(abstract['params'])
  for k, (path, t) in key_map.items():
    if path is None:
      assert t == 'buffer' and tuple(buffers[k].shape) == tuple(sd[k].shape), k
      assert str(buffers[k].dtype) == str(sd[k].dtype).removeprefix('torch.'), k
    else:
      assert _to_torch(np.zeros(_get(abstract, path).shape), t).shape == tuple(sd[k].shape), k
  assert set(buffers) == {k for k, (p, _) in key_map.items() if p is None}
  assert sum(1 for k in sd if k.endswith('attn_mask2')) == 10
  # TransMRSR's decoder: g_ema minus style.* and to_rgbs.* (43 keys), prefixed 'generator.'
  syn_map = styleswin_keys.synthesis_key_map(
    {'params': {'generator': abstract['params']['synthesis']}}, 'generator.', ('params', 'generator')
  )
  assert list(syn_map) == ['generator.' + k for k in syn.state_dict()]
  assert len(syn_map) == 308 - 43
  assert all(p is None or p[:2] == ('params', 'generator') for p, _ in syn_map.values())
  syn_buf = styleswin_keys.synthesis_buffers({'params': {'generator': abstract['params']['synthesis']}}, 'generator.')
  assert set(syn_buf) == {k for k, (p, _) in syn_map.items() if p is None}


# --- parity at a small size on random weights ---


@pytest.fixture(scope='module')
def small(tmod):
  torch, ts = tmod
  model = styleswin.StyleSwinGenerator(**SMALL)
  variables = _fill(_abstract(model, SMALL['style_dim']))
  key_map = styleswin_keys.styleswin_g_key_map(variables)
  buffers = styleswin_keys.styleswin_g_buffers(variables)
  state = to_state_dict(key_map, buffers, variables)
  tg = ts.TorchStyleSwinGenerator(**SMALL).eval()
  ref_state = tg.state_dict()
  for k, v in buffers.items():  # the generated buffers are the mirror's own
    if not k.endswith('_float_tensor'):
      np.testing.assert_array_equal(ref_state[k].numpy(), v, err_msg=k)
  tg.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
  return dict(model=model, variables=variables, key_map=key_map, buffers=buffers, state=state, tg=tg)


def test_round_trip_bit_exact(small):
  back = from_state_dict(small['key_map'], small['buffers'], small['state'])
  flat_a = jax.tree_util.tree_leaves_with_path(small['variables'])
  flat_b = jax.tree_util.tree_leaves_with_path(back)
  assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
  for (p, a), (_, b) in zip(flat_a, flat_b):
    assert a.dtype == b.dtype and np.array_equal(a, b), p
  exported = {k: v.numpy() for k, v in small['tg'].state_dict().items()}
  back2 = from_state_dict(small['key_map'], small['buffers'], exported)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(back2)))


def test_equal_layers(tmod):
  torch, ts = tmod
  rng = np.random.default_rng(1)
  x = rng.normal(size=(4, 32)).astype(np.float32)
  lin = ts.EqualLinear(32, 16, lr_mul=0.01, activation='fused_lrelu')
  with torch.no_grad():
    lin.weight.normal_().div_(0.01)
    lin.bias.normal_(0, 10.0)
    want = lin(torch.from_numpy(x)).numpy()
  p = {'weight': lin.weight.detach().numpy(), 'bias': lin.bias.detach().numpy()}
  got = styleswin.EqualLinear(16, lr_mul=0.01, activation='fused_lrelu').apply({'params': p}, x)
  _close(got, want)
  assert np.any(want < 0) and np.any(want > 0)
  img = rng.normal(size=(2, 9, 9, 5)).astype(np.float32)
  conv = ts.EqualConv2d(5, 7, 3, stride=2, padding=1)
  with torch.no_grad():
    conv.bias.normal_()
    want = conv(torch.from_numpy(_nchw(img))).numpy().transpose(0, 2, 3, 1)
  p = {'weight': conv.weight.detach().numpy(), 'bias': conv.bias.detach().numpy()}
  _close(styleswin.EqualConv2d(7, 3, padding=1, stride=2).apply({'params': p}, img), want)
  _close(styleswin.scaled_leaky_relu(x), torch.nn.functional.leaky_relu(torch.from_numpy(x), 0.2).numpy() * 2**0.5)


def test_adain(tmod, small):
  torch, _ = tmod
  rng = np.random.default_rng(2)
  x = (rng.normal(size=(B, 8, 8, 64)) * 3 + 1).astype(np.float32)
  w = rng.normal(size=(B, 32)).astype(np.float32)
  p = small['variables']['params']['synthesis']['layers_1']['blocks_0']['norm1']
  got = styleswin.AdaIN().apply({'params': p}, x, w)
  with torch.no_grad():
    tokens = torch.from_numpy(x.reshape(B, 64, 64)).transpose(1, 2)  # (B, C, L)
    want = small['tg'].layers[1].blocks[0].norm1(tokens, torch.from_numpy(w)).transpose(1, 2).numpy()
  _close(got, want.reshape(B, 8, 8, 64))


@pytest.mark.parametrize('k', [0, 1, 2])  # 4 px (window 4), 8 px (window 8, no shift), 16 px (shift 4)
def test_block(tmod, small, k):
  torch, _ = tmod
  res = 4 * 2**k
  rng = np.random.default_rng(3 + k)
  x = rng.normal(size=(B, res, res, 64)).astype(np.float32)
  w = rng.normal(size=(B, 32)).astype(np.float32)
  block = styleswin.StyleSwinBlock(num_heads=4, window_size=styleswin.configured_window(res))
  p = small['variables']['params']['synthesis'][f'layers_{k}']['blocks_1']
  got = _jit(block.apply)({'params': p}, x, w)
  tb = small['tg'].layers[k].blocks[1]
  assert (tb.window_size, tb.shift_size) == styleswin.window_and_shift(res, styleswin.configured_window(res))
  with torch.no_grad():
    want = tb(torch.from_numpy(x.reshape(B, res * res, 64)), torch.from_numpy(w)).numpy()
  _close(got, want.reshape(B, res, res, 64))


def test_bilinear_upsample(tmod, small):
  torch, _ = tmod
  x = np.random.default_rng(6).normal(size=(B, 8, 8, 64)).astype(np.float32)
  p = small['variables']['params']['synthesis']['layers_1']['upsample']
  assert float(p['alpha'][0]) != 0
  got = _jit(styleswin.BilinearUpsample(64).apply)({'params': p}, x)
  with torch.no_grad():
    want = small['tg'].layers[1].upsample(torch.from_numpy(x.reshape(B, 64, 64))).numpy()
  _close(got, want.reshape(B, 16, 16, 64))
  spe = small['tg'].layers[1].upsample.sin_pos_embed.make_grid2d(16, 16, 1)[0].numpy().transpose(1, 2, 0)
  _close(styleswin.sinusoidal_grid(16, 16, 64), spe, atol=1e-6)


@pytest.mark.parametrize(
  'up,down,pad', [(2, 1, (2, 1)), (1, 2, (1, 1)), (1, 1, (2, 2)), (2, 2, (-1, 2, 0, 1)), (3, 1, (1, -1, 2, 0))]
)
def test_upfirdn2d(tmod, up, down, pad):
  torch, ts = tmod
  rng = np.random.default_rng(7)
  x = rng.normal(size=(2, 7, 6, 3)).astype(np.float32)
  kernel = rng.normal(size=(4, 3)).astype(np.float32)  # asymmetric: catches a missing flip
  got = styleswin.upfirdn2d(jnp.asarray(x), kernel, up=up, down=down, pad=pad)
  want = ts.upfirdn2d(torch.from_numpy(_nchw(x)), torch.from_numpy(kernel), up=up, down=down, pad=pad)
  _close(got, want.numpy().transpose(0, 2, 3, 1))


def test_to_rgb_chain(tmod, small):
  torch, _ = tmod
  rng = np.random.default_rng(8)
  params = small['variables']['params']
  outs = [rng.normal(size=(B, r, r, 64)).astype(np.float32) for r in (8, 16, 32, 32)]

  @_jit
  def chain(outs):
    skip = None
    for k, out in enumerate(outs):
      skip = styleswin.ToRGB(3, upsample=k < 3).apply({'params': params[f'to_rgbs_{k}']}, out, skip)
    return skip

  skip = None
  with torch.no_grad():
    for out, to_rgb in zip(outs, small['tg'].to_rgbs):
      skip = to_rgb(torch.from_numpy(_nchw(out)), skip)
  _close(chain(outs), skip.numpy().transpose(0, 2, 3, 1))


def test_generator(tmod, small):
  torch, _ = tmod
  z = np.random.default_rng(9).normal(size=(B, 32)).astype(np.float32)
  model, variables = small['model'], small['variables']
  got = np.asarray(_jit(model.apply)(variables, z))
  with torch.no_grad():
    w_want = small['tg'].mapping(torch.from_numpy(z)).numpy()
    want = small['tg'](torch.from_numpy(z)).numpy().transpose(0, 2, 3, 1)
  w = model.apply(variables, z, method='mapping')
  _close(w, w_want, atol=1e-4 * np.max(np.abs(w_want)))
  assert got.shape == (B, 32, 32, 3)
  err = np.max(np.abs(got - want)) / np.max(np.abs(want))
  assert err <= 1e-4, err


def test_synthesis_conditions(tmod, small):
  torch, ts = tmod
  rng = np.random.default_rng(10)
  syn_params = small['variables']['params']['synthesis']
  key_map = styleswin_keys.synthesis_key_map(syn_params, '', ('params', 'synthesis'))
  state = to_state_dict(key_map, styleswin_keys.synthesis_buffers(syn_params), small['variables'])
  tsyn = ts.TorchSynthesis(32, 32, 1, 64).eval()
  tsyn.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
  latents = rng.normal(size=(B, 8, 32)).astype(np.float32)
  conds = [
    (rng.uniform(0.5, 1.5, (B, r, r, 32)).astype(np.float32), rng.normal(0, 0.5, (B, r, r, 32)).astype(np.float32))
    for r in (4, 8, 16)
  ]
  syn = styleswin.Synthesis(32, 32, 1, 64)
  apply = _jit(functools.partial(syn.apply, return_layers=True))
  got, got_layers = apply({'params': syn_params}, latents, conds)
  with torch.no_grad():
    tconds = [(torch.from_numpy(_nchw(s)), torch.from_numpy(_nchw(t))) for s, t in conds]
    want, want_layers = tsyn(torch.from_numpy(latents), tconds, return_layers=True)
    plain = tsyn(torch.from_numpy(latents)).numpy()
  scale = np.max(np.abs(want.numpy()))
  for g, wl in zip(got_layers, want_layers):
    _close(g, wl.numpy().transpose(0, 2, 3, 1), atol=1e-4 * max(1.0, np.max(np.abs(wl.numpy()))))
  _close(got, want.numpy().transpose(0, 2, 3, 1), atol=1e-4 * scale)
  assert np.max(np.abs(plain - want.numpy())) > 1e-2 * scale  # the conditions matter


def test_size_errors():
  with pytest.raises(ValueError, match='power of two'):
    styleswin.styleswin_channels(12)
  syn = styleswin.Synthesis(16, 32, 1, 64)
  with pytest.raises(ValueError, match=r'\(B, 6, style_dim\)'):
    jax.eval_shape(syn.init, jax.random.PRNGKey(0), jnp.zeros((1, 8, 32)))
  cond = (jnp.ones((1, 4, 4, 32)), jnp.zeros((1, 4, 4, 32)))
  with pytest.raises(ValueError, match='4 conditions for 3 layers'):
    jax.eval_shape(syn.init, jax.random.PRNGKey(0), jnp.zeros((1, 6, 32)), [cond] * 4)
