"""CASR in mrisr_jax.interop: the torch mirror and the export are the reference state_dict (buffers
included), the mirror computes the flax CASR in both modes, and the conversion round trips."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mrisr_jax import registry
from mrisr_jax.interop import convert
from mrisr_jax.models import swin

torch = pytest.importorskip('torch')
torch.set_num_threads(2)

from mrisr_jax.interop import torch_models  # noqa: E402  (needs torch)
from tests.helpers import REFERENCE_JSON  # noqa: E402  (the vendored contract: tests/data/README.md)

pytestmark = pytest.mark.unit

REFERENCE_CONFIGS = {
  'casr_x4': dict(scale=4),  # the seed defaults
  'casr_x2_small': dict(
    scale=2,
    growth_rate0=32,
    depth=2,
    growth_rate=16,
    rdb_depth=3,
    n_stb=2,
    embed_dim=24,
    patch_size=6,
    num_heads=2,
    window_size=4,
  ),
}
# 2 AFEBs, 2 STBs (one shifted); LR side 16 = 2 token windows per side, so the window reverse matters
TINY = dict(
  growth_rate0=8, depth=2, growth_rate=4, rdb_depth=2, n_stb=2, embed_dim=8, patch_size=2, num_heads=2, window_size=4
)
SIDE = 16


def _reference(name):
  with open(REFERENCE_JSON) as f:
    return json.load(f)[name]


def _model(**fields):
  cfg = ml_collections.ConfigDict({'name': 'casr', **fields})
  return registry.build_generator(cfg), cfg


def _abstract(model, side=24):
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, side, side, 1))))


def _random_variables(abstract, seed=0):
  """Non-trivial values for every leaf (numpy draws: cheaper than Module.init)."""
  rng = np.random.default_rng(seed)

  def draw(path, a):
    name = jax.tree_util.keystr(path)
    if 'kernel' in name:
      fan_in = int(np.prod(a.shape[-4:-1] if len(a.shape) >= 4 else a.shape[-2:-1]))
      return (rng.uniform(-1, 1, a.shape) / np.sqrt(fan_in)).astype(np.float32)
    if 'scale' in name:  # LayerNorm: away from 1, so an eps or order slip shows
      return rng.uniform(0.5, 1.5, a.shape).astype(np.float32)
    return (0.1 * rng.standard_normal(a.shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, abstract)


# --- (a) the reference contract --------------------------------------------------------------------


@pytest.mark.parametrize('config', sorted(REFERENCE_CONFIGS))
def test_torch_mirror_state_dict_is_the_reference(config):
  with torch.device('meta'):
    mirror = torch_models.build_torch_generator(
      ml_collections.ConfigDict({'name': 'casr', **REFERENCE_CONFIGS[config]})
    )
  ours = [[k, list(v.shape), str(v.dtype).removeprefix('torch.')] for k, v in mirror.state_dict().items()]
  reference = _reference(config)
  assert ours == reference['state_dict']
  assert sum(p.numel() for p in mirror.parameters()) == reference['num_params']


@pytest.mark.parametrize('config', sorted(REFERENCE_CONFIGS))
def test_exported_state_dict_is_the_reference_and_loads_strictly(config):
  model, cfg = _model(**REFERENCE_CONFIGS[config])
  abstract = _abstract(model)
  reference = _reference(config)['state_dict']
  theirs = {k: (tuple(shape), dtype) for k, shape, dtype in reference}
  assert convert.state_dict_shapes('casr', abstract) == theirs
  zeros = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), abstract)
  sd = convert.flax_to_state_dict('casr', zeros)
  assert [[k, list(v.shape), str(v.dtype)] for k, v in sd.items()] == reference  # order too
  with torch.device('meta'):
    mirror = torch_models.build_torch_generator(cfg)
  mirror.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True, assign=True)


def test_exported_buffers_are_the_reference_computation():
  model, _ = _model(**REFERENCE_CONFIGS['casr_x2_small'])
  zeros = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), _abstract(model))
  sd = convert.flax_to_state_dict('casr', zeros)
  np.testing.assert_array_equal(sd['SAB.transformers.0.attn.relative_position_index'], swin.relative_position_index(4))
  # sized for the 384 // scale pixel grid with window 4, shift 2: (192 / 4) ** 2 windows
  np.testing.assert_array_equal(sd['SAB.transformers.1.attn_mask'], swin.shifted_window_mask(192, 192, 4, 2))
  assert np.all(sd['AFEs.1.adaptive_high_pass.weight'] == 1)


# --- (b) forward parity ----------------------------------------------------------------------------

PARITY_CASES = [
  (2, False, False),
  (2, True, False),
  (3, False, False),
  (4, False, False),
  (4, True, False),
  (2, True, True),
]


@pytest.mark.parametrize(
  'scale,compat,norm_before',
  PARITY_CASES,
  ids=[f'x{s}-{"reference_compat" if c else "swin"}{"-norm_before" if n else ""}' for s, c, n in PARITY_CASES],
)
def test_casr_matches_its_torch_mirror(scale, compat, norm_before):
  fields = dict(scale=scale, norm_before=norm_before, **TINY)
  model, cfg = _model(reference_compat=compat, **fields)
  variables = _random_variables(_abstract(model, SIDE), seed=scale)
  x = np.random.default_rng(1).uniform(size=(2, SIDE, SIDE, 1)).astype(np.float32)
  ours = np.asarray(jax.jit(model.apply)(variables, jnp.asarray(x)))
  sd = {k: torch.from_numpy(v) for k, v in convert.flax_to_state_dict('casr', variables).items()}

  def mirror_output(cfg):
    mirror = torch_models.build_torch_generator(cfg).eval()
    mirror.load_state_dict(sd, strict=True)
    with torch.no_grad():
      return mirror(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()

  theirs = mirror_output(cfg)
  assert ours.shape == theirs.shape == (2, SIDE * scale, SIDE * scale, 1)
  np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4)
  # the other mode is measurably different, so the tolerance does tell the modes apart
  other = mirror_output(_model(reference_compat=not compat, **fields)[1])
  assert np.abs(other - ours).max() > 5e-4


# --- (c) round trip --------------------------------------------------------------------------------


def test_round_trip_is_bit_exact():
  model, _ = _model(scale=3, **TINY)
  abstract = _abstract(model, SIDE)
  variables = _random_variables(abstract, seed=4)
  sd = convert.flax_to_state_dict('casr', variables)
  back = convert.state_dict_to_flax('casr', {k: torch.from_numpy(v) for k, v in sd.items()}, abstract)
  ours, theirs = (
    {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(t)[0]} for t in (variables, back)
  )
  assert list(ours) == list(theirs)
  for k in ours:
    assert theirs[k].dtype == ours[k].dtype and theirs[k].shape == ours[k].shape, k
    np.testing.assert_array_equal(theirs[k], ours[k], err_msg=k)
  again = convert.flax_to_state_dict('casr', back)
  assert list(again) == list(sd)
  assert all(np.array_equal(again[k], sd[k]) and again[k].dtype == sd[k].dtype for k in sd)


# --- (d) strict import ----------------------------------------------------------------------------


def test_wrong_scale_checkpoint_names_the_keys():
  sd_x2 = convert.flax_to_state_dict('casr', _random_variables(_abstract(_model(scale=2, **TINY)[0], SIDE)))
  like_x4 = _abstract(_model(scale=4, **TINY)[0], SIDE)
  with pytest.raises(ValueError) as info:
    convert.state_dict_to_flax('casr', sd_x2, like_x4)
  assert str(info.value) == (
    'checkpoint does not fit casr: missing 1 keys (upscale.upscale.0.model.2.weight); '
    'shape mismatch 1 (SAB.transformers.1.attn_mask: file (2304, 16, 16), model (576, 16, 16))'
  )


def test_buffers_that_differ_from_the_reference_are_rejected():
  abstract = _abstract(_model(scale=2, **TINY)[0], SIDE)
  sd = convert.flax_to_state_dict('casr', _random_variables(abstract))
  sd['AFEs.0.adaptive_high_pass.weight'] = sd['AFEs.0.adaptive_high_pass.weight'] * 2
  sd['SAB.transformers.0.attn.relative_position_index'] = np.zeros((4, 4), np.int64)
  with pytest.raises(ValueError) as info:
    convert.state_dict_to_flax('casr', sd, abstract)
  assert str(info.value) == (
    'checkpoint does not fit casr: shape mismatch 1 (SAB.transformers.0.attn.relative_position_index: '
    'file (4, 4), model (16, 16)); buffer differs from the reference 1 (AFEs.0.adaptive_high_pass.weight)'
  )
