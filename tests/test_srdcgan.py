"""SR-DCGAN generator and discriminator: geometry, output range, BatchNorm modes, gradients, and the
transposed conv against torch.nn.ConvTranspose2d. The key tables and the torch mirrors
(`interop.torch_models.TorchSRDCGAN*`) are tested in test_interop_other_models.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrisr_jax.models.srdcgan import ConvTranspose2d, SRDCGANDiscriminator, SRDCGANGenerator, conv_transpose_torch

pytestmark = pytest.mark.unit

TINY_D = (4, 4, 8, 8, 8, 8)
SMALL = (2, 32, 32, 1)  # one shape for most tests: eager JAX compiles each op once per shape


def _count(tree) -> int:
  return sum(x.size for x in jax.tree.leaves(tree))


def _uniform(key, shape):
  return jax.random.uniform(jax.random.PRNGKey(key), shape)


def test_full_size_parameter_counts():
  g = SRDCGANGenerator()
  shapes = jax.eval_shape(lambda: g.init(jax.random.PRNGKey(0), jnp.zeros((1, 60, 64, 1))))
  f = 64
  convs = 3 * 3 * 1 * f + 4 * 3 * 3 * f * f + 2 * 4 * 4 * f * f + (3 * 3 * f * 1 + 1)
  assert _count(shapes['params']) == convs + 7 * 2 * f  # no bias before BN; BN scale + bias

  d = SRDCGANDiscriminator()
  shapes = jax.eval_shape(lambda: d.init(jax.random.PRNGKey(0), jnp.zeros((1, 240, 256, 1)), False))
  widths = (1, 64, 64, 128, 128, 256, 256)
  convs = sum(9 * a * b for a, b in zip(widths[:-1], widths[1:])) + 64  # + conv1's bias
  bns = 2 * sum(widths[2:])
  dense = 15 * 16 * 256 + 1
  assert _count(shapes['params']) == convs + bns + dense


def test_generator_maps_60x64_to_240x256():
  g = SRDCGANGenerator(features=8)
  x = jax.ShapeDtypeStruct((2, 60, 64, 1), jnp.float32)  # shapes only: tracing is exact and cheap
  y = jax.eval_shape(lambda x: g.apply(g.init(jax.random.PRNGKey(1), x), x), x)
  assert y.shape == (2, 240, 256, 1) and y.dtype == jnp.float32


def test_discriminator_reduces_240x256_to_15x16_then_one_logit():
  d = SRDCGANDiscriminator(features=TINY_D)
  x = jax.ShapeDtypeStruct((2, 240, 256, 1), jnp.float32)
  variables = jax.eval_shape(lambda x: d.init(jax.random.PRNGKey(1), x, False), x)
  assert variables['params']['dense']['kernel'].shape == (15 * 16 * TINY_D[-1], 1)
  logits = jax.eval_shape(lambda v, x: d.apply(v, x, False), variables, x)
  assert logits.shape == (2,) and logits.dtype == jnp.float32


def test_generator_output_stays_in_unit_interval_even_when_tanh_saturates():
  g = SRDCGANGenerator(features=8)
  x = jnp.concatenate(
    [_uniform(0, (1,) + SMALL[1:]), 100.0 * jax.random.normal(jax.random.PRNGKey(2), (1,) + SMALL[1:])]
  )
  variables = g.init(jax.random.PRNGKey(1), x)
  params = jax.tree.map(lambda p: p, variables['params'])
  params['conv8']['kernel'] = params['conv8']['kernel'] * 1e3  # drive tanh into +-1
  y = g.apply({**variables, 'params': params}, x)
  assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
  assert float(y.min()) < 1e-3 and float(y.max()) > 1 - 1e-3  # both ends are reached


def test_input_normalisation_and_output_mapping_use_mean_and_std():
  """(x - 0.5) / 0.5 == 2x - 1 on entry and tanh * 0.5 + 0.5 on exit, against mean 0 / std 1."""
  default = SRDCGANGenerator(features=8)
  plain = SRDCGANGenerator(features=8, input_mean=0.0, input_std=1.0)
  x = _uniform(0, SMALL)
  variables = default.init(jax.random.PRNGKey(1), x)
  np.testing.assert_allclose(default.apply(variables, x), 0.5 * plain.apply(variables, 2 * x - 1) + 0.5, atol=1e-6)


@pytest.mark.parametrize('kernel_size,padding,output_padding', [(4, 1, 0), (3, 1, 1)])
def test_conv_transpose_equals_torch(kernel_size, padding, output_padding):
  torch = pytest.importorskip('torch')
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 3, 7, 9)).astype(np.float32)  # NCHW
  conv = torch.nn.ConvTranspose2d(3, 5, kernel_size, 2, padding, output_padding)
  with torch.no_grad():
    conv.weight.copy_(torch.from_numpy(rng.normal(size=(3, 5, kernel_size, kernel_size)).astype(np.float32)))
    conv.bias.copy_(torch.from_numpy(rng.normal(size=(5,)).astype(np.float32)))
    expected = conv(torch.from_numpy(x)).numpy().transpose(0, 2, 3, 1)
  module = ConvTranspose2d(5, kernel_size, 2, padding, output_padding)
  params = {
    'params': {
      'kernel': jnp.asarray(conv.weight.detach().numpy().transpose(2, 3, 0, 1)),
      'bias': jnp.asarray(conv.bias.detach().numpy()),
    }
  }
  with jax.default_matmul_precision('highest'):
    got = module.apply(params, jnp.asarray(x.transpose(0, 2, 3, 1)))
  assert got.shape == expected.shape == (2, 14, 18, 5)
  np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)


def test_conv_transpose_k4_s2_p1_overlaps_evenly_inside():
  """Ones in, ones kernel: output j gets taps a with j = 2i - 1 + a, a in 0..3, i in 0..n-1, which
  is 2 everywhere but the two borders (1). Hand-derived, no torch."""
  y = conv_transpose_torch(jnp.ones((1, 3, 4, 1)), jnp.ones((4, 4, 1, 1)), 2, 1)
  rows, cols = np.array([1, 2, 2, 2, 2, 1]), np.array([1, 2, 2, 2, 2, 2, 2, 1])
  np.testing.assert_allclose(y[0, :, :, 0], np.outer(rows, cols))


def test_conv_transpose_init_bound_uses_out_channels_as_fan_in():
  module = ConvTranspose2d(16, 4, 2, 1)
  params = module.init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 2)))['params']
  bound = 1 / np.sqrt(16 * 4 * 4)  # torch: weight (in, out, k, k), fan_in = out * k * k
  assert params['kernel'].shape == (4, 4, 2, 16)
  assert 0.9 * bound < float(jnp.abs(params['kernel']).max()) <= bound
  assert float(jnp.abs(params['bias']).max()) <= bound


def test_unsupported_scale_raises():
  with pytest.raises(ValueError, match=r'SRDCGANGenerator.*\(4,\)'):
    SRDCGANGenerator(scale=2, features=8).init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))


def _assert_every_gradient_nonzero(grads):
  flat = jax.tree_util.tree_flatten_with_path(grads)[0]
  dead = [jax.tree_util.keystr(path) for path, g in flat if not float(jnp.abs(g).max()) > 0]
  assert not dead, f'no gradient reaches {dead}'


@pytest.mark.parametrize('which', ['generator', 'discriminator'])
def test_gradients_reach_every_parameter(which):
  x = _uniform(0, SMALL)
  if which == 'generator':
    model, args = SRDCGANGenerator(features=8), ()
  else:
    model, args = SRDCGANDiscriminator(features=TINY_D), (False,)
  variables = model.init(jax.random.PRNGKey(1), x, *args)
  out_shape = jax.eval_shape(lambda: model.apply(variables, x, *args)).shape
  weights = jax.random.normal(jax.random.PRNGKey(2), out_shape)

  def loss(params):
    out, _ = model.apply({**variables, 'params': params}, x, True, mutable=['batch_stats'])
    return jnp.sum(out * weights)

  _assert_every_gradient_nonzero(jax.jit(jax.grad(loss))(variables['params']))


@pytest.mark.parametrize('which', ['generator', 'discriminator'])
def test_batchnorm_train_updates_stats_and_eval_is_per_sample(which):
  x = _uniform(0, (3,) + SMALL[1:])
  if which == 'generator':
    model, args = SRDCGANGenerator(features=8), ()
  else:
    model, args = SRDCGANDiscriminator(features=TINY_D), (False,)
  variables = model.init(jax.random.PRNGKey(1), x[:2], *args)
  _, updates = model.apply(variables, x[:2], True, mutable=['batch_stats'])
  for name, old in variables['batch_stats'].items():
    new = updates['batch_stats'][name]
    assert int(new['num_batches_tracked']) == 1
    assert not np.allclose(new['mean'], old['mean']) and not np.allclose(new['var'], old['var'])
  variables = {**variables, **updates}

  batch_a, batch_b = x[jnp.array([0, 1])], x[jnp.array([0, 2])]
  train_a = model.apply(variables, batch_a, True, mutable=['batch_stats'])[0]
  train_b = model.apply(variables, batch_b, True, mutable=['batch_stats'])[0]
  assert not np.allclose(train_a[0], train_b[0], atol=1e-6)  # batch statistics couple samples
  eval_a, eval_b = model.apply(variables, batch_a, False), model.apply(variables, batch_b, False)
  np.testing.assert_allclose(eval_a[0], eval_b[0], atol=1e-6)
  np.testing.assert_allclose(model.apply(variables, x[:1], False)[0], eval_a[0], atol=1e-6)
