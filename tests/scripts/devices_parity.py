"""The same train steps on a 1-device mesh and on every device; prints the metrics of both.

Run with XLA_FLAGS=--xla_force_host_platform_device_count=8.

- 'free': 3 L1 generator steps, each mesh running its own trajectory.
- 'forced': 3 GAN steps, where each step starts both meshes from the 1-device state. Free-running
  GAN trajectories drift apart at ~1e-5 after one step whatever the code does: at initialisation
  the real and fake terms of D's gradient nearly cancel, and Adam's first steps (update ~ lr *
  sign(g)) turn float32 summation-order differences in those near-zero entries into +-lr moves.
"""

import json
import sys

import jax
import numpy as np

sys.path.insert(0, sys.argv[1])
from tests.helpers import tiny_config  # noqa: E402
from mrisr_jax import recipe, registry, sharding, spec, train  # noqa: E402
from mrisr_jax.data import pipeline  # noqa: E402

assert jax.device_count() == 8, 'run with XLA_FLAGS=--xla_force_host_platform_device_count=8'
config = tiny_config()
config.batch_size = 8
config = spec.resolve(config)
it = iter(pipeline.make_train_dataset(config.data, scale=4, global_batch_size=8, seed=0)[0])
batches = [next(it) for _ in range(3)]
plan = recipe.stage_plan(config, steps_per_epoch=4)
vgg, vgg_params = recipe.load_perceptual(config.loss)


def make_stage(stage, mesh):
  """The stage's step exactly as training jits it (train.jit_stage_step), on `mesh`."""
  repl, batch_sh = sharding.replicated(mesh), sharding.batch_sharding(mesh)
  d = registry.build_discriminator(config)
  g_tx, d_tx = recipe.make_optimizers(config, stage, 4)
  init = recipe.init_state_fn(config, registry.build_generator(config.model), d, g_tx, d_tx)
  state = init(jax.random.PRNGKey(0))
  _, state_sh = train.state_layout(config, mesh, init)
  jitted = train.jit_stage_step(config, stage, 4, mesh, state_sh, d, vgg).step
  params = jax.device_put(vgg_params, repl)
  step = lambda s, b: jitted(s, b, params)  # noqa: E731

  def call(s, b):
    s, m = step(jax.device_put(s, state_sh), sharding.global_batch(b, batch_sh))
    return s, {k: float(v) for k, v in m.items()}

  return state, call


def host(tree):
  return jax.tree.map(np.asarray, tree)


one_mesh = sharding.make_mesh(dict(config.mesh), devices=jax.devices()[:1])
all_mesh = sharding.make_mesh(dict(config.mesh), devices=jax.devices())
out = {'devices': jax.device_count(), 'free': {'one': [], 'all': []}, 'forced': {'one': [], 'all': []}}

s1, step1 = make_stage(plan[0], one_mesh)
s8, step8 = make_stage(plan[0], all_mesh)
s1, s8 = host(s1), host(s8)
for b in batches:
  s1, m1 = step1(s1, b)
  s8, m8 = step8(s8, b)
  s1, s8 = host(s1), host(s8)
  out['free']['one'].append(m1)
  out['free']['all'].append(m8)

s1, step1 = make_stage(plan[2], one_mesh)
_, step8 = make_stage(plan[2], all_mesh)
s1 = host(s1)
for b in batches:
  _, m8 = step8(s1, b)
  s1, m1 = step1(s1, b)
  s1 = host(s1)
  out['forced']['one'].append(m1)
  out['forced']['all'].append(m8)
print(json.dumps(out))
