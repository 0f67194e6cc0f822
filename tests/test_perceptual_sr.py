"""PerceptualSRNet (Johnson et al.'s SR network, seed 003): geometry per scale and upsampling mode,
the two upscaling blocks, BatchNorm modes and gradients. Its key table and its torch mirror
(`interop.torch_models.TorchPerceptualSRNet`) are tested in test_interop_other_models.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrisr_jax.models.perceptual_sr import PerceptualSRNet, UpscaleBlock, upsample_nearest_2x
from mrisr_jax.models.srdcgan import conv_transpose_torch

pytestmark = pytest.mark.unit

TINY = dict(features=8, num_resblocks=2)
SMALL = (2, 10, 12, 1)  # one shape for most tests: eager JAX compiles each op once per shape


def _count(tree) -> int:
  return sum(x.size for x in jax.tree.leaves(tree))


def _uniform(key, shape):
  return jax.random.uniform(jax.random.PRNGKey(key), shape)


@pytest.mark.parametrize('upsample', ['transposed', 'nearest'])
def test_full_size_parameter_count(upsample):
  """9x9 in, 4 x 2 conv3x3, 2 x conv3x3 (transposed or not, same shape), 9x9 out; no conv bias
  before a BatchNorm, 2 params per BN channel."""
  model = PerceptualSRNet(upsample=upsample)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 22, 22, 1))))
  f = 64
  convs = 81 * f + 4 * 2 * 9 * f * f + 2 * 9 * f * f + (81 * f + 1)
  bns = (1 + 4 * 2 + 2) * 2 * f
  assert _count(shapes['params']) == convs + bns


@pytest.mark.parametrize('upsample', ['transposed', 'nearest'])
@pytest.mark.parametrize('scale', [2, 4])
def test_output_is_scale_times_the_input(scale, upsample):
  model = PerceptualSRNet(scale=scale, upsample=upsample, **TINY)
  x = jax.ShapeDtypeStruct((2, 11, 13, 1), jnp.float32)  # odd sides too; shapes only, via tracing
  variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), x)
  assert sorted(k for k in variables['params'] if k.startswith('up_')) == [
    f'up_{i}' for i in range({2: 1, 4: 2}[scale])
  ]
  y = jax.eval_shape(lambda v, x: model.apply(v, x), variables, x)
  assert y.shape == (2, 11 * scale, 13 * scale, 1) and y.dtype == jnp.float32


def test_upscale_blocks_double_and_differ_only_in_the_upsampling_layer():
  x = _uniform(0, (1, 5, 7, 8))
  shapes = {}
  for mode in ('transposed', 'nearest'):
    block = UpscaleBlock(8, mode)
    variables = block.init(jax.random.PRNGKey(1), x, False)
    assert block.apply(variables, x, False).shape == (1, 10, 14, 8)
    shapes[mode] = {k: {n: v.shape for n, v in p.items()} for k, p in variables['params'].items()}
  assert shapes['transposed'] == {'deconv': {'kernel': (3, 3, 8, 8)}, 'bn': {'scale': (8,), 'bias': (8,)}}
  assert shapes['nearest'] == {'conv': {'kernel': (3, 3, 8, 8)}, 'bn': {'scale': (8,), 'bias': (8,)}}


def test_whole_networks_differ_only_in_the_upscaling_blocks():
  x = jnp.zeros((1, 6, 6, 1))
  trees = {}
  for mode in ('transposed', 'nearest'):
    v = jax.eval_shape(lambda: PerceptualSRNet(upsample=mode, **TINY).init(jax.random.PRNGKey(0), x))
    trees[mode] = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(v)[0]}
  only_t, only_n = trees['transposed'] - trees['nearest'], trees['nearest'] - trees['transposed']
  assert only_t == {f"['params']['up_{i}']['deconv']['kernel']" for i in range(2)}
  assert only_n == {f"['params']['up_{i}']['conv']['kernel']" for i in range(2)}


def test_nearest_upsampling_repeats_each_pixel_2x2():
  x = jnp.array([[1.0, 2.0], [3.0, 4.0]])[None, :, :, None]
  expected = [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]]
  np.testing.assert_array_equal(upsample_nearest_2x(x)[0, :, :, 0], expected)


def test_transposed_k3_s2_p1_op1_overlaps_unevenly():
  """The checkerboard the seed talks about, hand-derived: ones in, ones kernel; output j gets taps
  a with j = 2i - 1 + a (a in 0..2, i in 0..n-1): 1 tap at even j, 2 at odd j, 1 at the last."""
  y = conv_transpose_torch(jnp.ones((1, 3, 4, 1)), jnp.ones((3, 3, 1, 1)), 2, 1, 1)
  rows, cols = np.array([1, 2, 1, 2, 1, 1]), np.array([1, 2, 1, 2, 1, 2, 1, 1])
  np.testing.assert_allclose(y[0, :, :, 0], np.outer(rows, cols))


def test_unsupported_scale_and_mode_raise():
  x = jnp.zeros((1, 6, 6, 1))
  with pytest.raises(ValueError, match=r'PerceptualSRNet.*\(2, 4\)'):
    PerceptualSRNet(scale=3, **TINY).init(jax.random.PRNGKey(0), x)
  with pytest.raises(ValueError, match='upsample'):
    PerceptualSRNet(upsample='bilinear', **TINY).init(jax.random.PRNGKey(0), x)


@pytest.mark.parametrize('upsample', ['transposed', 'nearest'])
def test_gradients_reach_every_parameter(upsample):
  model = PerceptualSRNet(upsample=upsample, **TINY)
  x = _uniform(0, SMALL)
  variables = model.init(jax.random.PRNGKey(1), x)
  weights = jax.random.normal(jax.random.PRNGKey(2), (2, 40, 48, 1))

  def loss(params):
    out, _ = model.apply({**variables, 'params': params}, x, True, mutable=['batch_stats'])
    return jnp.sum(out * weights)

  grads = jax.jit(jax.grad(loss))(variables['params'])
  flat = jax.tree_util.tree_flatten_with_path(grads)[0]
  dead = [jax.tree_util.keystr(p) for p, g in flat if not float(jnp.abs(g).max()) > 0]
  assert not dead, f'no gradient reaches {dead}'


def test_batchnorm_train_updates_stats_and_eval_is_per_sample():
  model = PerceptualSRNet(**TINY)
  x = _uniform(0, (3,) + SMALL[1:])
  variables = model.init(jax.random.PRNGKey(1), x[:2])
  _, updates = model.apply(variables, x[:2], True, mutable=['batch_stats'])
  stats = jax.tree_util.tree_flatten_with_path(updates['batch_stats'])[0]
  old = dict((jax.tree_util.keystr(p), v) for p, v in jax.tree_util.tree_flatten_with_path(variables['batch_stats'])[0])
  assert len(stats) == 3 * (1 + 2 * 2 + 2)  # mean, var, count per BN
  for path, new in stats:
    key = jax.tree_util.keystr(path)
    if key.endswith("['num_batches_tracked']"):
      assert int(new) == 1
    else:
      assert not np.allclose(new, old[key]), key
  variables = {**variables, **updates}

  batch_a, batch_b = x[jnp.array([0, 1])], x[jnp.array([0, 2])]
  train_a = model.apply(variables, batch_a, True, mutable=['batch_stats'])[0]
  train_b = model.apply(variables, batch_b, True, mutable=['batch_stats'])[0]
  assert not np.allclose(train_a[0], train_b[0], atol=1e-6)
  eval_a, eval_b = model.apply(variables, batch_a), model.apply(variables, batch_b)
  np.testing.assert_allclose(eval_a[0], eval_b[0], atol=1e-6)
  np.testing.assert_allclose(model.apply(variables, x[:1])[0], eval_a[0], atol=1e-6)
