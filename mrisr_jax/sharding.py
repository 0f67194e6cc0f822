"""The device mesh and how arrays are laid out on it.

Parameters and optimizer states are replicated; batches are split along the `data` axis. Hosts
hand numpy to `global_batch`, which assembles one global jax.Array from every process's share.
"""
from __future__ import annotations

import math

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'


def make_mesh(mesh_cfg, devices=None) -> Mesh:
  """Mesh from `config.mesh` ({axis: size}, one size may be -1 = the remaining devices)."""
  devices = list(devices if devices is not None else jax.devices())
  names = tuple(mesh_cfg.keys())
  sizes = [int(mesh_cfg[n]) for n in names]
  if DATA_AXIS not in names:
    raise ValueError(f'config.mesh must have a {DATA_AXIS!r} axis, got {dict(mesh_cfg)}')
  known = math.prod(s for s in sizes if s != -1)
  if sizes.count(-1) > 1 or len(devices) % known:
    raise ValueError(f'config.mesh={dict(mesh_cfg)} does not fit {len(devices)} devices')
  sizes = [len(devices) // known if s == -1 else s for s in sizes]
  if math.prod(sizes) != len(devices):
    raise ValueError(f'config.mesh={dict(mesh_cfg)} uses {math.prod(sizes)} of {len(devices)} devices')
  try:
    grid = mesh_utils.create_device_mesh(sizes, devices=devices)
  except (ValueError, NotImplementedError, AssertionError):
    grid = np.array(devices).reshape(sizes)
  return Mesh(grid, names)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over `data`, the rest replicated."""
  return NamedSharding(mesh, P(DATA_AXIS))


def data_parallel_size(mesh: Mesh) -> int:
  return mesh.shape[DATA_AXIS]


def global_batch(local: dict, sharding: NamedSharding) -> dict:
  """Each process's local numpy batch -> global jax.Arrays (batch = concatenation over processes)."""
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local)


def host_replicated_to_global(x: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """A global array from data that every process holds in full (validation slices)."""
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
