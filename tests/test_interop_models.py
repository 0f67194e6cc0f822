"""mrisr_jax.interop: the torch mirrors are the reference state_dicts, exported flax weights load into
them strictly and compute the same outputs, and the conversion round trips bit-exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mrisr_jax import registry
from mrisr_jax.interop import convert

torch = pytest.importorskip('torch')
torch.set_num_threads(2)

from mrisr_jax.interop import torch_models  # noqa: E402  (needs torch)
from tests.helpers import REFERENCE_JSON  # noqa: E402  (the vendored contract: tests/data/README.md)
from tests.helpers import random_variables as _random_variables

pytestmark = pytest.mark.unit

# Reference JSON configuration -> (converter name, config fields). Building the torch mirrors on the
# meta device and the flax variables with eval_shape costs no memory, even for the 43M-param EDSR.
REFERENCE_CONFIGS = {
  'srcnn': ('srcnn', {}),
  'drrn': ('drrn', {}),
  'edsr_x4': ('edsr', dict(scale=4)),
  'edsr_x3_baseline': ('edsr', dict(scale=3, n_resblocks=16, n_feats=64)),
  'rdn_x4': ('rdn', dict(scale=4)),
  'rdn_x2': ('rdn', dict(scale=2)),
  'discriminator': ('casrgan_d', {}),
}

TINY = {
  'srcnn': {},
  'drrn': dict(num_recursive_blocks=2, num_units=3, features=8),
  'edsr': dict(n_resblocks=2, n_feats=8),
  'rdn': dict(growth_rate0=8, growth_rate=4, num_layers=2, num_blocks=2),
}
# scales 2 and 3 everywhere; x4 as well where it changes the upsampler's structure
PARITY_CASES = [
  ('srcnn', 2),
  ('srcnn', 3),
  ('drrn', 2),
  ('drrn', 3),
  *[('edsr', s) for s in (2, 3, 4)],
  *[('rdn', s) for s in (2, 3, 4)],
]


def _reference(name):
  with open(REFERENCE_JSON) as f:
    return json.load(f)[name]


def _config(name, fields):
  """(flax module, torch mirror) from one ml_collections config, through both factories."""
  if name == 'casrgan_d':
    config = ml_collections.ConfigDict(
      {'model': {'name': 'srcnn', 'dtype': 'float32'}, 'discriminator': {'name': name, **fields}}
    )
    with torch.device('meta'):
      mirror = torch_models.build_torch_discriminator(config)
    return registry.build_discriminator(config), mirror, config
  config = ml_collections.ConfigDict({'name': name, **fields})
  return registry.build_generator(config), None, config


def _abstract_variables(name, model, side=16):
  x = jnp.zeros((1, side, side, 1))
  init = (
    (lambda: model.init(jax.random.PRNGKey(0), x, False))
    if name == 'casrgan_d'
    else (lambda: model.init(jax.random.PRNGKey(0), x))
  )
  return jax.eval_shape(init)


# --- (a) the reference contract --------------------------------------------------------------------


@pytest.mark.parametrize('config', sorted(REFERENCE_CONFIGS))
def test_torch_mirror_state_dict_is_the_reference(config):
  name, fields = REFERENCE_CONFIGS[config]
  if name == 'casrgan_d':
    _, mirror, _ = _config(name, fields)
  else:
    with torch.device('meta'):
      mirror = torch_models.build_torch_generator(ml_collections.ConfigDict({'name': name, **fields}))
  ours = [[k, list(v.shape), str(v.dtype).removeprefix('torch.')] for k, v in mirror.state_dict().items()]
  assert ours == _reference(config)['state_dict']


@pytest.mark.parametrize('config', sorted(REFERENCE_CONFIGS))
def test_exported_state_dict_is_the_reference_and_loads_strictly(config):
  name, fields = REFERENCE_CONFIGS[config]
  model, _, cfg = _config(name, fields)
  abstract = _abstract_variables(name, model)
  theirs = {k: (tuple(shape), dtype) for k, shape, dtype in _reference(config)['state_dict']}
  assert convert.state_dict_shapes(name, abstract) == theirs
  zeros = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), abstract)
  sd = convert.flax_to_state_dict(name, zeros)
  assert {k: (v.shape, str(v.dtype)) for k, v in sd.items()} == theirs
  with torch.device('meta'):
    mirror = (
      torch_models.build_torch_discriminator(cfg) if name == 'casrgan_d' else torch_models.build_torch_generator(cfg)
    )
  mirror.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True, assign=True)


# --- (b) forward parity ----------------------------------------------------------------------------


@pytest.mark.parametrize('name,scale', PARITY_CASES, ids=[f'{n}-x{s}' for n, s in PARITY_CASES])
def test_generator_matches_its_torch_mirror(name, scale):
  cfg = ml_collections.ConfigDict({'name': name, 'scale': scale, **TINY[name]})
  model = registry.build_generator(cfg)
  variables = _random_variables(_abstract_variables(name, model))
  x = np.random.default_rng(1).normal(0.5, 0.5, size=(2, 16, 16, 1)).astype(np.float32)
  ours = np.asarray(model.apply(variables, jnp.asarray(x)))
  mirror = torch_models.build_torch_generator(cfg).eval()
  sd = convert.flax_to_state_dict(name, variables)
  mirror.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
  with torch.no_grad():
    theirs = mirror(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
  assert ours.shape == theirs.shape
  np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)


def test_discriminator_matches_its_torch_mirror_in_eval_mode():
  config = ml_collections.ConfigDict(
    {'model': {'name': 'srcnn', 'dtype': 'float32'}, 'discriminator': {'name': 'casrgan_d'}}
  )
  model = registry.build_discriminator(config)
  abstract = _abstract_variables('casrgan_d', model)
  # random BN statistics too, so that eval mode really reads the converted running stats
  exported = convert.flax_to_state_dict('casrgan_d', _random_variables(abstract, seed=3))
  mirror = torch_models.build_torch_discriminator(config).eval()
  mirror.load_state_dict({k: torch.from_numpy(v) for k, v in exported.items()}, strict=True)
  variables = convert.state_dict_to_flax('casrgan_d', mirror.state_dict(), abstract)
  x = np.random.default_rng(2).standard_normal((2, 16, 16, 1)).astype(np.float32)
  with torch.no_grad():
    theirs = mirror.logits(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
  ours = np.asarray(model.apply(variables, jnp.asarray(x), False))
  assert ours.shape == theirs.shape == (2,)
  np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4)


# --- (c) round trip --------------------------------------------------------------------------------


@pytest.mark.parametrize('name', [*sorted(TINY), 'casrgan_d'])
def test_round_trip_is_bit_exact(name):
  fields = {} if name == 'casrgan_d' else dict(scale=3, **TINY[name])
  model, _, _ = _config(name, fields)
  abstract = _abstract_variables(name, model)
  variables = _random_variables(abstract, seed=4)
  sd = convert.flax_to_state_dict(name, variables)
  back = convert.state_dict_to_flax(name, {k: torch.from_numpy(v) for k, v in sd.items()}, abstract)
  ours, theirs = (
    {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(t)[0]} for t in (variables, back)
  )
  assert list(ours) == list(theirs)
  for k in ours:
    assert theirs[k].dtype == ours[k].dtype, k
    np.testing.assert_array_equal(theirs[k], ours[k], err_msg=k)
  again = convert.flax_to_state_dict(name, back)
  assert all(np.array_equal(again[k], sd[k]) and again[k].dtype == sd[k].dtype for k in sd)


# --- (d) strict import ----------------------------------------------------------------------------


def _checkpoint(name, scale):
  model = registry.build_generator(ml_collections.ConfigDict({'name': name, 'scale': scale, **TINY[name]}))
  abstract = _abstract_variables(name, model)
  return convert.flax_to_state_dict(name, _random_variables(abstract)), abstract


def test_wrong_scale_checkpoint_names_missing_unexpected_and_mismatched_keys():
  sd_x3, _ = _checkpoint('edsr', 3)
  _, like_x4 = _checkpoint('edsr', 4)
  sd_x3['foo'] = np.zeros(1, np.float32)
  with pytest.raises(ValueError) as info:
    convert.state_dict_to_flax('edsr', sd_x3, like_x4)
  msg = str(info.value)
  assert '\n' not in msg
  assert msg == (
    'checkpoint does not fit edsr: missing 1 keys (model_3.0.model.2.weight); '
    'unexpected 1 (foo); shape mismatch 1 (model_3.0.model.0.weight: file (72, 8, 3, 3), '
    'model (32, 8, 3, 3))'
  )

  sd_x4, _ = _checkpoint('rdn', 4)
  _, like_x2 = _checkpoint('rdn', 2)
  with pytest.raises(ValueError) as info:
    convert.state_dict_to_flax('rdn', sd_x4, like_x2)
  assert str(info.value) == (
    'checkpoint does not fit rdn: unexpected 2 (upscale.4.bias, upscale.4.weight); '
    'shape mismatch 2 (upscale.2.bias: file (16,), model (1,), '
    'upscale.2.weight: file (16, 4, 3, 3), model (1, 4, 3, 3))'
  )


def test_unknown_names_raise_listing_the_supported_ones():
  with pytest.raises(
    ValueError,
    match=r"'nope'.*supported: casr, drrn, edsr, fagan, perceptual_sr, rdn, "
    r'srcnn, srdcgan, transmrsr$',
  ):
    torch_models.build_torch_generator(ml_collections.ConfigDict({'name': 'nope'}))
  config = ml_collections.ConfigDict({'model': {'dtype': 'float32'}, 'discriminator': {'name': 'nope'}})
  with pytest.raises(ValueError, match=r"'nope'.*supported: casrgan_d, fagan_sn_d, srdcgan_d$"):
    torch_models.build_torch_discriminator(config)
  with pytest.raises(
    ValueError,
    match=r"'nope'.*supported: srcnn, drrn, edsr, rdn, casr, casrgan_d, fagan, "
    r'fagan_sn_d, srdcgan, srdcgan_d, perceptual_sr, transmrsr, styleswin_g, styleswin_synthesis, styleswin_d$',
  ):
    convert.flax_to_state_dict('nope', {'params': {}})


@pytest.mark.integration  # subprocess
def test_interop_package_and_converters_import_without_torch():
  code = (
    "import sys; sys.modules['torch'] = None; import mrisr_jax.interop, mrisr_jax.interop.convert; "
    "assert 'jax' not in sys.modules, 'convert pulls in jax'"
  )
  subprocess.run([sys.executable, '-c', code], check=True, cwd=os.path.dirname(os.path.dirname(__file__)))
