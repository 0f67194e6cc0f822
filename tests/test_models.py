"""Every generator at every scale it supports, built from its config through the registry: output shape,
gradients reaching every parameter, and five training steps on the embedded sample lowering the loss."""

import functools
import importlib.util

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from mrisr_jax import config_check, registry, steps
from mrisr_jax.data import pipeline
from mrisr_jax.models.base import SRGenerator
from mrisr_jax.train_state import TrainState
from tests.helpers import REPO

pytestmark = pytest.mark.unit

# (config file, argument, scales): the models of every system, at every scale their class supports.
SYSTEMS = [
  ('casrgan_x4.py', 'quick', (2, 3, 4)),
  ('srcnn.py', 'quick', (2, 3, 4)),
  ('drrn.py', 'quick', (2, 3, 4)),
  ('edsr.py', 'quick', (2, 3, 4)),
  ('rdn.py', 'quick', (2, 3, 4)),
  ('fagan_x4.py', 'quick', (2, 4, 8)),
  ('srdcgan_x4.py', 'quick', (4,)),
  ('perceptual_x4.py', 'model1,quick', (2, 4)),
  ('perceptual_x4.py', 'model2,quick', (2, 4)),
]
CASES = [(f, a, s) for f, a, scales in SYSTEMS for s in scales]
# Smaller than the quick configs where a model is costly to compile on CPU.
SHRINK = {
  'casr': dict(depth=2, growth_rate0=16, growth_rate=8, rdb_depth=2, embed_dim=12, num_heads=2),
  'rdn': dict(num_blocks=2, num_layers=2),
  'edsr': dict(n_resblocks=2),
  'drrn': dict(num_units=3),
}


def load_config(file: str, arg: str):
  spec = importlib.util.spec_from_file_location('cfg_' + file.replace('.', '_'), REPO / 'configs' / file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def case_config(file, arg, scale):
  c = load_config(file, arg)
  c.model.scale = scale
  c.model.update(SHRINK.get(c.model.name, {}))
  if c.model.name == 'srdcgan':
    c.data.hr_patch_size = (32, 32)
  else:
    c.data.hr_patch_size = {3: 36, 8: 64}.get(scale, 48 if c.model.name == 'casr' else 32)
  config_check.validate(c)
  return c


def sample_batch(c, model, n=4):
  ds = pipeline.make_train_dataset(
    c.data,
    scale=c.model.scale,
    global_batch_size=n,
    seed=0,
    process_index=0,
    process_count=1,
    upsampled_input=model.upsampled_input,
  )[0]
  return jax.tree.map(jnp.asarray, next(iter(ds)))


def open_gates(name: str, params: dict) -> dict:
  """Scalars that close a branch at init, opened so the gradient test reaches what lies behind them.

  CASR: the reference AHPF subtracts hp_factor x the 3x3 box sum of the channel SUM, which exceeds every
  (non-negative) channel at init, so ReLU zeroes it and hp_factor/beta get no gradient (in PyTorch too).
  FA-GAN: SAGAN's gamma starts at 0, so f, g, h, v get no gradient until gamma moves.
  """
  if name == 'casr':
    ahpf = params['afebs']['ahpf']
    return {**params, 'afebs': {**params['afebs'], 'ahpf': {**ahpf, 'hp_factor': ahpf['hp_factor'] * 1e-3}}}
  if name == 'fagan':
    gffb = params['gffb']
    return {**params, 'gffb': {**gffb, 'self_attention': {**gffb['self_attention'], 'gamma': jnp.full((1,), 0.5)}}}
  return params


@pytest.mark.parametrize('file,arg,scale', CASES, ids=[f'{f[:-3]}:{a}-x{s}' for f, a, s in CASES])
def test_shape_gradients_and_five_steps(file, arg, scale):
  c = case_config(file, arg, scale)
  model = registry.build_generator(c.model)
  batch = sample_batch(c, model)
  variables = jax.jit(functools.partial(model.init, train=False))(jax.random.PRNGKey(0), batch['lr'][:1])
  params, stats = variables['params'], variables.get('batch_stats', {})
  params = open_gates(c.model.name, params)

  out, _ = steps.apply_model(model, params, stats, batch['lr'], train=True, rngs={'dropout': jax.random.PRNGKey(1)})
  assert out.shape == batch['hr'].shape, (out.shape, batch['hr'].shape)
  assert out.dtype == jnp.float32

  def l1(p):
    sr, _ = steps.apply_model(model, p, stats, batch['lr'], train=True, rngs={'dropout': jax.random.PRNGKey(1)})
    return jnp.mean(jnp.abs(sr - batch['hr']))

  grads = jax.jit(jax.grad(l1))(params)
  dead = [
    jax.tree_util.keystr(path)
    for path, g in jax.tree_util.tree_leaves_with_path(grads)
    if not np.any(np.asarray(g) != 0)
  ]
  assert not dead, f'no gradient reaches {dead}'

  tx = optax.adam(1e-3)
  state = TrainState(
    step=jnp.zeros((), jnp.int32),
    g_params=params,
    g_batch_stats=stats,
    d_params={},
    d_batch_stats={},
    g_opt_state=tx.init(params),
    d_opt_state=(),
    rng=jax.random.PRNGKey(2),
  )
  step = jax.jit(functools.partial(steps.generator_step, g_model=model, g_tx=tx))
  losses = []
  for _ in range(5):
    state, m = step(state, batch)
    losses.append(float(m['loss_g']))
  final = float(jax.jit(l1)(state.g_params))
  assert np.all(np.isfinite(losses)) and final < losses[0], losses + [final]


def test_every_generator_and_discriminator_is_in_the_registry():
  expected = {'casr', 'srcnn', 'drrn', 'edsr', 'rdn', 'fagan', 'srdcgan', 'perceptual_sr', 'transmrsr'}
  assert set(registry.GENERATORS) == expected
  for name in registry.GENERATORS:
    cls = registry.generator_class(name)
    assert set(cls.supported_scales) <= set(registry.SCALES)
  assert {'casrgan_d', 'fagan_sn_d', 'srdcgan_d'} == set(registry.DISCRIMINATORS)
  for name in registry.DISCRIMINATORS:
    registry.discriminator_class(name)


@pytest.mark.parametrize('name', sorted(registry.GENERATORS))
def test_every_generator_derives_from_the_base_and_rejects_a_scale_in_one_line(name):
  cls = registry.generator_class(name)
  assert issubclass(cls, SRGenerator)
  assert not {'check_fields', 'scale_error'} & set(vars(cls))  # the one check, never overridden
  expected = f'model.scale=5: {cls.__name__} supports scales {cls.supported_scales}'
  with pytest.raises(ValueError) as err:
    jax.eval_shape(cls(scale=5).init, jax.random.PRNGKey(0), jnp.zeros((1, 24, 24, 1)))
  assert str(err.value) == expected
  with pytest.raises(registry.UnknownNameError) as err:
    registry.build_generator(ml_collections.ConfigDict({'name': name, 'scale': 5}))
  assert str(err.value) == f'config.{expected}'


def test_unknown_names_and_fields_list_the_known_ones():
  c = load_config('edsr.py', 'quick')
  c.model.name = 'esrgan'
  with pytest.raises(registry.UnknownNameError, match=r"unknown config.model.name 'esrgan'; known: casr, drrn, edsr"):
    config_check.validate(c)
  c = load_config('edsr.py', 'quick')
  c.model.n_resblock = 3  # a typo of n_resblocks
  with pytest.raises(registry.UnknownNameError, match=r'config.model.n_resblock is not a field of EDSR.*n_resblocks'):
    config_check.validate(c)
  c = load_config('edsr.py', 'quick')
  c.loss.gan = 'wgan'
  with pytest.raises(registry.UnknownNameError, match=r"unknown config.loss.gan 'wgan'; known: bce_sum, hinge"):
    config_check.validate(c)
  c = load_config('fagan_x4.py', None)
  c.model.scale = 3
  with pytest.raises(config_check.ConfigError, match=r'config.model.scale=3 is not supported by fagan'):
    config_check.validate(c)
