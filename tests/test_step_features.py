"""Step features: gradient accumulation, bfloat16 compute, skipped non-finite steps, lr warm-up and scaling."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import linen as nn
from jax.extend import core as jax_core

from mrisr_jax import config_check, recipe, registry, steps
from mrisr_jax.data import pipeline
from mrisr_jax.models.layers import Conv2d, Linear
from mrisr_jax.models.srcnn import SRCNN
from mrisr_jax.train_state import TrainState
from tests.helpers import random_variables, tiny_config

pytestmark = pytest.mark.unit


class _PlainD(nn.Module):
  """A discriminator with no BatchNorm and no spectral norm: nothing couples the rows of a batch, so a
  GAN step over micro-batches must give D the same update as over the whole batch (CASRGAN's D has BN)."""

  @nn.compact
  def __call__(self, x, train: bool):
    del train
    x = nn.leaky_relu(Conv2d(8, 3, stride=2, name='conv')(x), 0.2)
    return Linear(1, name='dense')(jnp.mean(x, axis=(1, 2))).reshape(x.shape[0])


def _images(n, size, seed):
  """Smooth random images in [0, 1]: (lr, hr) of the same size (SRCNN takes the upsampled LR)."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:size, 0:size] / size
  hr = np.stack([0.5 + 0.4 * np.sin(2 * np.pi * (f * xx + g * yy)) for f, g in rng.uniform(0.5, 2, (n, 2))])
  lr = hr + 0.05 * rng.standard_normal(hr.shape)
  return {'lr': jnp.asarray(lr[..., None], jnp.float32), 'hr': jnp.asarray(hr[..., None], jnp.float32)}


def _vgg():
  loss_cfg = ml_collections.ConfigDict(
    dict(
      vgg_arch='vgg19',
      perceptual_layers={'relu1_2': 1.0},
      style_layers={},
      vgg_imagenet_norm=False,
      vgg_weights='',
      allow_random_vgg=True,
    )
  )
  return recipe.load_perceptual(loss_cfg)


def _state(g_vars, d_vars, g_tx, d_tx):
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    g_params=g_vars['params'],
    g_batch_stats={},
    d_params=d_vars['params'],
    d_batch_stats={},
    g_opt_state=g_tx.init(g_vars['params']),
    d_opt_state=d_tx.init(d_vars['params']),
    rng=jax.random.PRNGKey(1),
  )


def _assert_same_update(before, one, accumulated):
  """Parameter moves of the k-micro-batch step equal the whole-batch step's to 1e-5 of the largest move."""
  for b, x, y in zip(jax.tree.leaves(before), jax.tree.leaves(one), jax.tree.leaves(accumulated)):
    move_1, move_k = np.asarray(x) - np.asarray(b), np.asarray(y) - np.asarray(b)
    assert np.abs(move_1).max() > 0
    np.testing.assert_allclose(move_k, move_1, rtol=0, atol=1e-5 * np.abs(move_1).max())


@pytest.fixture(scope='module')
def srcnn_setup():
  g = SRCNN(scale=2)
  batch = _images(8, 24, seed=0)
  g_vars = g.init(jax.random.PRNGKey(0), batch['lr'])
  d_vars = _PlainD().init(jax.random.PRNGKey(2), batch['hr'], train=False)
  vgg, vgg_params = _vgg()
  # SGD: the update is proportional to the gradient (Adam's first step, ~lr * sign(g), would hide a
  # wrongly scaled gradient)
  tx = optax.sgd(0.5)
  return g, batch, g_vars, d_vars, vgg, vgg_params, tx


def test_generator_step_accumulates_micro_batches_into_the_whole_batch_update(srcnn_setup):
  g, batch, g_vars, d_vars, vgg, vgg_params, tx = srcnn_setup
  spec = steps.LossSpec(pixel='l1', perceptual_weight=0.1, perceptual_layer_weights=(1.0,))
  state = _state(g_vars, d_vars, tx, tx)
  run = {
    k: jax.jit(functools.partial(steps.generator_step, g_model=g, g_tx=tx, loss=spec, vgg=vgg, grad_accum_steps=k))
    for k in (1, 4)
  }
  (s1, m1), (s4, m4) = (run[k](state, batch, vgg_params) for k in (1, 4))
  _assert_same_update(state.g_params, s1.g_params, s4.g_params)
  for key in ('loss_g', 'pixel', 'perceptual', 'grad_norm_g'):
    assert float(m4[key]) == pytest.approx(float(m1[key]), rel=1e-5), key
  assert int(s4.step) == 1 and float(m4['skipped']) == 0.0
  # micro-batch j = rows j, j + k, ...: a device's contiguous shard of rows splits evenly over them
  np.testing.assert_array_equal(steps._split({'x': jnp.arange(8)}, 4)['x'], [[0, 4], [1, 5], [2, 6], [3, 7]])


def test_gan_step_accumulates_micro_batches_into_the_whole_batch_update(srcnn_setup):
  # 'bce_sum' sums -log D(SR) over the batch: each micro-batch's sum must count k times (mean losses
  # are covered by the pixel, perceptual and D terms)
  g, batch, g_vars, d_vars, vgg, vgg_params, tx = srcnn_setup
  spec = steps.LossSpec(
    pixel='l1', perceptual_weight=0.1, perceptual_layer_weights=(1.0,), adversarial_weight=0.05, gan='bce_sum'
  )
  state = _state(g_vars, d_vars, tx, tx)
  run = {
    k: jax.jit(
      functools.partial(
        steps.gan_step, g_model=g, d_model=_PlainD(), g_tx=tx, d_tx=tx, loss=spec, vgg=vgg, grad_accum_steps=k
      )
    )
    for k in (1, 4)
  }
  (s1, m1), (s4, m4) = (run[k](state, batch, vgg_params) for k in (1, 4))
  _assert_same_update(state.g_params, s1.g_params, s4.g_params)
  _assert_same_update(state.d_params, s1.d_params, s4.d_params)
  for key in ('loss_g', 'loss_d', 'pixel', 'perceptual', 'adversarial', 'd_real', 'd_fake'):
    assert float(m4[key]) == pytest.approx(float(m1[key]), rel=1e-5), key


def _leaves_equal(a, b):
  return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_a_non_finite_step_changes_nothing_but_the_step(srcnn_setup):
  g, batch, g_vars, d_vars, vgg, vgg_params, _ = srcnn_setup
  adam = optax.adam(1e-3)
  state = _state(g_vars, d_vars, adam, adam)
  state = state.replace(g_ema_params=state.g_params)  # EMA on: it must be kept too
  poisoned = {**batch, 'lr': batch['lr'].at[3, 5, 5, 0].set(jnp.nan)}
  spec = steps.LossSpec(adversarial_weight=0.05, gan='nonsaturating')
  gen = functools.partial(steps.generator_step, g_model=g, g_tx=adam)
  gan = functools.partial(steps.gan_step, g_model=g, d_model=_PlainD(), g_tx=adam, d_tx=adam, loss=spec)
  for fn, k in ((gen, 1), (gan, 1), (gan, 2)):
    step = jax.jit(functools.partial(fn, grad_accum_steps=k))
    bad, metrics = step(state, poisoned)
    assert float(metrics['skipped']) == 1.0
    assert not np.isfinite(float(metrics['loss_g']))  # the host sees the loss, and that it was skipped
    assert int(bad.step) == int(state.step) + 1
    assert _leaves_equal(bad.replace(step=state.step), state)
    good, metrics = step(state, batch)
    assert float(metrics['skipped']) == 0.0
    assert not _leaves_equal(good.g_params, state.g_params)
    assert not _leaves_equal(good.g_ema_params, state.g_ema_params)


def _conv_dtypes(jaxpr) -> list:
  """The operand dtypes of every convolution in a jaxpr, sub-jaxprs (scan, jit, remat, vjp) included."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == 'conv_general_dilated':
      found.append(tuple(str(v.aval.dtype) for v in eqn.invars))
    for p in eqn.params.values():
      for sub in p if isinstance(p, (tuple, list)) else (p,):
        if isinstance(sub, jax_core.ClosedJaxpr):
          found += _conv_dtypes(sub.jaxpr)
        elif isinstance(sub, jax_core.Jaxpr):
          found += _conv_dtypes(sub)
  return found


def _float_leaves(tree) -> list:
  return [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]


def test_bfloat16_computes_in_bf16_and_keeps_float32_state_and_losses():
  """tiny_config's CASR (shrunk further: XLA:CPU compiles are the cost) on the embedded sample, perceptual
  loss on in both stage kinds. The L1 comparison runs the generator stage for 20 steps; the GAN stage
  (G, D and VGG all in bf16) runs 3 steps in bf16 only, each compile being ~20 s on 2 CPU cores."""
  config = tiny_config()
  config.model.update(dict(depth=1, rdb_depth=1, n_stb=1))
  config.loss.perceptual_layers = {'relu1_2': 1.0}
  config.stages.pretrain.perceptual_weight = 0.1
  it = iter(pipeline.make_train_dataset(config.data, scale=4, global_batch_size=config.batch_size, seed=0)[0])
  batches = [next(it) for _ in range(20)]
  plan = recipe.stage_plan(config, steps_per_epoch=9)
  # one float32 initial state for every run (params do not depend on the compute dtype), filled on the
  # host: jitting CASR's and CASRGAN D's init costs more than this whole test's steps
  g0, d0 = registry.build_generator(config.model), registry.build_discriminator(config)
  g_init, d_init = recipe.network_inits(config, g0, d0)
  g_vars = random_variables(jax.eval_shape(g_init, jax.random.PRNGKey(0)), seed=0)
  d_vars = random_variables(jax.eval_shape(d_init, jax.random.PRNGKey(1)), seed=1)
  pixel = {}
  for stage, dtype, n_steps in ((plan[0], 'float32', 20), (plan[0], 'bfloat16', 20), (plan[2], 'bfloat16', 3)):
    config.model.dtype = dtype
    vgg, vgg_params = recipe.load_perceptual(config.loss, dtype)
    g, d = recipe.stage_generator(config, stage), registry.build_discriminator(config)
    g_tx, d_tx = recipe.make_optimizers(config, stage, 9)
    state = TrainState(
      step=jnp.zeros((), jnp.int32),
      g_params=g_vars['params'],
      g_batch_stats={},
      d_params=d_vars['params'],
      d_batch_stats=d_vars['batch_stats'],
      g_opt_state=g_tx.init(g_vars['params']),
      d_opt_state=d_tx.init(d_vars['params']),
      rng=jax.random.PRNGKey(1),
    )
    step = jax.jit(recipe.stage_step(config, stage, g, d, g_tx, d_tx, vgg))
    convs = _conv_dtypes(jax.make_jaxpr(step)(state, batches[0], vgg_params).jaxpr)
    # G, D (gan) and VGG, forward and backward: every convolution runs in the compute dtype
    assert len(convs) > 20 and all(t == dtype for c in convs for t in c), sorted(set(convs))
    losses = []
    for b in batches[:n_steps]:
      state, metrics = step(state, b, vgg_params)
      assert all(v.dtype == jnp.float32 for v in metrics.values()), {k: v.dtype for k, v in metrics.items()}
      assert float(metrics['skipped']) == 0.0
      losses.append(float(metrics['pixel']))
    kept = _float_leaves((state.g_params, state.d_params, state.g_opt_state, state.d_opt_state, state.d_batch_stats))
    assert kept and all(x.dtype == jnp.float32 for x in kept)
    assert np.all(np.isfinite(losses))
    pixel[stage.spec.kind, dtype] = np.asarray(losses)
  f32, bf16 = pixel['generator', 'float32'], pixel['generator', 'bfloat16']
  # the bf16 L1 curve follows float32's at every step (bf16 keeps 8 mantissa bits, ~0.4% per rounding),
  np.testing.assert_allclose(bf16, f32, rtol=0.02)
  assert bf16[-5:].mean() < bf16[:5].mean()  # and it trains


def _error(config) -> str:
  with pytest.raises(config_check.ConfigError) as e:
    config_check.validate(config)
  msg = str(e.value)
  assert '\n' not in msg
  return msg


def test_config_check_refuses_float16_and_uneven_micro_batches():
  config = tiny_config()
  config_check.validate(config)
  config.model.dtype = 'float16'
  assert 'config.model.dtype=' in _error(config) and 'float16' in _error(config)
  config = tiny_config()
  config.model.dtype = 'bfloat16'
  config.grad_accum_steps = 4
  config_check.validate(config)  # batch 4, 4 micro-batches of 1
  config.grad_accum_steps = 3
  assert 'config.grad_accum_steps=3' in _error(config)
  config.grad_accum_steps = 0
  assert 'config.grad_accum_steps=0' in _error(config)
  config = tiny_config()
  config.lr_scaling = 'cubic'
  assert 'config.lr_scaling=' in _error(config)
  config = tiny_config()
  config.stages.gan.warmup_epochs = -1.0
  assert 'config.stages.gan.warmup_epochs=-1.0' in _error(config)


def test_warmup_and_batch_scaling_of_the_learning_rate():
  config = tiny_config()  # pretrain: lr_g 1e-3, step schedule halving every 30 epochs
  config.stages.pretrain.warmup_epochs = 4 / 9
  spe = recipe.steps_per_epoch(36, config.batch_size)
  assert spe == 9 and recipe.steps_per_epoch(3, 8) == 1
  lr = recipe.stage_schedules(recipe.stage_plan(config, spe)[0], spe)['g']
  # 4 warm-up steps: lr * 1/4, 2/4, 3/4, 4/4, then the schedule
  assert [float(lr(t)) for t in range(6)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])
  assert float(lr(30 * 9 - 1)) == pytest.approx(1e-3)
  assert float(lr(30 * 9)) == pytest.approx(5e-4)  # the halving is still counted from the stage start
  config.stages.pretrain.warmup_epochs = 0.0
  config.batch_size = 64  # 4x the base batch of 16
  for rule, factor in (('none', 1.0), ('linear', 4.0), ('sqrt', 2.0)):
    config.lr_scaling = rule
    fns = recipe.stage_schedules(recipe.stage_plan(config, spe)[2], spe)  # gan: lr_g = lr_d = 1e-4
    assert float(fns['g'](0)) == pytest.approx(1e-4 * factor)
    assert float(fns['d'](0)) == pytest.approx(1e-4 * factor)
    assert float(fns['g'](3 * 9)) == pytest.approx(0.5e-4 * factor)  # gan: schedule_epochs=3
  # the optimizer runs the scaled rate: one Adam step moves a parameter by ~lr
  config.lr_scaling = 'linear'
  g_tx, _ = recipe.make_optimizers(config, recipe.stage_plan(config, spe)[2], spe)
  params = {'w': jnp.zeros(3)}
  updates, _ = g_tx.update({'w': jnp.ones(3)}, g_tx.init(params), params)
  np.testing.assert_allclose(np.asarray(updates['w']), -4e-4, rtol=1e-4)
