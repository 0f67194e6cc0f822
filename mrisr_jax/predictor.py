"""A generator with fixed variables, run over stacks of LR slices: what training validation, `infer`
and `evaluate` all use to super-resolve.

  sr = Predictor(model, variables, tile=0, overlap=16, batch=0)(lr)   # (N, h, w) -> (N, h*f, w*f)

Slices are edge-padded to the model's size multiple and cropped back, and optionally cut into
overlapping tiles (`mrisr_jax.tiling`); the forward pass is jitted once per process for each model
and batch shape, however many Predictors or files use it.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from mrisr_jax import tiling

_JITTED = None


def _jitted_predict():
  """One module-level jit of steps.predict with the (hashable) model static."""
  global _JITTED
  if _JITTED is None:
    from mrisr_jax import compile_options, steps

    _JITTED = compile_options.jit(steps.predict, static_argnames='g_model')
  return _JITTED


class Geometry(NamedTuple):
  """What tiling needs to know of a generator (validation, which gets no model, passes this)."""

  scale: int
  size_multiple: int
  upsampled_input: bool = False
  fixed_size: int = 0  # > 0: the model's one HR input side; larger slices are tiled (tiling.super_resolve)


class Predictor:
  """model: the flax generator (or a Geometry when `apply` is given); variables: its
  {'params', ['batch_stats']}.

  tile: LR tile side (0: whole slices); overlap: LR pixels of context each tile side drops;
  batch: tiles per forward pass (0: by size, tiling.AUTO_BATCH_PIXELS); fixed_batch: always run
  `batch` tiles per call (one compiled, sharded shape for validation).
  apply: (variables, x (B, H, W, C)) -> SR; default steps.predict, jitted once, on variables put on
  the default device. Validation passes its mesh-sharded compiled predict instead.
  """

  def __init__(
    self,
    model,
    variables,
    *,
    tile: int = 0,
    overlap: int = 16,
    batch: int = 0,
    fixed_batch: bool = False,
    apply: Callable | None = None,
  ):
    self.geometry = Geometry(
      int(model.scale),
      int(model.size_multiple),
      bool(getattr(model, 'upsampled_input', False)),
      int(getattr(model, 'fixed_size', 0)),
    )
    self.tile, self.overlap, self.batch, self.fixed_batch = tile, overlap, batch, fixed_batch
    if apply is None:
      import jax

      jitted = _jitted_predict()
      variables = jax.device_put(variables)
      apply = lambda v, x: jitted(v, x, g_model=model)  # noqa: E731
    self.variables, self._apply = variables, apply

  def forward(self, x: np.ndarray) -> np.ndarray:
    """One batch (B, H, W, C) at the model's input size -> numpy SR (B, H*f, W*f, C)."""
    return np.asarray(self._apply(self.variables, x))

  def __call__(
    self,
    lr: np.ndarray,
    *,
    factors: tuple[int, int] | None = None,
    bicubic: np.ndarray | None = None,
    progress: Callable[[int], None] | None = None,
  ) -> np.ndarray:
    """lr (N, h, w) float32 in [0, 1] -> SR (N, h*fy, w*fx) in [0, 1]; (N, h, w, 1) -> (N, H, W, 1).

    factors: (fy, fx) of the LR grid, (scale, scale) by default (anisotropic pairs need a model
    that takes the upsampled input); bicubic: the clipped bicubic of `lr` when the caller has it;
    progress: called with the number of slices finished after each batch.
    """
    lr = np.asarray(lr)
    channel = lr.ndim == 4 and lr.shape[-1] == 1  # the models' NHWC layout, one (grey) channel
    if channel:
      lr = lr[..., 0]
      bicubic = None if bicubic is None else np.asarray(bicubic)[..., 0]
    g = self.geometry
    sr = tiling.super_resolve(
      self.forward,
      lr,
      g.scale,
      g.size_multiple,
      g.upsampled_input,
      tile=self.tile,
      overlap=self.overlap,
      batch=self.batch,
      factors=factors,
      bicubic=bicubic,
      fixed_batch=self.fixed_batch,
      progress=progress,
      fixed_size=g.fixed_size,
    )
    return sr[..., None] if channel else sr
