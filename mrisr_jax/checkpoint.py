"""Orbax checkpoints: train state, run metadata (stage, config, best PSNR) and the data iterator.

Saves are asynchronous and atomic (orbax writes to a temporary directory and renames it), so a
crash or a non-finite loss never damages the last good checkpoint. The latest N are kept, plus the
best by validation PSNR.
"""
from __future__ import annotations

import pathlib
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm

BEST_METRIC = 'val_psnr'


class Checkpointer:

  def __init__(self, workdir: str | pathlib.Path, keep: int = 3, async_save: bool = True):
    self.directory = pathlib.Path(workdir).absolute() / 'checkpoints'
    policy = cm.AnyPreservationPolicy([
        cm.LatestN(n=keep),
        cm.BestN(get_metric_fn=lambda m: m[BEST_METRIC], n=1, keep_checkpoints_without_metrics=False),
    ])
    options = ocp.CheckpointManagerOptions(create=True, preservation_policy=policy,
                                           enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def best_step(self) -> int | None:
    return self.manager.best_step()

  def save(self, step: int, state: Any, meta: dict, data_iter: Any | None,
           metrics: dict | None = None) -> None:
    items = dict(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    if data_iter is not None:
      items['data_iter'] = grain.checkpoint.CheckpointSave(data_iter)
    self.manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)

  def restore_meta(self, step: int) -> dict:
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']

  def has_data_iter(self, step: int) -> bool:
    """False for checkpoints written without the pipeline's position (mrisr_jax.import_torch)."""
    return (self.directory / str(step) / 'data_iter').exists()

  def restore(self, step: int, abstract_state: Any, data_iter: Any | None = None) -> tuple[Any, dict]:
    """abstract_state: ShapeDtypeStructs carrying the target shardings (any mesh).

    The data iterator's position is restored too when the checkpoint holds one.
    """
    items = dict(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore())
    if data_iter is not None and self.has_data_iter(step):
      items['data_iter'] = grain.checkpoint.CheckpointRestore(data_iter)
    out = self.manager.restore(step, args=ocp.args.Composite(**items))
    return out['state'], out['meta']

  def restore_unsharded(self, step: int) -> dict:
    """The saved train state as a plain dict of host arrays (inspection, export, tests)."""
    return self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))['state']

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def abstract_like(tree: Any, shardings: Any) -> Any:
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
