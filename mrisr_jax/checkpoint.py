"""Orbax checkpoints: train state and run metadata (stage, config, best PSNR, data position).

Saves are asynchronous and atomic (orbax writes to a temporary directory and renames it), so a
crash or a non-finite loss never damages the last good checkpoint; half-written temporary
directories are ignored. The latest N are kept, plus the best by validation PSNR. A step that no
longer restores (damaged files) is moved aside, never deleted, and the newest step that restores is
used instead. The input pipeline's position is the number of samples consumed (`data_position` in
the metadata), so a checkpoint resumes on any number of processes and devices.
"""

from __future__ import annotations

import contextlib
import errno
import shutil
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from orbax.checkpoint import checkpoint_managers as cm

from mrisr_jax.errors import UserError

BEST_METRIC = 'val_psnr'
DAMAGED_DIR = 'checkpoints_damaged'


def workdir_path(workdir: str | epath.PathLike) -> epath.Path:
  """The workdir as an epath: `gs://...` and other URIs stay URIs; local paths become absolute."""
  path = epath.Path(workdir)
  return path if '://' in str(workdir) else path.absolute()


class DiskFullError(UserError):
  """No room for the next checkpoint; the ones saved before are intact."""


def _is_disk_full(e: BaseException | None) -> bool:
  seen = 0
  while e is not None and seen < 20:  # orbax and tensorstore wrap the OSError in their own types
    if getattr(e, 'errno', None) == errno.ENOSPC or 'No space left on device' in str(e):
      return True
    e, seen = e.__cause__ or e.__context__, seen + 1
  return False


def state_nbytes(state: Any) -> int:
  return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state) if hasattr(x, 'dtype')))


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
    # best_fn makes the manager write each step's metrics to disk and rank steps by them:
    # without it best_step() is the latest step and a resumed run forgets which step was best
    options = ocp.CheckpointManagerOptions(
      create=True,
      preservation_policy=policy,
      enable_async_checkpointing=async_save,
      best_fn=lambda m: m[BEST_METRIC],
      best_mode='max',
    )
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def best_step(self) -> int | None:
    return self.manager.best_step()

  def save(self, step: int, state: Any, meta: dict, metrics: dict | None = None) -> None:
    """Saves asynchronously; a disk without room for it is one line (DiskFullError) before anything
    is written, and a write that runs out of space is reported the same way."""
    self.check_space(step, state_nbytes(state))
    items = dict(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    with self._disk_full_as_one_line(step):
      self.manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)

  def check_space(self, step: int, nbytes: int) -> None:
    if '://' in str(self.directory):
      return
    need = int(nbytes * 1.05) + (8 << 20)  # the arrays plus orbax's metadata
    free = shutil.disk_usage(str(self.directory)).free
    if free < need:
      raise DiskFullError(
        self._disk_full_text(step, f'{free / 2**20:.0f} MiB free, a checkpoint needs about {need / 2**20:.0f} MiB')
      )

  def _disk_full_text(self, step: int, detail: str) -> str:
    last = self.latest_step()
    kept = f'the last good checkpoint (step {last}) is kept' if last is not None else 'no checkpoint was saved yet'
    return (
      f'{self.directory}: no space left to save step {step} ({detail}); {kept}. Free some space and rerun '
      f'the same command to resume'
    )

  @contextlib.contextmanager
  def _disk_full_as_one_line(self, step: int):
    try:
      yield
    except Exception as e:  # noqa: BLE001  (orbax raises its own wrappers of the OSError)
      if _is_disk_full(e):
        raise DiskFullError(self._disk_full_text(step, 'the write failed: No space left on device')) from None
      raise

  def restore_meta(self, step: int) -> dict:
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']

  def newest_meta(self) -> tuple[int, dict] | None:
    """(step, metadata) of the newest checkpoint whose metadata reads (read before restoring, so a
    config that no longer fits the state is caught first), or None when there is none."""
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        return step, self.restore_meta(step)
      except Exception:  # noqa: BLE001  (a damaged step: restore_latest deals with it)
        continue
    return None

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
    with self._disk_full_as_one_line(self.latest_step() or 0):
      self.manager.wait_until_finished()

  def close(self) -> None:
    try:
      self.wait()
    finally:
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
