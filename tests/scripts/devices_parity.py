"""Runs 3 generator steps and 3 GAN steps on a 1-device mesh and on every device; prints both losses.

Run with XLA_FLAGS=--xla_force_host_platform_device_count=8.
"""
import functools
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, sys.argv[1])
from tests.helpers import tiny_config  # noqa: E402
from mrisr_jax import losses, registry, sharding, steps, train  # noqa: E402
from mrisr_jax.data import pipeline  # noqa: E402
from mrisr_jax.train_state import TrainState  # noqa: E402

config = tiny_config()
config.batch_size = 8
it = iter(pipeline.make_train_dataset(config.data, scale=4, global_batch_size=8, seed=0))
batches = [next(it) for _ in range(3)]
plan = train.stage_plan(config, steps_per_epoch=4)
vgg_model, vgg_params = train.load_perceptual(config.loss)


def run(devices):
  mesh = sharding.make_mesh(config.mesh, devices=devices)
  repl, batch_sh = sharding.replicated(mesh), sharding.batch_sharding(mesh)
  g0 = registry.build_generator(config.model)
  d = registry.build_discriminator(config)
  out = {}
  for stage in (plan[0], plan[2]):  # pretrain (L1) and gan (dropout 0.1, BatchNorm over the global batch)
    g = train.stage_generator(config, stage)
    g_tx, d_tx = train.make_optimizers(stage, 4)
    gp = g0.init(jax.random.PRNGKey(0), jnp.zeros((1, 12, 12, 1)))['params']
    dv = d.init(jax.random.PRNGKey(1), jnp.zeros((1, 48, 48, 1)), train=False)
    state = TrainState(jnp.zeros((), jnp.int32), gp, dv['params'], dv['batch_stats'], g_tx.init(gp),
                       d_tx.init(dv['params']), jax.random.PRNGKey(2))
    state_sh = jax.tree.map(lambda _: repl, state)
    state = jax.device_put(state, state_sh)
    if stage.cfg.kind == 'gan':
      fn = functools.partial(steps.gan_step, g_model=g, d_model=d,
                             vgg=functools.partial(train._apply_vgg, vgg_model), g_tx=g_tx, d_tx=d_tx,
                             loss_cfg=config.loss)
      step = jax.jit(fn, in_shardings=(state_sh, batch_sh, repl), out_shardings=(state_sh, repl))
      call = lambda s, b: step(s, b, jax.device_put(vgg_params, repl))  # noqa: E731
    else:
      fn = functools.partial(steps.generator_step, g_model=g, g_tx=g_tx, pixel_loss=losses.l1)
      call = jax.jit(fn, in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, repl))
    history = []
    for b in batches:
      state, m = call(state, sharding.global_batch(b, batch_sh))
      history.append({k: float(v) for k, v in m.items()})
    out[stage.name] = history
  return out


print(json.dumps({'devices': jax.device_count(), 'one': run(jax.devices()[:1]), 'all': run(jax.devices())}))
