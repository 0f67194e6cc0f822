"""FSDP layout and parity: 3 L1 generator steps on a {data: 4, fsdp: 2} mesh and on 1 device.

Run with XLA_FLAGS=--xla_force_host_platform_device_count=8. Prints one JSON line: the per-step
losses of both runs, and for the 8-device state every sharded leaf's global and per-device shapes
(parameters, and Adam mu/nu after the steps) and the fraction of parameter bytes that is sharded.
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
stage = recipe.stage_plan(config, steps_per_epoch=4)[0]
assert stage.spec.kind == 'generator'
d = registry.build_discriminator(config)
g_tx, d_tx = recipe.make_optimizers(config, stage, 4)
init = recipe.init_state_fn(config, registry.build_generator(config.model), d, g_tx, d_tx)
abstract = jax.eval_shape(init, jax.random.PRNGKey(0))
# initialised once (its compile is most of this script's time), then laid out on each mesh
host_state = jax.tree.map(np.asarray, jax.jit(init)(jax.random.PRNGKey(0)))


def run(mesh):
  """The step exactly as training jits it (train.jit_stage_step), on `mesh`."""
  _, state_sh = train.state_layout(config, mesh, init)
  batch_sh = sharding.batch_sharding(mesh)
  state = jax.device_put(host_state, state_sh)
  step = train.jit_stage_step(config, stage, 4, mesh, state_sh, d, None).step
  losses = []
  for b in batches:
    state, m = step(state, sharding.global_batch(b, batch_sh), None)
    losses.append({k: float(v) for k, v in m.items()})
  return state_sh, state, losses


one = sharding.make_mesh(dict(data=-1), devices=jax.devices()[:1])
mesh = sharding.make_mesh(dict(data=4, fsdp=2))
_, _, losses_one = run(one)
state_sh, state, losses_all = run(mesh)

leaves = []
flat = jax.tree_util.tree_flatten_with_path(state)[0]
for (path, x), s in zip(flat, jax.tree.leaves(state_sh)):
  if s.is_fully_replicated:
    continue
  shard = x.addressable_shards[0].data
  leaves.append(
    {
      'path': sharding.path_str(path),
      'global': list(x.shape),
      'shard': list(shard.shape),
      'spec': [a if a is None or isinstance(a, str) else list(a) for a in s.spec],
      'actual_spec': [a if a is None or isinstance(a, str) else list(a) for a in x.sharding.spec],
      'n_shards': len({tuple((i.start, i.stop) for i in sh.index) for sh in x.addressable_shards}),
    }
  )
out = {
  'devices': jax.device_count(),
  'mesh': dict(mesh.shape),
  'one': losses_one,
  'all': losses_all,
  'sharded': leaves,
  'sharded_fraction': sharding.sharded_fraction(abstract, state_sh),
  'batch_shards': sharding.data_parallel_size(mesh),
  'param_paths': [sharding.path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(abstract.g_params)[0]],
}
print(json.dumps(out))
