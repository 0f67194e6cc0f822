"""The arguments of jax.distributed.initialize from a cluster's environment (pure: a mapping in, args out).

SLURM: computed here from the srun task's variables, because jax's own SLURM detection binds every
process to one GPU (local_device_ids=[SLURM_LOCALID]), which is right for one task per GPU but uses
1 of 8 GPUs with one task per node. Both layouts work here:

- one task per GPU (--ntasks-per-node=8, no per-task GPU binding): local_device_ids=[SLURM_LOCALID];
- one task per node (--ntasks-per-node=1): every GPU of the node;
- k tasks per node sharing G GPUs: G/k consecutive GPUs each;
- tasks that srun already bound to their GPUs (--gpus-per-task, CUDA_VISIBLE_DEVICES shows fewer
  GPUs than the node has): every GPU the task sees.

TPU pods (and multislice): jax.distributed.initialize() with no arguments reads the TPU metadata,
so `detect` returns empty arguments there and lets jax do it.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Mapping

from mrisr_jax.errors import UserError

DEFAULT_PORT = 12345  # plus SLURM_JOB_ID % 1000, so two jobs sharing a node do not collide
TPU_VARS = ('TPU_WORKER_HOSTNAMES', 'MEGASCALE_COORDINATOR_ADDRESS')


class ClusterError(UserError, ValueError):
  """The cluster environment is inconsistent (one line naming the variables)."""


@dataclasses.dataclass(frozen=True)
class DistributedArgs:
  source: str  # 'slurm' or 'tpu'
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  local_device_ids: tuple[int, ...] | None = None

  def kwargs(self) -> dict:
    """The keyword arguments of jax.distributed.initialize (unset ones left to jax)."""
    names = ('coordinator_address', 'num_processes', 'process_id', 'local_device_ids')
    out = {n: getattr(self, n) for n in names if getattr(self, n) is not None}
    if 'local_device_ids' in out:
      out['local_device_ids'] = list(out['local_device_ids'])
    return out


def expand_hostlist(hostlist: str) -> list[str]:
  """SLURM's compact host list -> host names: 'gpu[001-003],b7' -> ['gpu001', 'gpu002', 'gpu003', 'b7'].

  Ranges keep their zero padding; several bracket groups in one name ('r[1-2]n[1-2]') expand as a product.
  """
  hosts, depth, start = [], 0, 0
  for i, ch in enumerate(hostlist + ','):
    if ch == '[':
      depth += 1
    elif ch == ']':
      depth -= 1
    elif ch == ',' and depth == 0:
      if hostlist[start:i].strip():
        hosts.extend(_expand_one(hostlist[start:i].strip()))
      start = i + 1
  if depth:
    raise ClusterError(f'bad SLURM host list {hostlist!r}: unbalanced brackets')
  return hosts


def _expand_one(name: str) -> list[str]:
  m = re.search(r'\[([^\]]*)\]', name)
  if not m:
    return [name]
  head, tail = name[: m.start()], name[m.end() :]
  values = []
  for part in m.group(1).split(','):
    lo, _, hi = part.strip().partition('-')
    if not lo.isdigit() or (hi and not hi.isdigit()):
      raise ClusterError(f'bad SLURM host list range {part!r} in {name!r}')
    width = len(lo)
    values += [str(v).zfill(width) for v in range(int(lo), int(hi or lo) + 1)]
  return [head + v + rest for v in values for rest in _expand_one(tail)]


def expand_counts(spec: str) -> list[int]:
  """SLURM's per-node counts: '8(x4)' -> [8, 8, 8, 8]; '2(x2),1' -> [2, 2, 1]."""
  out = []
  for part in spec.split(','):
    m = re.fullmatch(r'\s*(\d+)\s*(?:\(x(\d+)\))?\s*', part)
    if not m:
      raise ClusterError(f'bad SLURM per-node count {spec!r}')
    out += [int(m.group(1))] * int(m.group(2) or 1)
  return out


def _first(env: Mapping[str, str], *names: str) -> str | None:
  return next((env[n] for n in names if env.get(n, '') != ''), None)


def _gpu_count(spec: str) -> int:
  """'8', 'h100:8', '8(x4)' (SLURM_GPUS_PER_NODE forms) -> 8."""
  return int(re.split(r'[(,]', spec.rsplit(':', 1)[-1])[0])


def slurm_args(env: Mapping[str, str], port: int | None = None) -> DistributedArgs | None:
  """The arguments for this srun task; None outside an srun step or for a 1-task step."""
  nodelist = _first(env, 'SLURM_STEP_NODELIST', 'SLURM_JOB_NODELIST', 'SLURM_NODELIST')
  ntasks = _first(env, 'SLURM_STEP_NUM_TASKS', 'SLURM_NTASKS', 'SLURM_NPROCS')
  procid = _first(env, 'SLURM_PROCID')
  if nodelist is None or ntasks is None or procid is None or int(ntasks) <= 1:
    return None  # no srun step, or nothing to coordinate
  hosts = expand_hostlist(nodelist)
  num_processes, process_id = int(ntasks), int(procid)
  local_id = int(_first(env, 'SLURM_LOCALID') or 0)
  node_id = int(_first(env, 'SLURM_NODEID') or 0)
  if not 0 <= process_id < num_processes:
    raise ClusterError(f'SLURM_PROCID={process_id} is not below the task count {num_processes}')

  per_node = _first(env, 'SLURM_STEP_TASKS_PER_NODE', 'SLURM_TASKS_PER_NODE')
  if per_node is not None:
    counts = expand_counts(per_node)
    tasks_here = counts[min(node_id, len(counts) - 1)]
  elif _first(env, 'SLURM_NTASKS_PER_NODE') is not None:
    tasks_here = int(env['SLURM_NTASKS_PER_NODE'])
  else:
    tasks_here = max(1, num_processes // len(hosts))

  gpus = _first(env, 'SLURM_GPUS_ON_NODE', 'SLURM_GPUS_PER_NODE')
  visible = [d for d in env.get('CUDA_VISIBLE_DEVICES', '').split(',') if d.strip()]
  n_gpus = _gpu_count(gpus) if gpus is not None else len(visible)
  if visible and len(visible) < n_gpus:
    devices = tuple(range(len(visible)))  # srun bound this task to its GPUs: use all it sees
  elif n_gpus == 0:
    devices = None  # no GPUs known (CPU job): let jax use what it finds
  elif tasks_here == 1:
    devices = tuple(range(n_gpus))
  elif n_gpus % tasks_here == 0:
    k = n_gpus // tasks_here
    devices = tuple(range(local_id * k, (local_id + 1) * k))
  else:
    raise ClusterError(f'{tasks_here} tasks on a node with {n_gpus} GPUs: use one task per node or one per GPU')

  if port is None:
    port = DEFAULT_PORT + int(_first(env, 'SLURM_JOB_ID') or 0) % 1000
  return DistributedArgs('slurm', f'{hosts[0]}:{port}', num_processes, process_id, devices)


def is_tpu_pod(env: Mapping[str, str]) -> bool:
  return any(env.get(v) for v in TPU_VARS)


def detect(env: Mapping[str, str], port: int | None = None) -> DistributedArgs | None:
  """The cluster this process runs in, with what jax.distributed.initialize needs; None if none.

  port: the coordinator's port on SLURM (None: JAX_COORDINATOR_PORT, else DEFAULT_PORT + job offset).
  """
  if port is None and env.get('JAX_COORDINATOR_PORT'):
    port = int(env['JAX_COORDINATOR_PORT'])
  args = slurm_args(env, port)
  if args is not None:
    return args
  if is_tpu_pod(env):
    return DistributedArgs('tpu')  # jax reads the TPU metadata itself
  return None
