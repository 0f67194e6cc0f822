"""CASR generator: parameter count, AHPF factorisation, shapes, and the PyTorch-sensitive layers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrisr_jax.models import casr as casr_lib
from mrisr_jax.models import layers
from mrisr_jax.models import swin

pytestmark = pytest.mark.unit

torch = pytest.importorskip('torch')

SMALL = dict(
  growth_rate0=16, depth=2, growth_rate=8, rdb_depth=2, embed_dim=12, patch_size=2, num_heads=2, window_size=2
)


def test_seed_configuration_has_the_reference_parameter_count():
  model = casr_lib.CASR()  # the seed defaults: G0 128, 20 AFEBs, embed 96, patch 6, window 4, 6 heads
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 24, 24, 1))))
  assert sum(x.size for x in jax.tree.leaves(shapes['params'])) == 11_247_509


def test_factorised_ahpf_equals_the_dense_all_ones_convolution():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 9, 11, 16)), jnp.float32)
  module = casr_lib.AdaptiveHighPass()
  params = {'params': {'hp_factor': jnp.array([0.37]), 'beta': jnp.array([0.05])}}
  fast = module.apply(params, x)
  kernel = jnp.ones((3, 3, 16, 16)) * 0.37
  low = jax.lax.conv_general_dilated(
    x, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=('NHWC', 'HWIO', 'NHWC'), precision=jax.lax.Precision.HIGHEST
  )
  dense = jax.nn.relu(x - low - 0.05)
  np.testing.assert_allclose(fast, dense, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize('scale', [2, 3, 4])
def test_output_shape_for_every_scale(scale):
  model = casr_lib.CASR(scale=scale, **SMALL)
  x = jnp.ones((2, 8, 12, 1))
  params = model.init(jax.random.PRNGKey(0), x)
  assert model.apply(params, x).shape == (2, 8 * scale, 12 * scale, 1)


def test_unsupported_scale_and_illegal_size_are_rejected():
  with pytest.raises(ValueError, match='scale'):
    casr_lib.CASR(scale=5, **SMALL).init(jax.random.PRNGKey(0), jnp.ones((1, 8, 8, 1)))
  with pytest.raises(ValueError, match='window_size'):
    casr_lib.CASR(scale=2, **SMALL).init(jax.random.PRNGKey(0), jnp.ones((1, 6, 8, 1)))


def test_reference_compat_changes_the_function_but_not_the_parameters():
  x = jax.random.uniform(jax.random.PRNGKey(1), (1, 16, 16, 1))
  default = casr_lib.CASR(scale=2, **SMALL)
  compat = casr_lib.CASR(scale=2, reference_compat=True, **SMALL)
  params = default.init(jax.random.PRNGKey(0), x)
  assert jax.tree.structure(params) == jax.tree.structure(compat.init(jax.random.PRNGKey(0), x))
  assert not np.allclose(default.apply(params, x), compat.apply(params, x), atol=1e-6)


def test_scanned_blocks_keep_compile_size_flat():
  """20 AFEBs lower to about as much HLO as 2: blocks run under nn.scan."""

  def hlo_size(depth):
    model = casr_lib.CASR(scale=2, **{**SMALL, 'depth': depth})
    x = jnp.ones((1, 8, 8, 1))
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x))
    return len(jax.jit(model.apply).lower(params, x).as_text())

  assert hlo_size(20) < 1.2 * hlo_size(2)


# --- parity of the layers where PyTorch and Flax defaults differ ---------------------------------


def test_pixel_shuffle_matches_torch_and_unshuffle_inverts_it():
  x = np.random.default_rng(0).normal(size=(2, 3, 5, 4 * 9)).astype(np.float32)
  ours = np.asarray(layers.pixel_shuffle(jnp.asarray(x), 3))
  theirs = torch.nn.PixelShuffle(3)(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
  np.testing.assert_array_equal(ours, theirs)
  np.testing.assert_array_equal(np.asarray(layers.pixel_unshuffle(jnp.asarray(ours), 3)), x)


@pytest.mark.parametrize('kernel,stride,padding', [(3, 1, None), (1, 1, None), (6, 6, 0), (3, 2, None)])
def test_conv2d_matches_torch(kernel, stride, padding):
  x = np.random.default_rng(0).normal(size=(2, 12, 18, 5)).astype(np.float32)
  conv = layers.Conv2d(7, kernel, stride=stride, padding=padding)
  params = conv.init(jax.random.PRNGKey(0), jnp.asarray(x))
  ours = np.asarray(conv.apply(params, jnp.asarray(x)))
  tconv = torch.nn.Conv2d(5, 7, kernel, stride=stride, padding=kernel // 2 if padding is None else padding)
  with torch.no_grad():
    tconv.weight.copy_(torch.from_numpy(np.array(params['params']['kernel']).transpose(3, 2, 0, 1).copy()))
    tconv.bias.copy_(torch.from_numpy(np.array(params['params']['bias'])))
    theirs = tconv(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(ours, theirs, atol=1e-5)


def _torch_stb(x, p, *, heads, w, shift, alpha, compat):
  """The reference STB written directly in torch (post-norm), fed the flax params."""
  F = torch.nn.functional
  t = lambda a: torch.from_numpy(np.array(a))  # noqa: E731
  b, h, wd, c = x.shape
  hd = c // heads

  def attention(u):
    if shift:
      u = torch.roll(u, (-shift, -shift), (1, 2))
    win = u.view(b, h // w, w, wd // w, w, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, w * w, c)
    a = p['attn']
    qkv = (win @ t(a['qkv']['kernel']) + t(a['qkv']['bias'])).reshape(-1, w * w, 3, heads, hd).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    q = q * (hd**0.5 if compat else hd**-0.5)
    att = q @ k.transpose(-2, -1)
    idx = torch.from_numpy(swin.relative_position_index(w))
    bias = t(a['relative_position_bias_table'])[idx.view(-1)].view(w * w, w * w, -1).permute(2, 0, 1)
    att = att + bias[None]
    if shift:
      mask = torch.from_numpy(swin.shifted_window_mask(h, wd, w, shift))
      nw = mask.shape[0]
      att = (att.view(-1, nw, heads, w * w, w * w) + mask[None, :, None]).view(-1, heads, w * w, w * w)
    out = (att.softmax(-1) @ v).transpose(1, 2).reshape(-1, w * w, c)
    out = out @ t(a['proj']['kernel']) + t(a['proj']['bias'])
    if compat:
      u = out.reshape(b, h, wd, c)
    else:
      u = out.view(b, h // w, wd // w, w, w, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, wd, c)
    if shift:
      u = torch.roll(u, (shift, shift), (1, 2))
    return u

  def mlp(u):
    m = p['mlp']
    u = F.gelu(u @ t(m['fc_1']['kernel']) + t(m['fc_1']['bias']))  # exact GELU
    return u @ t(m['fc_2']['kernel']) + t(m['fc_2']['bias'])

  def ln(u, name):
    return F.layer_norm(u, (c,), t(p[name]['scale']), t(p[name]['bias']), eps=1e-5)

  res = (lambda s, f: s + alpha * f) if compat else (lambda s, f: alpha * s + f)
  x = ln(res(x, attention(x)), 'norm_1')
  return ln(res(x, mlp(x)), 'norm_2')


@pytest.mark.parametrize('compat', [False, True])
@pytest.mark.parametrize('shift', [0, 2])
def test_swin_block_matches_a_torch_transcription_of_the_reference(compat, shift):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 8, 12, 12)).astype(np.float32)
  alpha = 4**0.25
  block = swin.SwinBlock(12, 3, 4, shift, alpha=alpha, beta=8**-0.25, reference_compat=compat)
  params = block.init(jax.random.PRNGKey(0), jnp.asarray(x), train=False)['params']
  # non-trivial LayerNorm affine and bias table, so eps/order mistakes show
  params = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.PRNGKey(3), a.shape), params)
  ours = np.asarray(block.apply({'params': params}, jnp.asarray(x), train=False))
  theirs = _torch_stb(
    torch.from_numpy(x), jax.tree.map(np.asarray, params), heads=3, w=4, shift=shift, alpha=alpha, compat=compat
  ).numpy()
  np.testing.assert_allclose(ours, theirs, atol=1e-4)
