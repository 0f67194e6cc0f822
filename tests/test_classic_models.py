"""SRCNN, DRRN, EDSR, RDN: reference parameter counts and state_dict layout, shapes, structure and
gradients. Parity with the torch mirrors is in test_interop_models.py."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrisr_jax.interop.convert import state_dict_shapes
from mrisr_jax.models import srcnn as srcnn_lib
from mrisr_jax.models.drrn import DRRN
from mrisr_jax.models.edsr import EDSR
from mrisr_jax.models.rdn import RDN
from mrisr_jax.models.srcnn import SRCNN
from tests.helpers import REFERENCE_JSON  # the vendored contract: tests/data/README.md

pytestmark = pytest.mark.unit

# The JSON configurations, as constructors of our modules.
REFERENCE_CONFIGS = {
  'srcnn': lambda: SRCNN(),
  'drrn': lambda: DRRN(),
  'edsr_x4': lambda: EDSR(scale=4),
  'edsr_x3_baseline': lambda: EDSR(scale=3, n_resblocks=16, n_feats=64),
  'rdn_x4': lambda: RDN(scale=4),
  'rdn_x2': lambda: RDN(scale=2),
}

TINY = {
  'srcnn': lambda scale: SRCNN(scale=scale),
  'drrn': lambda scale: DRRN(scale=scale, num_recursive_blocks=2, num_units=3, features=8),
  'edsr': lambda scale: EDSR(scale=scale, n_resblocks=2, n_feats=8),
  'rdn': lambda scale: RDN(scale=scale, growth_rate0=8, growth_rate=4, num_layers=2, num_blocks=2),
}
SCALES = (2, 3, 4)


def _reference(name):
  with open(REFERENCE_JSON) as f:
    return json.load(f)[name]


def _abstract_params(model, side=12):
  x = jnp.zeros((1, side, side, model.in_channels))
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x))['params']


def _random_params(model, x, seed=0):
  """Params with PyTorch's default distribution, U(+-1/sqrt(fan_in)), drawn with numpy.

  `model.init` would draw the same distribution but compiles one threefry kernel per parameter
  shape, which costs tens of seconds on a busy 2-core CPU; the tests only need the tree.
  """
  rng = np.random.default_rng(seed)

  def fill(node):
    if 'kernel' in node:  # a Conv2d: every param here is a kernel plus maybe a bias
      bound = 1.0 / math.sqrt(math.prod(node['kernel'].shape[:-1]))
      return {k: jnp.asarray(rng.uniform(-bound, bound, v.shape), jnp.float32) for k, v in node.items()}
    return {k: fill(v) for k, v in node.items()}

  return fill(_abstract_params(model, x.shape[1]))


def _apply(model, params, x):
  return model.apply({'params': params}, x)


# --- reference contract ------------------------------------------------------------------------


@pytest.mark.parametrize('config', sorted(REFERENCE_CONFIGS))
def test_parameter_count_equals_the_reference(config):
  params = _abstract_params(REFERENCE_CONFIGS[config]())
  assert sum(x.size for x in jax.tree.leaves(params)) == _reference(config)['num_params']


@pytest.mark.parametrize('config', sorted(REFERENCE_CONFIGS))
def test_params_map_one_to_one_onto_the_reference_state_dict(config):
  model = REFERENCE_CONFIGS[config]()
  ours = state_dict_shapes(config.split('_')[0], {'params': _abstract_params(model)})
  theirs = {k: (tuple(shape), dtype) for k, shape, dtype in _reference(config)['state_dict']}
  assert ours == theirs


# --- interface -------------------------------------------------------------------------------


@pytest.mark.parametrize('scale', SCALES)
@pytest.mark.parametrize('name', sorted(TINY))
def test_output_shape(name, scale):
  model = TINY[name](scale)
  assert model.size_multiple == 1 and type(model).supported_scales == SCALES
  x = jax.random.uniform(jax.random.PRNGKey(1), (2, 7, 9, 1))  # odd sides: padding k//2 must be exact
  y = _apply(model, _random_params(model, x), x)
  out_side = (7, 9) if model.upsampled_input else (7 * scale, 9 * scale)
  assert y.shape == (2, *out_side, 1) and y.dtype == jnp.float32


@pytest.mark.parametrize('name', sorted(TINY))
def test_unsupported_scale_raises_naming_model_and_scales(name):
  model = TINY[name](2).clone(scale=5)
  with pytest.raises(ValueError, match=rf'{type(model).__name__}.*\(2, 3, 4\)'):
    model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))


@pytest.mark.parametrize('scale', SCALES)
@pytest.mark.parametrize('name', sorted(TINY))
def test_l1_gradients_reach_every_parameter(name, scale):
  model = TINY[name](scale)
  x = jax.random.uniform(jax.random.PRNGKey(1), (2, 8, 8, 1))
  params = _random_params(model, x)
  target = jax.random.uniform(jax.random.PRNGKey(2), _apply(model, params, x).shape)
  grads = jax.grad(lambda p: jnp.mean(jnp.abs(model.apply({'params': p}, x) - target)))(params)
  dead = [
    jax.tree_util.keystr(path)
    for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]
    if not np.any(np.asarray(g) != 0)
  ]
  assert not dead


# --- structure, checked by hand -----------------------------------------------------------------


def test_srcnn_lr_multiplier_names_the_last_layer():
  model = SRCNN()
  x = jax.random.uniform(jax.random.PRNGKey(1), (1, 11, 11, 1))
  params = _random_params(model, x)
  assert set(srcnn_lib.LR_MULTIPLIERS) == {'reconstruction'} and srcnn_lib.LR_MULTIPLIERS['reconstruction'] == 0.1
  assert params['reconstruction']['kernel'].shape == (5, 5, 32, 1)
  # the reconstruction layer is the last one: with a zero kernel the output is its bias everywhere
  params['reconstruction'] = {'kernel': jnp.zeros((5, 5, 32, 1)), 'bias': jnp.array([0.25])}
  np.testing.assert_array_equal(model.apply({'params': params}, x), np.full((1, 11, 11, 1), 0.25))


def test_drrn_units_share_one_residual_unit_and_add_the_input():
  x = jax.random.normal(jax.random.PRNGKey(1), (1, 9, 9, 1))
  one = DRRN(num_units=1, features=8)
  seven = DRRN(num_units=7, features=8)
  params = _random_params(one, x)
  shapes = lambda p: jax.tree.map(lambda a: a.shape, p)  # noqa: E731
  assert shapes(params) == shapes(_random_params(seven, x))
  assert set(params['block_0']) == {'entry', 'residual_unit'}
  assert set(params['block_0']['residual_unit']) == {'conv_0', 'conv_1'}
  assert not np.allclose(one.apply({'params': params}, x), seven.apply({'params': params}, x))
  # global residual: a zero recon layer returns the input untouched
  params['recon'] = jax.tree.map(jnp.zeros_like, params['recon'])
  np.testing.assert_array_equal(seven.apply({'params': params}, x), x)


def test_edsr_with_res_scale_zero_makes_the_resblocks_identities():
  x = jax.random.uniform(jax.random.PRNGKey(1), (1, 6, 6, 1))
  gated = EDSR(scale=2, n_resblocks=3, n_feats=8, res_scale=0.0)
  params = _random_params(gated, x)
  without_blocks = {k: v for k, v in params.items() if not k.startswith('body_') or k == 'body_conv'}
  plain = EDSR(scale=2, n_resblocks=0, n_feats=8)
  np.testing.assert_allclose(gated.apply({'params': params}, x), plain.apply({'params': without_blocks}, x), atol=1e-6)
  # and with the default res_scale the blocks do contribute
  assert not np.allclose(
    gated.clone(res_scale=0.1).apply({'params': params}, x), plain.apply({'params': without_blocks}, x), atol=1e-6
  )


@pytest.mark.parametrize('scale', SCALES)
def test_rdn_dense_connectivity_and_upscale_shapes(scale):
  g0, g, c, d = 8, 4, 3, 2
  model = RDN(scale=scale, growth_rate0=g0, growth_rate=g, num_layers=c, num_blocks=d)
  params = _abstract_params(model)
  for block in range(d):
    for layer in range(c):
      assert params[f'rdb_{block}'][f'conv_{layer}']['kernel'].shape == (3, 3, g0 + layer * g, g)
    assert params[f'rdb_{block}']['lff']['kernel'].shape == (1, 1, g0 + c * g, g0)
  assert params['gff_0']['kernel'].shape == (1, 1, d * g0, g0)
  upscale = {k: v['kernel'].shape for k, v in params.items() if k.startswith('upscale')}
  if scale == 4:
    assert upscale == {'upscale_0': (3, 3, g0, 4 * g), 'upscale_2': (3, 3, g, 4 * g), 'upscale_4': (3, 3, g, 1)}
  else:
    assert upscale == {'upscale_0': (3, 3, g0, g * scale * scale), 'upscale_2': (3, 3, g, 1)}
