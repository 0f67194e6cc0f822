"""Orbax checkpoints: train state and run metadata (stage, config, best PSNR, data position).

Saves are asynchronous and atomic (orbax writes to a temporary directory and renames it), so a
crash or a non-finite loss never damages the last good checkpoint; half-written temporary
directories are ignored. The latest N are kept, plus the best by validation PSNR. A step that no
longer restores (damaged files) is moved aside, never deleted, and the newest step that restores is
used instead. The input pipeline's position is the number of samples consumed (`data_position` in
the metadata), so a checkpoint resumes on any number of processes and devices.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from orbax.checkpoint import checkpoint_managers as cm

BEST_METRIC = 'val_psnr'
DAMAGED_DIR = 'checkpoints_damaged'


def workdir_path(workdir: str | epath.PathLike) -> epath.Path:
  """The workdir as an epath: `gs://...` and other URIs stay URIs; local paths become absolute."""
  path = epath.Path(workdir)
  return path if '://' in str(workdir) else path.absolute()


class Checkpointer:
  def __init__(self, workdir: str | epath.PathLike, keep: int = 3, async_save: bool = True):
    self.workdir = workdir_path(workdir)
    self.directory = self.workdir / 'checkpoints'
    policy = cm.AnyPreservationPolicy(
      [
        cm.LatestN(n=keep),
        cm.BestN(get_metric_fn=lambda m: m[BEST_METRIC], n=1, keep_checkpoints_without_metrics=False),
      ]
    )
    options = ocp.CheckpointManagerOptions(
      create=True, preservation_policy=policy, enable_async_checkpointing=async_save
    )
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def best_step(self) -> int | None:
    return self.manager.best_step()

  def save(self, step: int, state: Any, meta: dict, metrics: dict | None = None) -> None:
    items = dict(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    self.manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)

  def restore_meta(self, step: int) -> dict:
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']

  def has_data_iter(self, step: int) -> bool:
    """False for checkpoints written without the pipeline's position (mrisr_jax.import_torch)."""
    return 'data_position' in self.restore_meta(step)

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    """abstract_state: ShapeDtypeStructs carrying the target shardings (any mesh)."""
    items = dict(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore())
    out = self.manager.restore(step, args=ocp.args.Composite(**items))
    return out['state'], out['meta']

  def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict] | None:
    """(step, state, meta) of the newest step that restores, or None when there is none.

    A step that fails (on any process) is reported in one line, moved to `checkpoints_damaged/`
    beside `checkpoints/` by process 0, and the previous step is tried.
    """
    while (step := self.latest_step()) is not None:
      try:
        state, meta = self.restore(step, abstract_state)
        error = None
      except Exception as e:  # noqa: BLE001  (orbax/tensorstore raise many types for damaged files)
        state = meta = None
        error = ' '.join(str(e).split())[:300] or type(e).__name__
      if _all_processes_agree(error is None):
        return step, state, meta
      self._move_aside(step, error or 'it failed to restore on another process')
    return None

  def _move_aside(self, step: int, reason: str) -> None:
    source = self.directory / str(step)
    target = self.workdir / DAMAGED_DIR / f'{step}-{time.strftime("%Y%m%d-%H%M%S")}'
    logging.warning(
      'checkpoint step %d at %s does not restore (%s): moved to %s; trying the previous step',
      step,
      source,
      reason,
      target,
    )
    if jax.process_index() == 0:
      target.parent.mkdir(parents=True, exist_ok=True)
      source.rename(target)
    _barrier(f'mrisr_move_aside_{step}')
    self.manager.reload()

  def restore_unsharded(self, step: int) -> dict:
    """The saved train state as a plain dict of host arrays (inspection, export, tests)."""
    return self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))['state']

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def _all_processes_agree(ok: bool) -> bool:
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils

  return bool(np.all(multihost_utils.process_allgather(np.asarray(ok, np.int32))))


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def abstract_like(tree: Any, shardings: Any) -> Any:
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
