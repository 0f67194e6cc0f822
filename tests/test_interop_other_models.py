"""mrisr_jax.interop for FA-GAN, SR-DCGAN and PerceptualSRNet: the exported state_dict is exactly the torch
mirror's, loads into it strictly, computes the same outputs (BatchNorm in both modes, spectral norm in
both of torch's modes), and converts back bit-exactly; a checkpoint that does not fit says why.

Tiny configs; variables from `jax.eval_shape` + numpy draws, applies jitted (un-jitted `init` and
eager applies compile op by op, slowly)."""

from __future__ import annotations

import functools

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
from tests.helpers import random_variables as _random_variables

pytestmark = pytest.mark.unit

TINY_D = (4, 4, 8, 8, 8, 8)
# id -> (registry name, fields, NHWC input shape); discriminator names end in '_d'
CASES = {
  'fagan-lr-weighted': ('fagan', dict(scale=2, n_feats=8, n_lffb=1, kernel_sizes=(3, 5), reduction=2), (2, 6, 6, 1)),
  'fagan-hr-direct': (
    'fagan',
    dict(
      scale=4,
      n_feats=8,
      n_lffb=2,
      kernel_sizes=(3,),
      reduction=4,
      attention_at='hr',
      connection='direct',
      alpha=0.3,
      beta=0.9,
    ),
    (2, 4, 4, 1),
  ),
  'fagan-x8': ('fagan', dict(scale=8, n_feats=8, n_lffb=1, kernel_sizes=(3,), reduction=2), (1, 3, 3, 1)),
  'srdcgan': ('srdcgan', dict(features=8), (2, 8, 8, 1)),
  'perceptual_sr-transposed': ('perceptual_sr', dict(scale=4, features=8, num_resblocks=2), (2, 6, 6, 1)),
  'perceptual_sr-nearest': (
    'perceptual_sr',
    dict(scale=2, features=8, num_resblocks=1, upsample='nearest'),
    (2, 6, 6, 1),
  ),
  'srdcgan_d': ('srdcgan_d', dict(features=TINY_D), (2, 32, 32, 1)),
  'fagan_sn_d': ('fagan_sn_d', dict(base_features=4), (2, 16, 16, 1)),
}
BN_CASES = ['srdcgan', 'perceptual_sr-transposed', 'perceptual_sr-nearest', 'srdcgan_d']


def _is_d(name):
  return name.endswith('_d')


def _build(case):
  """(registry name, flax module, torch mirror, input)."""
  name, fields, shape = CASES[case]
  if _is_d(name):
    config = ml_collections.ConfigDict(
      {'model': {'name': 'srcnn', 'dtype': 'float32'}, 'discriminator': {'name': name, **fields}}
    )
    model = registry.build_discriminator(config)
    if name == 'srdcgan_d':  # the dense layer's size follows the image, not a flax field
      mirror = torch_models.TorchSRDCGANDiscriminator(features=TINY_D, image_size=shape[1:3])
    else:
      mirror = torch_models.build_torch_discriminator(config)
  else:
    config = ml_collections.ConfigDict({'name': name, **fields})
    model, mirror = registry.build_generator(config), torch_models.build_torch_generator(config)
  x = np.random.default_rng(1).uniform(0, 1, size=shape).astype(np.float32)
  return name, model, mirror, x


def _args(name, train=False):
  return (train,) if _is_d(name) or train else ()


def _abstract(name, model, x):
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.asarray(x), *_args(name)))


@functools.cache
def _apply(case, train):
  """The jitted apply, compiled once per case and mode for the whole file."""
  name, model, _, _ = _build(case)
  if train:
    return jax.jit(lambda v, x: model.apply(v, x, True, mutable=['batch_stats']))
  return jax.jit(lambda v, x: model.apply(v, x, *_args(name)))


def _torch_forward(mirror, x):
  with torch.no_grad():
    y = mirror(torch.from_numpy(x).permute(0, 3, 1, 2))
  return (y.permute(0, 2, 3, 1) if y.ndim == 4 else y).numpy()


def _load(mirror, sd):
  mirror.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
  return mirror


def _flat(tree):
  return {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _converged_sn(name, variables):
  """The SN `u` replaced by each weight's top left singular vector: the state training converges to."""
  sd = convert.flax_to_state_dict(name, variables)
  stats = jax.tree.map(np.array, variables['batch_stats'])
  for key, value in sd.items():
    if key.endswith('.weight_orig'):
      u = np.linalg.svd(value.reshape(value.shape[0], -1).astype(np.float64), full_matrices=False)[0][:, 0]
      module = convert.key_map(name, variables)[key][0][1]
      stats[f'sn_{module}'][f'{module}/kernel/u'] = u[None].astype(np.float32)
  return {**variables, 'batch_stats': stats}


# --- the layout -------------------------------------------------------------------------------------


@pytest.mark.parametrize('case', sorted(CASES))
def test_exported_state_dict_is_the_mirrors_and_loads_strictly(case):
  name, model, mirror, x = _build(case)
  abstract = _abstract(name, model, x)
  ours = {k: (tuple(v.shape), str(v.dtype).removeprefix('torch.')) for k, v in mirror.state_dict().items()}
  shapes = convert.state_dict_shapes(name, abstract)
  assert list(shapes.items()) == list(ours.items())  # keys, order, shapes and dtypes
  sd = convert.flax_to_state_dict(name, _random_variables(abstract))
  assert list(sd) == list(ours) and {k: (v.shape, str(v.dtype)) for k, v in sd.items()} == ours
  _load(mirror, sd)


def test_factory_mirrors_take_the_flax_fields_and_the_seed_image_size():
  config = ml_collections.ConfigDict(
    {'model': {'name': 'srcnn', 'dtype': 'float32'}, 'discriminator': {'name': 'srdcgan_d'}}
  )
  with torch.device('meta'):
    mirror = torch_models.build_torch_discriminator(config)
  assert mirror.dense.weight.shape == (1, 256 * 15 * 16)
  g = torch_models.build_torch_generator(
    ml_collections.ConfigDict({'name': 'fagan', 'scale': 8, 'n_feats': 4, 'n_lffb': 3, 'attention_at': 'hr'})
  )
  assert (len(g.upsample), len(g.lffbs), g.attention_at) == (3, 3, 'hr')
  d = torch_models.build_torch_discriminator(
    ml_collections.ConfigDict(
      {
        'model': {'dtype': 'float32'},
        'discriminator': {'name': 'fagan_sn_d', 'base_features': 2, 'power_iterations': 3},
      }
    )
  )
  assert d.convs[0].weight_orig.shape == (2, 1, 3, 3) and len(d.convs) == 8
  assert d.convs[0]._forward_pre_hooks[next(iter(d.convs[0]._forward_pre_hooks))].n_power_iterations == 3


def test_srdcgan_transposed_layers_match_the_model():
  from mrisr_jax.models.srdcgan import TRANSPOSED_LAYERS

  assert convert.SRDCGAN_TRANSPOSED == TRANSPOSED_LAYERS


def _docstring_rule(variables, transposed_modules=()):
  """flax variables -> state_dict by the models' docstring tables: path joined by '.', kernel -> weight
  (conv (3,2,0,1), transposed conv (2,3,0,1), dense (1,0)), scale -> weight, mean -> running_mean,
  var -> running_var, num_batches_tracked as int64."""
  leaf_names = {'scale': 'weight', 'mean': 'running_mean', 'var': 'running_var'}
  out = {}
  for coll in ('params', 'batch_stats'):
    for path, v in jax.tree_util.tree_flatten_with_path(variables[coll])[0]:
      names = [p.key for p in path]
      module, leaf, v = '.'.join(names[:-1]), names[-1], np.asarray(v)
      if leaf == 'kernel':
        v = (
          v.T
          if v.ndim == 2
          else v.transpose((2, 3, 0, 1) if module.split('.')[-1] in transposed_modules else (3, 2, 0, 1))
        )
        leaf = 'weight'
      if leaf == 'num_batches_tracked':
        v = v.astype(np.int64)
      out[f'{module}.{leaf_names.get(leaf, leaf)}'] = v
  return out


@pytest.mark.parametrize('case', BN_CASES)
def test_layout_is_the_models_docstring_table(case):
  """The key tables of models.srdcgan / perceptual_sr (formerly checked by ports in their tests)."""
  name, model, _, x = _build(case)
  variables = _random_variables(_abstract(name, model, x))
  want = _docstring_rule(variables, {'srdcgan': ('conv3', 'conv6'), 'srdcgan_d': ()}.get(name, ('deconv',)))
  got = convert.flax_to_state_dict(name, variables)
  assert sorted(got) == sorted(want)
  for k in got:
    assert got[k].dtype == want[k].dtype, k
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)


# --- forward parity --------------------------------------------------------------------------------


@pytest.mark.parametrize('case', [c for c in sorted(CASES) if c != 'fagan_sn_d'])
def test_matches_its_torch_mirror_in_eval_mode(case):
  name, model, mirror, x = _build(case)
  variables = _random_variables(_abstract(name, model, x), seed=2)
  if name == 'srdcgan':  # spread the output over the tanh range, as the former port test did
    variables['params']['conv8']['kernel'] = variables['params']['conv8']['kernel'] * 20
  _load(mirror.eval(), convert.flax_to_state_dict(name, variables))
  theirs = _torch_forward(mirror, x)
  apply = _apply(case, False)
  with jax.default_matmul_precision('highest'):
    ours = np.asarray(apply(variables, x))
  assert ours.shape == theirs.shape
  if name == 'srdcgan':  # tanh not saturated
    assert 0.01 < float(np.std(ours)) and 0.0 < float(ours.min()) and float(ours.max()) < 1.0
  if name == 'fagan':  # the attention branches do something
    assert not np.allclose(
      ours,
      apply({'params': {**variables['params'], 'gffb': jax.tree.map(np.zeros_like, variables['params']['gffb'])}}, x),
      atol=1e-3,
    )
  np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)


@pytest.mark.parametrize('case', BN_CASES)
def test_matches_its_torch_mirror_in_train_mode_and_updates_the_same_statistics(case):
  name, model, mirror, x = _build(case)
  abstract = _abstract(name, model, x)
  variables = _random_variables(abstract, seed=3)
  _load(mirror.train(), convert.flax_to_state_dict(name, variables))
  theirs = _torch_forward(mirror, x)
  with jax.default_matmul_precision('highest'):
    ours, updates = _apply(case, True)(variables, x)
  np.testing.assert_allclose(np.asarray(ours), theirs, rtol=0, atol=1e-4)
  after = _flat(convert.state_dict_to_flax(name, mirror.state_dict(), abstract)['batch_stats'])
  for k, v in _flat(updates['batch_stats']).items():
    if k.endswith("['num_batches_tracked']"):
      assert int(v) == int(after[k]) == int(_flat(variables['batch_stats'])[k]) + 1, k
    else:
      np.testing.assert_allclose(np.asarray(v), after[k], rtol=1e-5, atol=1e-5, err_msg=k)


def test_spectral_norm_discriminator_matches_its_mirror_in_both_torch_modes():
  name, model, mirror, x = _build(case := 'fagan_sn_d')
  abstract = _abstract(name, model, x)
  variables = _random_variables(abstract, seed=4)
  # any u: torch's train mode runs the same power iteration from u as flax's eval and train modes,
  # and leaves the u and sigma (through weight_v) that flax's train mode stores
  _load(mirror.train(), convert.flax_to_state_dict(name, variables))
  theirs = _torch_forward(mirror, x)
  apply = _apply(case, False)
  with jax.default_matmul_precision('highest'):
    ours_eval = np.asarray(apply(variables, x))
    ours, updates = _apply(case, True)(variables, x)
  np.testing.assert_allclose(ours_eval, theirs, rtol=0, atol=1e-4)
  np.testing.assert_allclose(np.asarray(ours), theirs, rtol=0, atol=1e-4)
  after = _flat(convert.state_dict_to_flax(name, mirror.state_dict(), abstract)['batch_stats'])
  for k, v in _flat(updates['batch_stats']).items():
    np.testing.assert_allclose(np.asarray(v), after[k], rtol=1e-5, atol=1e-6, err_msg=k)
  # torch's eval mode divides by the stored u . W v, flax's eval iterates: equal once u has converged
  converged = _converged_sn(name, variables)
  _load(mirror.eval(), convert.flax_to_state_dict(name, converged))
  with jax.default_matmul_precision('highest'):
    ours = np.asarray(apply(converged, x))
  np.testing.assert_allclose(ours, _torch_forward(mirror, x), rtol=0, atol=1e-4)
  assert not np.allclose(ours, ours_eval, atol=1e-3)  # the converged u is a different state


# --- round trip ------------------------------------------------------------------------------------


@pytest.mark.parametrize('case', sorted(CASES))
def test_round_trip_is_bit_exact(case):
  name, model, _, x = _build(case)
  abstract = _abstract(name, model, x)
  variables = _random_variables(abstract, seed=5)
  sd = convert.flax_to_state_dict(name, variables)
  back = convert.state_dict_to_flax(name, {k: torch.from_numpy(v) for k, v in sd.items()}, abstract)
  ours, theirs = _flat(variables), _flat(back)
  assert list(ours) == list(theirs)
  for k in ours:
    assert theirs[k].dtype == ours[k].dtype, k
    if k.endswith("/kernel/sigma']"):  # recomputed as torch's eval sigma, u . W v
      continue
    np.testing.assert_array_equal(theirs[k], ours[k], err_msg=k)
  again = convert.flax_to_state_dict(name, back)
  assert all(np.array_equal(again[k], sd[k]) and again[k].dtype == sd[k].dtype for k in sd)


def test_spectral_norm_u_and_sigma_survive_and_weight_v_is_normalised_wt_u():
  name, model, _, x = _build(case := 'fagan_sn_d')
  abstract = _abstract(name, model, x)
  # a flax train step from a converged u: stored u and sigma as training leaves them
  _, updates = _apply(case, True)(_converged_sn(name, _random_variables(abstract, seed=6)), x)
  variables = {
    'params': _random_variables(abstract, seed=6)['params'],
    'batch_stats': jax.tree.map(np.asarray, updates['batch_stats']),
  }
  sd = convert.flax_to_state_dict(name, variables)
  back = convert.state_dict_to_flax(name, sd, abstract)
  for m in [k.removesuffix('.weight_orig') for k in sd if k.endswith('.weight_orig')]:
    w = torch.from_numpy(sd[f'{m}.weight_orig'])
    u, v = torch.from_numpy(sd[f'{m}.weight_u']), torch.from_numpy(sd[f'{m}.weight_v'])
    want_v = torch.nn.functional.normalize(w.reshape(w.shape[0], -1).T @ u, dim=0)
    np.testing.assert_allclose(v.numpy(), want_v.numpy(), rtol=1e-5, atol=1e-6, err_msg=m)
    assert abs(float(v.norm()) - 1) < 1e-5
  ours, theirs = _flat(variables), _flat(back)
  for k in ours:
    if k.endswith("/kernel/sigma']"):
      np.testing.assert_allclose(theirs[k], ours[k], rtol=1e-5, err_msg=k)
    else:
      np.testing.assert_array_equal(theirs[k], ours[k], err_msg=k)


# --- strict import ---------------------------------------------------------------------------------


def _checkpoint(case, **fields):
  name, base, shape = CASES[case]
  config = ml_collections.ConfigDict({'name': name, **{**base, **fields}})
  model = registry.build_generator(config)
  abstract = _abstract(name, model, np.zeros(shape, np.float32))
  return convert.flax_to_state_dict(name, _random_variables(abstract)), abstract


def test_mismatched_checkpoints_name_missing_unexpected_and_mismatched_keys():
  sd, _ = _checkpoint('perceptual_sr-nearest')
  _, like = _checkpoint('perceptual_sr-nearest', upsample='transposed', features=4)
  with pytest.raises(ValueError) as info:
    convert.state_dict_to_flax('perceptual_sr', sd, like)
  msg = str(info.value)
  assert '\n' not in msg
  assert msg.startswith(
    'checkpoint does not fit perceptual_sr: missing 1 keys (up_0.deconv.weight); '
    'unexpected 1 (up_0.conv.weight); shape mismatch 20 (conv_in.weight: file '
    '(8, 1, 9, 9), model (4, 1, 9, 9), bn_in.weight: file (8,), model (4,), '
  )

  sd, _ = _checkpoint('fagan-lr-weighted')
  _, like = _checkpoint('fagan-lr-weighted', scale=4)
  with pytest.raises(ValueError) as info:
    convert.state_dict_to_flax('fagan', sd, like)
  assert str(info.value) == (
    'checkpoint does not fit fagan: missing 3 keys (upsample.1.0.weight, upsample.1.0.bias, upsample.1.2.weight)'
  )

  name, model, _, x = _build('fagan_sn_d')
  abstract = _abstract(name, model, x)
  sd = convert.flax_to_state_dict(name, _random_variables(abstract))
  del sd['dense.1.weight_v']
  sd['convs.0.weight'] = sd.pop('convs.0.weight_orig')  # a checkpoint saved without spectral norm
  with pytest.raises(ValueError) as info:
    convert.state_dict_to_flax(name, sd, abstract)
  assert str(info.value) == (
    'checkpoint does not fit fagan_sn_d: missing 2 keys (convs.0.weight_orig, '
    'dense.1.weight_v); unexpected 1 (convs.0.weight)'
  )
