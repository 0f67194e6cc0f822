"""The mesh (data x fsdp), the parameter-sharding rules, FSDP parity with one device, memory reports."""

import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import optax
import pytest
from jax.sharding import PartitionSpec as P

from mrisr_jax import sharding
from mrisr_jax.config_check import ConfigError
from mrisr_jax.train_state import TrainState
from tests.helpers import REPO

pytestmark = pytest.mark.unit


def test_mesh_sizes_resolve_minus_one_and_default_missing_axes_to_one():
  assert sharding.mesh_shape(dict(data=-1, fsdp=1), 8) == {'data': 8, 'fsdp': 1}
  assert sharding.mesh_shape(dict(data=4, fsdp=-1), 8) == {'data': 4, 'fsdp': 2}
  assert sharding.mesh_shape(dict(fsdp=2, data=-1), 8) == {'data': 4, 'fsdp': 2}
  assert sharding.mesh_shape(dict(data=-1), 8) == {'data': 8, 'fsdp': 1}
  mesh = sharding.make_mesh(dict(data=-1, fsdp=1))
  assert mesh.axis_names == ('data', 'fsdp') and mesh.size == jax.device_count()


@pytest.mark.parametrize(
  'mesh_cfg, message',
  [
    (
      dict(data=-1, model=2),
      re.escape("config.mesh.model=2: no parameter or batch is sharded over 'model' (known axes: data, fsdp)"),
    ),
    (dict(data=-1, fsdp=-1), 'config.mesh=.*at most one axis may be -1'),
    (dict(data=3, fsdp=1), r'config.mesh=.* uses 3 of 8 devices'),
    (dict(data=-1, fsdp=3), r'does not fit 8 devices'),
    (dict(data=0), r'config.mesh.data=0 must be a positive integer or -1'),
  ],
)
def test_bad_meshes_are_one_line_config_errors(mesh_cfg, message):
  with pytest.raises(ConfigError, match=message) as e:
    sharding.mesh_shape(mesh_cfg, 8)
  assert '\n' not in str(e.value)


class FakeMesh:
  """What the rules look at: axis names and sizes (no devices needed)."""

  def __init__(self, **shape):
    self.shape, self.axis_names = shape, tuple(shape)


def _abstract_state():
  params = {
    'conv': {'kernel': jnp.zeros((3, 3, 4, 8)), 'bias': jnp.zeros(8)},
    'dense': {'kernel': jnp.zeros((6, 5))},
    'bn': {'scale': jnp.zeros(8)},
  }
  d_params = {'conv': {'kernel': jnp.zeros((3, 3, 1, 16))}}
  tx = optax.chain(optax.adam(1e-3), optax.scale(1.0))
  return jax.eval_shape(
    lambda: TrainState(
      step=jnp.zeros((), jnp.int32),
      g_params=params,
      g_batch_stats={'bn': {'mean': jnp.zeros(8)}},
      d_params=d_params,
      d_batch_stats={},
      g_opt_state=tx.init(params),
      d_opt_state=tx.init(d_params),
      rng=jax.random.PRNGKey(0),
      g_ema_params=params,
    )
  )


def test_default_rules_shard_kernels_output_axis_and_adam_states_follow_their_parameter():
  state = _abstract_state()
  specs = sharding.partition_specs(state, FakeMesh(data=2, fsdp=2))
  fsdp4 = P(None, None, None, 'fsdp')
  assert specs.g_params['conv']['kernel'] == fsdp4
  assert specs.g_params['dense']['kernel'] == P()  # 5 output channels do not split in 2
  assert specs.g_params['conv']['bias'] == specs.g_params['bn']['scale'] == P()
  assert specs.d_params['conv']['kernel'] == fsdp4
  adam = specs.g_opt_state[0][0]  # chain(chain(scale_by_adam, lr), scale)
  assert adam.mu['conv']['kernel'] == adam.nu['conv']['kernel'] == fsdp4
  assert adam.count == P() and specs.step == P() and specs.rng == P()
  assert specs.d_opt_state[0][0].nu['conv']['kernel'] == fsdp4
  assert specs.g_ema_params['conv']['kernel'] == fsdp4
  assert specs.g_batch_stats['bn']['mean'] == P()
  # with fsdp = 1 nothing is split
  assert all(
    s == P()
    for s in jax.tree.leaves(
      sharding.partition_specs(state, FakeMesh(data=4, fsdp=1)), is_leaf=lambda x: isinstance(x, P)
    )
  )


def test_rules_first_match_wins_and_optimizer_states_follow_the_parameter_not_their_own_path():
  state = _abstract_state()
  rules = (
    (r'^g_params/conv/kernel$', sharding.FSDP_LARGEST),
    (r'^g_params/dense', (None, None)),
    (r'^g_params/', sharding.REPLICATED),
  ) + sharding.DEFAULT_RULES
  specs = sharding.partition_specs(state, FakeMesh(data=1, fsdp=2), rules)
  assert specs.g_params['conv']['kernel'] == P(None, None, None, 'fsdp')  # 8 beats 4 (largest)
  assert specs.g_opt_state[0][0].mu['conv']['kernel'] == P(None, None, None, 'fsdp')  # anchored rule, same spec
  assert specs.d_params['conv']['kernel'] == P(None, None, None, 'fsdp')
  largest = sharding.partition_specs(state, FakeMesh(fsdp=2), ((r'kernel', sharding.FSDP_LARGEST),))
  assert largest.g_params['dense']['kernel'] == P('fsdp', None)  # 6 is the largest axis that splits


def test_bad_rules_and_an_fsdp_axis_that_shards_nothing_are_refused():
  state = _abstract_state()
  mesh = sharding.make_mesh(dict(data=-1))
  with pytest.raises(ConfigError, match='unknown action'):
    sharding.partition_specs(state, mesh, ((r'kernel', 'shard_everything'),))
  with pytest.raises(ConfigError, match='valid regex'):
    sharding.partition_specs(state, mesh, ((r'kernel[', sharding.FSDP_LAST),))
  with pytest.raises(ConfigError, match=r'names unknown mesh axes'):
    sharding.partition_specs(state, mesh, ((r'kernel', (None, None, None, 'model')),))
  with pytest.raises(ConfigError, match=r"config.mesh.fsdp=2: no parameter is sharded over 'fsdp'"):
    sharding.state_shardings(FakeMesh(data=1, fsdp=2), state, ((r'.*', sharding.REPLICATED),))


def test_memory_report_formats_and_survives_backends_without_analysis():
  compiled = jax.jit(lambda x: (x @ x.T).sum()).lower(jnp.ones((64, 32))).compile()
  report = sharding.memory_report(compiled)
  assert report.startswith('memory per device: arguments 0.0 MiB') and 'temporaries' in report, report
  stats = sharding.memory_stats(compiled)
  assert stats['arguments'] == 64 * 32 * 4

  class NoAnalysis:
    def memory_analysis(self):
      return None

  class Raises:
    def memory_analysis(self):
      raise NotImplementedError

  for c in (NoAnalysis(), Raises()):
    assert sharding.memory_stats(c) is None
    assert sharding.memory_report(c) == 'memory per device: not reported by this backend'


@pytest.mark.integration  # multi-device script in a subprocess
def test_fsdp_layout_and_parity_with_one_device():
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=8', 'TF_CPP_MIN_LOG_LEVEL': '3'}
  # timeout: a hang guard, not a speed test (the script takes ~15 s on 2 busy cores)
  proc = subprocess.run(
    [sys.executable, str(REPO / 'tests/scripts/fsdp_parity.py'), str(REPO)],
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
    cwd=REPO,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out['devices'] == 8 and out['mesh'] == {'data': 4, 'fsdp': 2} and out['batch_shards'] == 8
  # every split leaf holds half of its sharded axis per device, parameters and Adam mu/nu alike
  paths = {leaf['path'] for leaf in out['sharded']}
  for leaf in out['sharded']:
    axis = leaf['spec'].index('fsdp')
    assert leaf['shard'][axis] * 2 == leaf['global'][axis], leaf
    assert [s for i, s in enumerate(leaf['shard']) if i != axis] == [
      s for i, s in enumerate(leaf['global']) if i != axis
    ], leaf
    assert leaf['n_shards'] == 2 and leaf['actual_spec'] == leaf['spec'], leaf
  kernels = [p for p in out['param_paths'] if p.endswith('kernel')]
  for p in (f'g_params/{p}' for p in kernels):
    if p in paths:
      assert {f'g_opt_state/0/mu/{p[9:]}', f'g_opt_state/0/nu/{p[9:]}'} <= paths, p
  assert len([p for p in paths if p.startswith('g_params/')]) >= len(kernels) - 1  # all but the 1-channel tail
  assert out['sharded_fraction'] >= 0.8, out['sharded_fraction']
  # the same losses as on one device
  assert len(out['one']) == len(out['all']) == 3
  for one, many in zip(out['one'], out['all']):
    for key in (k for k in one if not k.startswith('grad_norm')):
      assert many[key] == pytest.approx(one[key], rel=1e-5, abs=1e-7), (key, one[key], many[key])
