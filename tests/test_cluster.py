"""jax.distributed.initialize arguments from SLURM / TPU environments (pure functions, no cluster needed)."""

import pytest

from mrisr_jax import cluster
from mrisr_jax.main import distributed_kwargs

pytestmark = pytest.mark.unit

NODES, GPUS = 4, 8
HOSTS = ['gpu001', 'gpu002', 'gpu003', 'gpu004']


def slurm_env(tasks_per_node: int, proc: int, **extra) -> dict:
  """What srun sets for task `proc` of a 4-node x 8-GPU job (no per-task GPU binding)."""
  n = NODES * tasks_per_node
  return {
    'SLURM_JOB_ID': '4242',
    'SLURM_JOB_NODELIST': 'gpu[001-004]',
    'SLURM_STEP_NODELIST': 'gpu[001-004]',
    'SLURM_NTASKS': str(n),
    'SLURM_STEP_NUM_TASKS': str(n),
    'SLURM_PROCID': str(proc),
    'SLURM_LOCALID': str(proc % tasks_per_node),
    'SLURM_NODEID': str(proc // tasks_per_node),
    'SLURM_NTASKS_PER_NODE': str(tasks_per_node),
    'SLURM_TASKS_PER_NODE': f'{tasks_per_node}(x{NODES})',
    'SLURM_GPUS_ON_NODE': str(GPUS),
    'CUDA_VISIBLE_DEVICES': ','.join(map(str, range(GPUS))),
    **extra,
  }


@pytest.mark.parametrize('tasks_per_node', [GPUS, 1])
def test_every_task_of_a_4x8_job_gets_distinct_gpus_covering_all_32(tasks_per_node):
  n = NODES * tasks_per_node
  args = [cluster.detect(slurm_env(tasks_per_node, p)) for p in range(n)]
  assert {a.source for a in args} == {'slurm'}
  assert {a.num_processes for a in args} == {n}
  assert sorted(a.process_id for a in args) == list(range(n))
  assert {a.coordinator_address for a in args} == {f'gpu001:{cluster.DEFAULT_PORT + 4242 % 1000}'}
  devices = [(HOSTS[p // tasks_per_node], d) for p, a in enumerate(args) for d in a.local_device_ids]
  assert len(devices) == len(set(devices)) == NODES * GPUS
  assert {d for _, d in devices} == set(range(GPUS))
  if tasks_per_node == GPUS:
    assert all(a.local_device_ids == (p % GPUS,) for p, a in enumerate(args))
  else:
    assert all(a.local_device_ids == tuple(range(GPUS)) for a in args)
  assert args[3].kwargs()['local_device_ids'] == list(args[3].local_device_ids)


def test_gpus_shared_by_two_tasks_per_node_and_tasks_bound_by_srun():
  env = slurm_env(2, 3)  # node 1, second task: GPUs 4..7
  assert cluster.detect(env).local_device_ids == (4, 5, 6, 7)
  bound = slurm_env(GPUS, 13, CUDA_VISIBLE_DEVICES='5')  # --gpus-per-task=1: the task sees its one GPU
  assert cluster.detect(bound).local_device_ids == (0,)
  with pytest.raises(cluster.ClusterError, match='3 tasks on a node with 8 GPUs'):
    cluster.detect(slurm_env(3, 0))


def test_gpu_count_from_gpus_per_node_or_visible_devices():
  env = slurm_env(1, 0)
  del env['SLURM_GPUS_ON_NODE']
  assert cluster.detect({**env, 'SLURM_GPUS_PER_NODE': 'h100:8'}).local_device_ids == tuple(range(8))
  assert cluster.detect(env).local_device_ids == tuple(range(8))  # counted from CUDA_VISIBLE_DEVICES
  del env['CUDA_VISIBLE_DEVICES']
  assert cluster.detect(env).local_device_ids is None  # CPU job: jax uses what it finds


def test_hostlists_and_per_node_counts():
  assert cluster.expand_hostlist('gpu[001-004]') == HOSTS
  assert cluster.expand_hostlist('a1,b[2-3,7]') == ['a1', 'b2', 'b3', 'b7']
  assert cluster.expand_hostlist('n[8-10]-ib,x') == ['n8-ib', 'n9-ib', 'n10-ib', 'x']
  assert cluster.expand_hostlist('r[1-2]n[01-02]') == ['r1n01', 'r1n02', 'r2n01', 'r2n02']
  assert cluster.expand_hostlist('single') == ['single']
  assert cluster.expand_counts('8(x4)') == [8] * 4
  assert cluster.expand_counts('2(x2),1') == [2, 2, 1]
  with pytest.raises(cluster.ClusterError):
    cluster.expand_hostlist('gpu[001-004')
  with pytest.raises(cluster.ClusterError):
    cluster.expand_counts('8x4')


def test_the_first_host_is_the_coordinator_and_the_port_can_be_chosen():
  env = slurm_env(1, 2, SLURM_STEP_NODELIST='b[7-9],a1', SLURM_JOB_NODELIST='b[7-9],a1')
  assert cluster.detect(env, port=2222).coordinator_address == 'b7:2222'
  assert cluster.detect({**env, 'JAX_COORDINATOR_PORT': '3333'}).coordinator_address == 'b7:3333'
  del env['SLURM_STEP_NODELIST']
  assert (
    cluster.detect({**env, 'SLURM_JOB_NODELIST': '', 'SLURM_NODELIST': 'c[1-2]'}, port=1).coordinator_address == 'c1:1'
  )


def test_no_cluster_a_single_task_and_tpu_pods():
  assert cluster.detect({}) is None
  assert (
    cluster.detect({'SLURM_JOB_ID': '1', 'SLURM_NTASKS': '1', 'SLURM_PROCID': '0', 'SLURM_JOB_NODELIST': 'n1'}) is None
  )  # nothing to coordinate
  tpu = cluster.detect({'TPU_WORKER_HOSTNAMES': 't0,t1,t2,t3'})
  assert tpu.source == 'tpu' and tpu.kwargs() == {}  # jax.distributed reads the TPU metadata


def test_main_passes_slurm_args_and_explicit_flags_win():
  env = slurm_env(GPUS, 9)
  assert distributed_kwargs('auto', env) == {
    'coordinator_address': 'gpu001:12587',
    'num_processes': 32,
    'process_id': 9,
    'local_device_ids': [1],
  }
  forced = distributed_kwargs('auto', env, coordinator_address='h:1', num_processes=32, process_id=5)
  assert forced == {'coordinator_address': 'h:1', 'num_processes': 32, 'process_id': 5, 'local_device_ids': [1]}
  assert distributed_kwargs('off', env) is None
  assert distributed_kwargs('auto', {}) is None
  assert distributed_kwargs('on', {}) == {}  # jax's own detection
  assert distributed_kwargs('auto', {}, coordinator_address='127.0.0.1:9', num_processes=2, process_id=1) == {
    'coordinator_address': '127.0.0.1:9',
    'num_processes': 2,
    'process_id': 1,
  }
  assert distributed_kwargs('auto', {'TPU_WORKER_HOSTNAMES': 'a,b'}) == {}
