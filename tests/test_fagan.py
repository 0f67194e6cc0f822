"""FA-GAN generator (LFFB, GFFB) and the spectrally normalised discriminator, on tiny configs."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from mrisr_jax.models.fagan import (
  GFFB,
  LFFB,
  ChannelAttention,
  FAGANDiscriminator,
  FAGANGenerator,
  SelfAttention,
  connect_branches,
)

pytestmark = pytest.mark.unit

TINY = dict(n_feats=8, n_lffb=1)


def _numpy_variables(module, *args, seed=0, kernel_gain=1.0, **kwargs):
  """The variables `module.init` makes, drawn with numpy in the same distributions.

  `init` compiles one threefry kernel per parameter shape, tens of seconds on a busy 2-core CPU.
  Conv/Linear kernels and biases: U(+-gain/sqrt(fan_in)) (PyTorch's default at gain 1); PReLU
  `weight` 0.25; SAGAN `gamma` 0; SN `u` standard normal, `sigma` 1.
  """
  rng = np.random.default_rng(seed)
  abstract = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *args, **kwargs))

  def fill(node):
    if 'kernel' in node:
      bound = kernel_gain / np.sqrt(np.prod(node['kernel'].shape[:-1]))
      return {k: jnp.asarray(rng.uniform(-bound, bound, v.shape), jnp.float32) for k, v in node.items()}
    out = {}
    for k, v in node.items():
      if isinstance(v, dict):
        out[k] = fill(v)
      elif k == 'gamma':
        out[k] = jnp.zeros(v.shape, jnp.float32)
      elif k == 'weight':
        out[k] = jnp.full(v.shape, 0.25, jnp.float32)
      elif k.endswith('/u'):
        out[k] = jnp.asarray(rng.normal(size=v.shape), jnp.float32)
      elif k.endswith('/sigma'):
        out[k] = jnp.ones(v.shape, jnp.float32)
      else:
        raise KeyError(f'no numpy init for {k}')
    return out

  return fill(abstract)


def _count(variables) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(variables))


def _sigmoid(z):
  return 1.0 / (1.0 + np.exp(-z))


@pytest.mark.parametrize('attention_at', ['lr', 'hr'])
@pytest.mark.parametrize('scale', [2, 4, 8])
def test_generator_output_shape(scale, attention_at):
  """Abstract evaluation (shapes only); the gradient tests run both orders for real."""
  g = FAGANGenerator(scale=scale, attention_at=attention_at, **TINY)
  x = jax.ShapeDtypeStruct((2, 5, 7, 1), jnp.float32)
  variables = jax.eval_shape(g.init, jax.random.PRNGKey(1), x)
  y = jax.eval_shape(g.apply, variables, x)
  assert y.shape == (2, 5 * scale, 7 * scale, 1)
  assert y.dtype == jnp.float32


def test_generator_bfloat16_compute_keeps_float32_params_and_output():
  g = FAGANGenerator(scale=2, dtype=jnp.bfloat16, **TINY)
  x = jax.ShapeDtypeStruct((1, 6, 6, 1), jnp.float32)
  variables = jax.eval_shape(g.init, jax.random.PRNGKey(0), x)
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(variables))
  assert jax.eval_shape(g.apply, variables, x).dtype == jnp.float32


@pytest.mark.parametrize(
  'kwargs, words',
  [
    (dict(scale=3), ['FAGANGenerator', '2, 4, 8']),
    (dict(attention_at='mid'), ['attention_at', 'lr, hr']),
    (dict(connection='sum'), ['connection', 'weighted, direct']),
  ],
)
def test_generator_rejects_unsupported_settings(kwargs, words):
  g = FAGANGenerator(**{**TINY, **kwargs})
  with pytest.raises(ValueError) as err:
    g.init(jax.random.PRNGKey(0), jnp.ones((1, 4, 4, 1)))
  for word in words:
    assert word in str(err.value)


def test_size_multiple_and_scales():
  assert FAGANGenerator().size_multiple == 1
  assert FAGANGenerator.supported_scales == (2, 4, 8)
  assert FAGANGenerator.upsampled_input is False


def _self_attention_numpy(x, p, gamma):
  """SAGAN by hand: s_ji = g_j . f_i, softmax over i, o_j = sum_i beta_ji h_i; gamma v(o) + x."""
  b, hh, ww, c = x.shape
  flat = x.reshape(b, hh * ww, c)

  def conv1x1(name, z):
    return z @ p[name]['kernel'][0, 0] + p[name]['bias']

  f, g, h = conv1x1('f', flat), conv1x1('g', flat), conv1x1('h', flat)
  s = np.einsum('bjc,bic->bji', g, f)
  s = np.exp(s - s.max(-1, keepdims=True))
  beta = s / s.sum(-1, keepdims=True)
  o = conv1x1('v', np.einsum('bji,bic->bjc', beta, h))
  return (gamma * o + flat).reshape(b, hh, ww, c)


def test_self_attention_is_identity_at_init_and_matches_numpy():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 4, 16))
  sa = SelfAttention()
  params = sa.init(jax.random.PRNGKey(1), x)['params']
  assert float(params['gamma'][0]) == 0.0
  apply = jax.jit(lambda p: sa.apply({'params': p}, x))
  np.testing.assert_array_equal(np.asarray(apply(params)), np.asarray(x))
  assert params['f']['kernel'].shape == (1, 1, 16, 2)  # C/8
  assert params['h']['kernel'].shape == (1, 1, 16, 16)

  params = jax.tree_util.tree_map(np.asarray, params)
  params['gamma'] = np.array([0.5], np.float32)
  got = apply(params)
  want = _self_attention_numpy(np.asarray(x, np.float64), params, 0.5)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)
  assert np.abs(want - np.asarray(x)).max() > 1e-2  # the attention branch did something


def test_weighted_connection_matches_hand_formula():
  rng = np.random.default_rng(0)
  r = rng.normal(size=(2, 3, 3, 4)).astype(np.float32) * 3
  y = rng.normal(size=(2, 3, 3, 4)).astype(np.float32) * 3
  for alpha, beta in [(0.5, 0.5), (0.3, 0.9)]:
    w_r = np.exp(alpha * r) / (np.exp(alpha * r) + np.exp(beta * y))
    want = w_r * r + (1 - w_r) * y
    got = connect_branches(jnp.asarray(r), jnp.asarray(y), 'weighted', alpha, beta)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
    got = connect_branches(jnp.asarray(r), jnp.asarray(y), 'direct', alpha, beta)
    np.testing.assert_allclose(np.asarray(got), alpha * r + beta * y, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(connect_branches(jnp.asarray(r), jnp.asarray(r))), r, rtol=1e-6)
  # softmax form: no overflow where exp(alpha R) alone would overflow float32
  big = connect_branches(jnp.full((3,), 400.0), jnp.array([400.0, 0.0, 1000.0]))
  np.testing.assert_allclose(np.asarray(big), [400.0, 400.0, 1000.0], rtol=1e-6)


def test_gffb_at_init_is_connection_of_channel_attention_and_input():
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 3, 3, 8))
  gffb = GFFB(reduction=2)
  variables = _numpy_variables(gffb, x)
  r = ChannelAttention(2).apply({'params': variables['params']['channel_attention']}, x)
  np.testing.assert_allclose(
    np.asarray(gffb.apply(variables, x)), np.asarray(connect_branches(r, x)), rtol=1e-6, atol=1e-7
  )


def test_channel_attention_matches_numpy():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 5, 32))
  ca = ChannelAttention(reduction=4)
  params = _numpy_variables(ca, x)['params']
  p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
  assert p['fc_reduce']['kernel'].shape == (32, 8)
  xn = np.asarray(x, np.float64)
  pooled = xn.mean(axis=(1, 2))
  hidden = np.maximum(pooled @ p['fc_reduce']['kernel'] + p['fc_reduce']['bias'], 0)
  s = _sigmoid(hidden @ p['fc_expand']['kernel'] + p['fc_expand']['bias'])
  want = xn * s[:, None, None, :]
  np.testing.assert_allclose(np.asarray(ca.apply({'params': params}, x)), want, rtol=1e-5, atol=1e-6)
  # r larger than C still keeps one hidden unit
  tiny = jax.eval_shape(ChannelAttention(reduction=16).init, jax.random.PRNGKey(0), x[..., :8])
  tiny = tiny['params']
  assert tiny['fc_reduce']['kernel'].shape == (8, 1)


def test_lffb_is_residual_with_one_path_per_kernel_size():
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 9, 9, 4))
  block = LFFB((3, 5, 7))
  params = _numpy_variables(block, x)['params']
  apply = jax.jit(lambda p: block.apply({'params': p}, x))
  assert [params[f'path_{i}']['conv_0']['kernel'].shape[0] for i in range(3)] == [3, 5, 7]
  assert params['fuse']['kernel'].shape == (1, 1, 12, 4)
  zero_fuse = {**params, 'fuse': jax.tree_util.tree_map(jnp.zeros_like, params['fuse'])}
  np.testing.assert_array_equal(np.asarray(apply(zero_fuse)), np.asarray(x))
  assert not np.allclose(np.asarray(apply(params)), np.asarray(x))


def _nonzero_report(grads) -> list[str]:
  flat = traverse_util.flatten_dict(grads, sep='/')
  return [k for k, g in flat.items() if not np.any(np.asarray(g) != 0)]


@pytest.mark.parametrize('attention_at', ['lr', 'hr'])
def test_gradients_reach_every_generator_parameter(attention_at):
  g = FAGANGenerator(scale=2, attention_at=attention_at, reduction=2, **TINY)
  x = jax.random.uniform(jax.random.PRNGKey(0), (2, 6, 6, 1))
  target = jax.random.uniform(jax.random.PRNGKey(1), (2, 12, 12, 1))
  params = _numpy_variables(g, x)['params']

  def loss(p):
    return jnp.mean((g.apply({'params': p}, x) - target) ** 2)

  grad_fn = jax.jit(jax.value_and_grad(loss))
  value, grads = grad_fn(params)
  assert np.isfinite(float(value))
  # gamma = 0: gamma itself already receives a gradient, f/g/h/v cannot yet
  assert float(jnp.abs(grads['gffb']['self_attention']['gamma'][0])) > 0
  params['gffb']['self_attention']['gamma'] = jnp.array([0.5])
  _, grads = grad_fn(params)
  assert _nonzero_report(grads) == []


def test_gradients_reach_every_discriminator_parameter():
  d = FAGANDiscriminator(base_features=4)
  x = jax.random.uniform(jax.random.PRNGKey(0), (3, 16, 16, 1))
  variables = _numpy_variables(d, x, False)

  def loss(p):
    logits, _ = d.apply({'params': p, 'batch_stats': variables['batch_stats']}, x, True, mutable=['batch_stats'])
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, jnp.array([1.0, 0.0, 1.0])))

  assert _nonzero_report(jax.jit(jax.grad(loss))(variables['params'])) == []


def _normalised_weights(variables) -> dict[str, np.ndarray]:
  """kernel / stored sigma, reshaped to (out, in*k*k) as SN sees it."""
  out = {}
  for name, p in variables['params'].items():
    sigma = variables['batch_stats'][f'sn_{name}'][f'{name}/kernel/sigma']
    k = np.asarray(p['kernel'], np.float64)
    out[name] = k.reshape(-1, k.shape[-1]).T / float(sigma)
  return out


def test_spectral_norm_keeps_largest_singular_value_at_one_after_adam():
  d = FAGANDiscriminator(base_features=4, power_iterations=5)
  x = jax.random.uniform(jax.random.PRNGKey(0), (4, 16, 16, 1))
  labels = jnp.array([1.0, 0.0, 1.0, 0.0])
  # kernels 3x PyTorch's init scale: raw spectral norms well above 1, so SN has work to do
  variables = _numpy_variables(d, x, False, kernel_gain=3.0)
  params, stats = variables['params'], variables['batch_stats']
  opt = optax.adam(1e-3)
  opt_state = opt.init(params)

  def loss(p, s):
    logits, upd = d.apply({'params': p, 'batch_stats': s}, x, True, mutable=['batch_stats'])
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, labels)), upd['batch_stats']

  @jax.jit
  def step(p, s, o):
    (_, s), grads = jax.value_and_grad(loss, has_aux=True)(p, s)
    updates, o = opt.update(grads, o, p)
    return optax.apply_updates(p, updates), s, o

  for _ in range(8):
    params, stats, opt_state = step(params, stats, opt_state)
  # one more training forward (its update is dropped): the stored sigma then belongs to `params`
  _, stats, _ = step(params, stats, opt_state)
  raw_norms = {}
  for name, w in _normalised_weights({'params': params, 'batch_stats': stats}).items():
    top = np.linalg.svd(w, compute_uv=False)[0]
    assert abs(top - 1.0) < 0.05, (name, top)
    raw = np.asarray(params[name]['kernel'])
    raw_norms[name] = np.linalg.svd(raw.reshape(-1, raw.shape[-1]), compute_uv=False)[0]
  # the check is not vacuous: the raw weights are far from spectral norm 1
  assert all(v > 1.5 for v in raw_norms.values()), raw_norms


def test_discriminator_forward_uses_the_normalised_kernel():
  d = FAGANDiscriminator(base_features=4)
  x = jax.random.uniform(jax.random.PRNGKey(0), (2, 8, 8, 1))
  variables = _numpy_variables(d, x, False, kernel_gain=5.0)
  _, state = jax.jit(
    lambda v: d.apply(
      v, x, True, mutable=['batch_stats', 'intermediates'], capture_intermediates=lambda mdl, _: mdl.name == 'conv_0'
    )
  )(variables)
  stem = np.asarray(jax.tree_util.tree_leaves(state['intermediates'])[0])
  sigma = float(state['batch_stats']['sn_conv_0']['conv_0/kernel/sigma'])
  kernel = variables['params']['conv_0']['kernel'] / sigma
  want = jax.lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  want = want + variables['params']['conv_0']['bias']
  np.testing.assert_allclose(stem, np.asarray(want), rtol=1e-5, atol=1e-6)
  assert sigma > 1.5  # the kernels were scaled by 5, so dividing by sigma matters


def test_discriminator_logits_shape_any_size_and_state_update_only_in_training():
  d = FAGANDiscriminator(base_features=4)
  variables = _numpy_variables(d, jnp.zeros((1, 16, 16, 1)), False)
  apply = jax.jit(lambda v, x, train: d.apply(v, x, train, mutable=['batch_stats']), static_argnums=2)
  x = jax.random.uniform(jax.random.PRNGKey(1), (3, 16, 16, 1))
  logits, upd = apply(variables, x, False)
  assert logits.shape == (3,) and logits.dtype == jnp.float32
  jax.tree_util.tree_map(np.testing.assert_array_equal, upd['batch_stats'], variables['batch_stats'])
  u_old = variables['batch_stats']['sn_conv_1']['conv_1/kernel/u']
  for shape in [(3, 16, 16, 1), (2, 37, 45, 1)]:
    logits, upd = apply(variables, jax.random.uniform(jax.random.PRNGKey(1), shape), True)
    assert logits.shape == (shape[0],) and logits.dtype == jnp.float32
    assert not np.allclose(np.asarray(upd['batch_stats']['sn_conv_1']['conv_1/kernel/u']), np.asarray(u_old))
  probs = jax.eval_shape(lambda v: d.apply(v, x, False, method='probs'), variables)
  assert probs.shape == (3,)


def _conv(k, cin, cout):
  return k * k * cin * cout + cout


def test_default_parameter_counts():
  """Counts derived by hand from the architecture (no reference number exists)."""
  x = jnp.zeros((1, 24, 24, 1))
  g_vars = jax.eval_shape(FAGANGenerator().init, jax.random.PRNGKey(0), x)
  f = 64
  lffb = sum(3 * _conv(k, f, f) for k in (3, 5, 7)) + _conv(1, 3 * f, f)
  gffb = (f * 4 + 4) + (4 * f + f) + 2 * _conv(1, f, 8) + 2 * _conv(1, f, f) + 1
  want = _conv(9, 1, f) + 1 + 8 * lffb + _conv(3, f, f) + 2 * (_conv(3, f, 4 * f) + 1) + gffb
  want += _conv(9, f, 1)
  assert _count(g_vars) == want == 8_615_385
  assert set(g_vars) == {'params'}
  assert g_vars['params']['gffb']['self_attention']['gamma'].shape == (1,)

  d_vars = jax.eval_shape(
    functools.partial(FAGANDiscriminator().init, train=False), jax.random.PRNGKey(0), jnp.zeros((1, 96, 96, 1))
  )
  widths = [1, 64, 64, 128, 128, 256, 256, 512, 512]
  want_d = sum(_conv(3, a, b) for a, b in zip(widths[:-1], widths[1:]))
  want_d += 512 * 1024 + 1024 + 1024 + 1
  assert _count(d_vars['params']) == want_d == 5_210_561
