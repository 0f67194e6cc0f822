"""CASRGAN discriminator and TorchBatchNorm: parity with a PyTorch mirror of the reference."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrisr_jax.models.discriminator import (
  CASRGANDiscriminator,
  NUM_PARAMS,
  from_torch_state_dict,
  to_torch_state_dict,
  torch_key_map,
)
from mrisr_jax.models.norm import TorchBatchNorm

torch = pytest.importorskip('torch')
tnn = torch.nn
torch.set_num_threads(2)

from mrisr_jax.interop.torch_models import TorchGANDiscriminator  # noqa: E402  (needs torch)
from tests.helpers import REFERENCE_JSON  # noqa: E402  (the vendored contract: tests/data/README.md)

pytestmark = pytest.mark.unit


def _expected_state_dict():
  """The `discriminator` entry of reference_state_dicts.json: (key, shape, dtype) in order."""
  out = [('conv1.0.weight', (64, 1, 3, 3), 'float32'), ('conv1.0.bias', (64,), 'float32')]
  cin = 64
  for i, (cout, _) in enumerate([(64, 2), (128, 1), (128, 2), (256, 1), (256, 2), (512, 1), (512, 2)]):
    t = f'down.{i}.layer'
    out += [
      (f'{t}.0.weight', (cout, cin, 3, 3), 'float32'),
      (f'{t}.0.bias', (cout,), 'float32'),
      (f'{t}.1.weight', (cout,), 'float32'),
      (f'{t}.1.bias', (cout,), 'float32'),
      (f'{t}.1.running_mean', (cout,), 'float32'),
      (f'{t}.1.running_var', (cout,), 'float32'),
      (f'{t}.1.num_batches_tracked', (), 'int64'),
    ]
    cin = cout
  out += [
    ('dense.1.weight', (1024, 512, 1, 1), 'float32'),
    ('dense.1.bias', (1024,), 'float32'),
    ('dense.3.weight', (1, 1024, 1, 1), 'float32'),
    ('dense.3.bias', (1,), 'float32'),
  ]
  return out


EXPECTED = _expected_state_dict()


def _randomise_bn(model: tnn.Module, seed: int):
  """Non-trivial affine params and running stats, so the key map is really exercised."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, tnn.BatchNorm2d):
        c = m.num_features
        m.weight.copy_(1 + 0.2 * torch.randn(c, generator=g))
        m.bias.copy_(0.1 * torch.randn(c, generator=g))
        m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
        m.running_var.copy_(0.5 + torch.rand(c, generator=g))
        m.num_batches_tracked.fill_(7)


def _sd_numpy(model):
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


@pytest.fixture(scope='module')
def pair():
  torch.manual_seed(0)
  tm = TorchGANDiscriminator()
  _randomise_bn(tm, 1)
  variables = from_torch_state_dict(tm.state_dict())
  return tm, variables


def test_param_count_and_shapes():
  model = CASRGANDiscriminator()
  variables = jax.eval_shape(
    lambda k, x: model.init(k, x, False), jax.random.PRNGKey(0), jnp.zeros((2, 32, 32, 1), jnp.float32)
  )
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables['params']))
  assert n == NUM_PARAMS == 5_214_273
  assert set(variables) == {'params', 'batch_stats'}
  real = model.init(jax.random.PRNGKey(0), jnp.zeros((2, 32, 32, 1), jnp.float32), False)
  logits = model.apply(real, jnp.ones((3, 32, 32, 1)), False)
  assert logits.shape == (3,) and logits.dtype == jnp.float32
  probs = model.apply(real, jnp.ones((3, 32, 32, 1)), False, method='probs')
  np.testing.assert_allclose(probs, jax.nn.sigmoid(logits), rtol=1e-6)
  # init must not count as a training step
  assert int(real['batch_stats']['down_0']['bn']['num_batches_tracked']) == 0


def test_key_map_matches_reference_contract():
  km = torch_key_map()
  assert list(km) == [k for k, _, _ in EXPECTED]
  with open(REFERENCE_JSON) as f:  # the embedded list is a copy of the contract
    ref = json.load(f)['discriminator']
  assert [(k, tuple(s), d) for k, s, d in ref['state_dict']] == EXPECTED
  assert ref['num_params'] == NUM_PARAMS
  tm = TorchGANDiscriminator()
  got = [(k, tuple(v.shape), str(v.dtype).replace('torch.', '')) for k, v in tm.state_dict().items()]
  assert got == EXPECTED
  assert sum(p.numel() for p in tm.parameters()) == NUM_PARAMS
  # every flax variable is mapped exactly once, with the transformed shape
  variables = jax.eval_shape(
    lambda k, x: CASRGANDiscriminator().init(k, x, False), jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 1))
  )
  flat = {
    ('params',) + tuple(p.key for p in path) for path, _ in jax.tree_util.tree_flatten_with_path(variables['params'])[0]
  }
  flat |= {
    ('batch_stats',) + tuple(p.key for p in path)
    for path, _ in jax.tree_util.tree_flatten_with_path(variables['batch_stats'])[0]
  }
  assert {spec.path for spec in km.values()} == flat
  for k, shape, _ in EXPECTED:
    spec = km[k]
    leaf = variables
    for p in spec.path:
      leaf = leaf[p]
    want = tuple(shape[i] for i in (2, 3, 1, 0)) if spec.transform == 'conv' else shape
    assert tuple(leaf.shape) == want, k


def test_state_dict_round_trip(pair):
  tm, variables = pair
  back = to_torch_state_dict(variables)
  ref = _sd_numpy(tm)
  assert list(back) == list(ref)
  for k in ref:
    assert back[k].dtype == ref[k].dtype, k
    np.testing.assert_array_equal(back[k], ref[k], err_msg=k)
  # strict load into the torch mirror
  tm2 = TorchGANDiscriminator()
  tm2.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()}, strict=True)
  with pytest.raises(ValueError, match='missing'):
    bad = dict(tm.state_dict())
    del bad['dense.3.bias']
    from_torch_state_dict(bad)


def test_forward_parity_eval_and_train(pair):
  tm, variables = pair
  model = CASRGANDiscriminator()
  x = np.random.default_rng(0).standard_normal((4, 1, 32, 32)).astype(np.float32)
  xj = jnp.asarray(x.transpose(0, 2, 3, 1))

  tm.eval()
  with torch.no_grad():
    t_logits = tm.logits(torch.from_numpy(x)).numpy()
    t_probs = tm(torch.from_numpy(x)).reshape(-1).numpy()
  j_logits = jax.jit(lambda v, x: model.apply(v, x, False))(variables, xj)
  np.testing.assert_allclose(np.asarray(jax.nn.sigmoid(j_logits)), t_probs, atol=1e-4)
  np.testing.assert_allclose(np.asarray(j_logits), t_logits, atol=1e-4, rtol=1e-4)

  # training mode (batch statistics), one step
  tm_train = TorchGANDiscriminator()
  tm_train.load_state_dict(tm.state_dict())
  tm_train.train()
  with torch.no_grad():
    t_logits = tm_train.logits(torch.from_numpy(x)).numpy()
  j_logits, _ = model.apply(variables, xj, True, mutable=['batch_stats'])
  scale = max(1.0, float(np.abs(t_logits).max()))
  np.testing.assert_allclose(np.asarray(j_logits), t_logits, atol=1e-4 * scale)
  np.testing.assert_allclose(
    np.asarray(jax.nn.sigmoid(j_logits)), torch.sigmoid(torch.from_numpy(t_logits)).numpy(), atol=1e-4
  )


def test_running_stats_after_three_training_steps(pair):
  tm0, variables = pair
  tm = TorchGANDiscriminator()
  tm.load_state_dict(tm0.state_dict())
  model = CASRGANDiscriminator()
  step = jax.jit(lambda v, x: model.apply(v, x, True, mutable=['batch_stats']))
  rng = np.random.default_rng(1)
  tm.train()
  for i in range(3):
    x = (rng.standard_normal((4, 1, 32, 32)) * (1 + i) + 0.3 * i).astype(np.float32)
    with torch.no_grad():
      t_logits = tm.logits(torch.from_numpy(x)).numpy()
    j_logits, upd = step(variables, jnp.asarray(x.transpose(0, 2, 3, 1)))
    variables = {'params': variables['params'], 'batch_stats': upd['batch_stats']}
    np.testing.assert_allclose(np.asarray(j_logits), t_logits, atol=1e-4)

  got = to_torch_state_dict(variables)
  ref = _sd_numpy(tm)
  for k in ref:
    if k.endswith('num_batches_tracked'):
      assert int(got[k]) == int(ref[k]) == 10, k
    elif 'running' in k:
      np.testing.assert_allclose(got[k], ref[k], atol=1e-5, rtol=1e-5, err_msg=k)

  tm.eval()
  x = rng.standard_normal((4, 1, 32, 32)).astype(np.float32)
  with torch.no_grad():
    t_probs = tm(torch.from_numpy(x)).reshape(-1).numpy()
  j_probs = model.apply(variables, jnp.asarray(x.transpose(0, 2, 3, 1)), False, method='probs')
  np.testing.assert_allclose(np.asarray(j_probs), t_probs, atol=1e-4)


def test_torch_batchnorm_matches_batchnorm2d():
  c = 5
  rng = np.random.default_rng(2)
  tbn = tnn.BatchNorm2d(c)
  with torch.no_grad():
    tbn.weight.copy_(torch.from_numpy(rng.standard_normal(c).astype(np.float32)))
    tbn.bias.copy_(torch.from_numpy(rng.standard_normal(c).astype(np.float32)))
  bn = TorchBatchNorm()
  variables = bn.init(jax.random.PRNGKey(0), jnp.zeros((2, 3, 3, c)), use_running_average=False)
  assert int(variables['batch_stats']['num_batches_tracked']) == 0
  np.testing.assert_array_equal(variables['batch_stats']['var'], np.ones(c))
  np.testing.assert_array_equal(variables['params']['scale'], np.ones(c))
  variables = {
    'params': {'scale': jnp.asarray(tbn.weight.detach().numpy()), 'bias': jnp.asarray(tbn.bias.detach().numpy())},
    'batch_stats': variables['batch_stats'],
  }
  train = jax.jit(lambda v, x: bn.apply(v, x, use_running_average=False, mutable=['batch_stats']))
  tbn.train()
  for i in range(4):
    x = (rng.standard_normal((3, c, 4, 6)) * (2 + i) + i).astype(np.float32)  # n = 72 per channel
    with torch.no_grad():
      ty = tbn(torch.from_numpy(x)).numpy().transpose(0, 2, 3, 1)
    jy, upd = train(variables, jnp.asarray(x.transpose(0, 2, 3, 1)))
    variables = {'params': variables['params'], 'batch_stats': upd['batch_stats']}
    np.testing.assert_allclose(np.asarray(jy), ty, atol=1e-5, rtol=1e-5)
  bs = variables['batch_stats']
  np.testing.assert_allclose(bs['mean'], tbn.running_mean.numpy(), atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(bs['var'], tbn.running_var.numpy(), atol=1e-5, rtol=1e-5)
  assert int(bs['num_batches_tracked']) == int(tbn.num_batches_tracked) == 4
  assert bs['num_batches_tracked'].dtype == jnp.int32

  tbn.eval()
  x = rng.standard_normal((2, c, 3, 3)).astype(np.float32)
  with torch.no_grad():
    ty = tbn(torch.from_numpy(x)).numpy().transpose(0, 2, 3, 1)
  bn_eval = TorchBatchNorm(use_running_average=True)
  jy = bn_eval.apply(variables, jnp.asarray(x.transpose(0, 2, 3, 1)))
  np.testing.assert_allclose(np.asarray(jy), ty, atol=1e-5, rtol=1e-5)
  # the call argument overrides an unset attribute; a single value per channel is rejected
  with pytest.raises(ValueError, match='more than 1 value'):
    bn.apply(variables, jnp.zeros((1, 1, 1, c)), use_running_average=False, mutable=['batch_stats'])


def test_bfloat16_compute_dtype():
  model = CASRGANDiscriminator(dtype=jnp.bfloat16)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((2, 32, 32, 1)), False)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables['params']))
  logits, upd = model.apply(variables, jnp.ones((2, 32, 32, 1)), True, mutable=['batch_stats'])
  assert logits.dtype == jnp.float32 and logits.shape == (2,)
  assert bool(jnp.all(jnp.isfinite(logits)))
  assert upd['batch_stats']['down_6']['bn']['mean'].dtype == jnp.float32
