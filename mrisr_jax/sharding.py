"""The device mesh and how arrays are laid out on it.

The mesh has two axes, `data` and `fsdp` (config.mesh, e.g. {data: 4, fsdp: 2}; fsdp is the inner
axis, so an fsdp group is consecutive devices: one host's GPUs first). Batches are split over both:
data * fsdp batch shards. Parameters, and Adam's mu/nu with them, are sharded over `fsdp` by
regex rules on their '/'-joined path (big_vision style, first match wins): by default every conv or
dense `kernel` has its last (output-channel) axis split over fsdp when that axis divides, and the
rest (biases, norms, BatchNorm statistics, spectral-norm vectors, counters, rng, step) is
replicated. XLA all-gathers a sharded kernel where the step uses it and reduce-scatters its gradient,
so each device holds 1/fsdp of the kernels, gradients and optimizer states (ZeRO-3 / FSDP).

Hosts hand numpy to `global_batch`, which assembles one global jax.Array from every process's share.
"""

from __future__ import annotations

import math
import re
from typing import Any, Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'
FSDP_AXIS = 'fsdp'
AXES = (DATA_AXIS, FSDP_AXIS)  # mesh order: fsdp inner (fast links), data outer
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)

# Rule actions: a PartitionSpec (or tuple of axis names / None, one per array dimension), or one of
FSDP_LAST = 'fsdp_last'  # last axis over fsdp when it divides, else replicated
FSDP_LARGEST = 'fsdp_largest'  # the largest axis that divides over fsdp, else replicated
REPLICATED = 'replicated'
ACTIONS = (FSDP_LAST, FSDP_LARGEST, REPLICATED)

# (regex searched in the '/'-joined path of a parameter, action); first match wins, unmatched = replicated.
# Paths look like 'g_params/afebs/rdb/conv_0/kernel' (conv HWIO, scanned AFEBs stacked in front) or
# 'd_params/down_3/conv/kernel'; Dense kernels are (in, out). Optimizer states take their parameter's
# sharding (matched on the path suffix), whatever the rules say about their own paths.
DEFAULT_RULES = (
  (r'(^|/)kernel$', FSDP_LAST),
  (r'.*', REPLICATED),
)


def rules_for(run) -> tuple:
  """The run's sharding_rules (spec.RunSpec; tried first), then DEFAULT_RULES."""
  return tuple(run.sharding_rules) + DEFAULT_RULES


def _error(message: str) -> ValueError:
  # errors.ConfigError: one line to the user; imported here to keep imports light
  from mrisr_jax.errors import ConfigError

  return ConfigError(message)


def mesh_shape(mesh_cfg, n_devices: int) -> dict[str, int]:
  """{axis: size} in mesh order from `config.mesh`; one size may be -1 (the remaining devices),
  an axis left out has size 1."""
  cfg = {str(k): v for k, v in dict(mesh_cfg).items()}
  for name, size in cfg.items():
    if name not in AXES:
      raise _error(
        f'config.mesh.{name}={size}: no parameter or batch is sharded over {name!r} (known axes: {", ".join(AXES)})'
      )
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or (size < 1 and size != -1):
      raise _error(f'config.mesh.{name}={size!r} must be a positive integer or -1 (the remaining devices)')
  sizes = {a: int(cfg.get(a, 1)) for a in AXES}
  free = [a for a, s in sizes.items() if s == -1]
  if len(free) > 1:
    raise _error(f'config.mesh={cfg}: at most one axis may be -1 (the remaining devices), got {", ".join(free)}')
  known = math.prod(s for s in sizes.values() if s != -1)
  if free:
    if n_devices % known:
      raise _error(f'config.mesh={cfg} does not fit {n_devices} devices ({n_devices} is not a multiple of {known})')
    sizes[free[0]] = n_devices // known
  if math.prod(sizes.values()) != n_devices:
    raise _error(f'config.mesh={cfg} uses {math.prod(sizes.values())} of {n_devices} devices')
  return sizes


def make_mesh(mesh_cfg, devices=None) -> Mesh:
  """Mesh ('data', 'fsdp') from `config.mesh` ({axis: size}, one size may be -1 = the remaining devices)."""
  devices = list(devices if devices is not None else jax.devices())
  sizes = mesh_shape(mesh_cfg, len(devices))
  shape = [sizes[a] for a in AXES]
  try:
    grid = mesh_utils.create_device_mesh(shape, devices=devices)
  except (ValueError, NotImplementedError, AssertionError):
    grid = np.array(devices).reshape(shape)
  return Mesh(grid, AXES)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def _batch_axes(mesh: Mesh) -> tuple[str, ...]:
  return tuple(a for a in BATCH_AXES if a in mesh.axis_names)  # meshes built elsewhere may lack one


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over `data` and `fsdp` together, the rest replicated."""
  return NamedSharding(mesh, P(_batch_axes(mesh)))


def data_parallel_size(mesh: Mesh) -> int:
  """The number of batch shards: data * fsdp."""
  return math.prod(mesh.shape[a] for a in _batch_axes(mesh))


def global_batch(local: dict, sharding: NamedSharding) -> dict:
  """Each process's local numpy batch -> global jax.Arrays (batch = concatenation over processes)."""
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local)


def host_replicated_to_global(x: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """A global array from data that every process holds in full (validation slices)."""
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


# --- parameter and optimizer-state shardings ---


def _key_name(k) -> str:
  for attr in ('key', 'name', 'idx'):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def path_str(path) -> str:
  """A jax key path -> 'g_opt_state/0/mu/afebs/rdb/conv_0/kernel'."""
  return '/'.join(_key_name(k) for k in path)


def check_rules(rules: Sequence) -> list[tuple[re.Pattern, Any]]:
  """Compiled rules; a bad regex or action is a one-line error."""
  out = []
  for rule in rules:
    try:
      regex, action = rule
      pattern = re.compile(regex)
    except (TypeError, ValueError, re.error) as e:
      raise _error(f'sharding rule {rule!r}: expected (regex, action) with a valid regex ({e})') from None
    if isinstance(action, str) and action not in ACTIONS:
      raise _error(
        f'sharding rule {rule!r}: unknown action {action!r} (known: {", ".join(ACTIONS)} or a PartitionSpec)'
      )
    out.append((pattern, action if isinstance(action, str) else P(*action)))
  return out


def _spec_for(action, shape: tuple[int, ...], mesh: Mesh, path: str) -> P:
  n = mesh.shape.get(FSDP_AXIS, 1)
  if action == REPLICATED or (isinstance(action, str) and n == 1):
    return P()
  if action == FSDP_LAST:
    return P(*([None] * (len(shape) - 1)), FSDP_AXIS) if shape and shape[-1] % n == 0 else P()
  if action == FSDP_LARGEST:
    axes = [i for i in range(len(shape)) if shape[i] % n == 0]
    if not axes:
      return P()
    i = max(axes, key=lambda j: (shape[j], j))  # ties: the later axis (output channels)
    return P(*[FSDP_AXIS if j == i else None for j in range(len(shape))])
  # an explicit PartitionSpec: checked here, where the shape is known
  if len(action) > len(shape):
    raise _error(f'sharding rule for {path}: {action} has more entries than the array has axes {shape}')
  for size, axes in zip(shape, action):
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    unknown = [a for a in names if a not in mesh.axis_names]
    if unknown:
      raise _error(f'sharding rule for {path}: {action} names unknown mesh axes {unknown}')
    if size % math.prod(mesh.shape[a] for a in names):
      raise _error(f'sharding rule for {path}: {action} does not divide the shape {shape}')
  return action


def _owner(top: str) -> str | None:
  """'g_opt_state' / 'g_ema_params' -> 'g_params': the parameter tree whose layout the field follows."""
  net = top.split('_', 1)[0]
  return f'{net}_params' if net in ('g', 'd') and top not in ('g_params', 'd_params') else None


def partition_specs(abstract, mesh: Mesh, rules: Sequence = DEFAULT_RULES):
  """A PartitionSpec for every leaf of `abstract` (anything with .shape; e.g. from jax.eval_shape).

  Leaves under g_params / d_params follow the rules. Every other leaf whose path ends with a
  parameter's path (Adam's mu and nu in g_opt_state, the EMA in g_ema_params) and has its shape
  takes that parameter's spec; the rest follow the rules too (unmatched = replicated).
  """
  compiled = check_rules(rules)
  leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract)
  paths = [path_str(p) for p, _ in leaves]

  def by_rules(path, shape):
    action = next((a for pattern, a in compiled if pattern.search(path)), REPLICATED)
    return _spec_for(action, shape, mesh, path)

  params = {}  # 'g_params' -> {relative path: (shape, spec)}
  specs = [None] * len(leaves)
  for i, (path, (_, x)) in enumerate(zip(paths, leaves)):
    top, _, rel = path.partition('/')
    if top in ('g_params', 'd_params'):
      specs[i] = by_rules(path, tuple(x.shape))
      params.setdefault(top, {})[rel] = (tuple(x.shape), specs[i])
  for i, (path, (_, x)) in enumerate(zip(paths, leaves)):
    if specs[i] is not None:
      continue
    parts = path.split('/')
    table = params.get(_owner(parts[0]) or '', {})
    match = next((table['/'.join(parts[k:])] for k in range(1, len(parts)) if '/'.join(parts[k:]) in table), None)
    same_shape = match is not None and match[0] == tuple(x.shape)
    specs[i] = match[1] if same_shape else by_rules(path, tuple(x.shape))
  return jax.tree_util.tree_unflatten(treedef, specs)


def state_shardings(mesh: Mesh, abstract_state, rules: Sequence = DEFAULT_RULES):
  """A NamedSharding for every leaf of the train state (a TrainState of ShapeDtypeStructs from
  jax.eval_shape, or of arrays). A mesh with fsdp > 1 on which the rules shard no parameter is
  refused (one line): those devices would only repeat the data axis's work with smaller batches."""
  specs = partition_specs(abstract_state, mesh, rules)
  n = mesh.shape.get(FSDP_AXIS, 1)
  if n > 1 and not any(
    FSDP_AXIS in jax.tree.leaves(tuple(s)) for s in jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P))
  ):
    raise _error(
      f'config.mesh.fsdp={n}: no parameter is sharded over {FSDP_AXIS!r} (the sharding rules match no '
      f'parameter with an axis divisible by {n}); use config.mesh.data instead'
    )
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P))


def sharded_fraction(abstract_state, shardings, roots: tuple[str, ...] = ('g_params', 'd_params')) -> float:
  """The fraction of the parameter bytes (under `roots`) that is split over more than one device."""
  total = split = 0
  flat = jax.tree_util.tree_flatten_with_path(abstract_state)[0]
  for (path, x), s in zip(flat, jax.tree.leaves(shardings)):
    if path_str(path).split('/')[0] in roots:
      nbytes = math.prod(x.shape) * np.dtype(x.dtype).itemsize
      total += nbytes
      split += nbytes if not s.is_fully_replicated else 0
  return split / total if total else 0.0


# --- compiled memory ---

MEMORY_FIELDS = (
  ('arguments', 'argument_size_in_bytes'),
  ('outputs', 'output_size_in_bytes'),
  ('aliased', 'alias_size_in_bytes'),
  ('temporaries', 'temp_size_in_bytes'),
  ('generated code', 'generated_code_size_in_bytes'),
)


def memory_stats(compiled) -> dict[str, int] | None:
  """Per-device bytes from `compiled.memory_analysis()`, plus 'total' (arguments + outputs - aliased +
  temporaries + generated code: what one step holds at its peak); None where the backend has none."""
  try:
    m = compiled.memory_analysis()
  except (NotImplementedError, RuntimeError, AttributeError, TypeError):
    return None
  if isinstance(m, (list, tuple)):  # some versions: one entry per device
    m = m[0] if m else None
  if m is None:
    return None
  out = {name: int(getattr(m, attr, 0) or 0) for name, attr in MEMORY_FIELDS}
  out['total'] = out['arguments'] + out['outputs'] - out['aliased'] + out['temporaries'] + out['generated code']
  return out


def memory_report(compiled) -> str:
  """One line: the compiled step's memory per device in MiB."""
  stats = memory_stats(compiled)
  if stats is None:
    return 'memory per device: not reported by this backend'
  mib = {k: v / 2**20 for k, v in stats.items()}
  return (
    'memory per device: '
    + ', '.join(f'{k} {mib[k]:.1f} MiB' for k, _ in MEMORY_FIELDS)
    + f'; total {mib["total"]:.1f} MiB'
  )
