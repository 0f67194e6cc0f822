"""Whole-slice super-resolution in batches, optionally in overlapping tiles to bound memory.

Without tiling a slice is edge-padded at the bottom/right to the model's size multiple and the
output cropped back (`mrisr_jax.predictor.Predictor` runs every model through here for training
validation, `infer` and `evaluate`). With tiling, every tile has one shape (the tile size, legal for
the size multiple), so the jitted predict compiles once; tiles start every tile - 2 * overlap
pixels, the last one flush with the bottom/right edge, and each keeps only its interior (an
overlap-wide border is dropped except at the image edges). When the model's receptive field fits
in the overlap, tiled and untiled outputs agree to rounding.

Models that take the bicubic-upsampled LR (SRCNN, DRRN) are tiled in the HR grid: `tile` and
`overlap` are given in LR pixels and scaled by each axis's factor there. Those models also serve
thick-slice (through-plane) data, whose LR grid is coarse along one axis only (factors (s, 1)).

`faithful_super_resolve` wraps a [0, 1] model for inputs in any units (what `infer` writes): the
in-range part goes through the model, the rest is upsampled bicubically and added back.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from mrisr_jax.data.degrade import bicubic_resize
from mrisr_jax.data.errors import OneLineError


# batch=0: as many tiles per forward pass as keep it under this many output pixels (at most 8).
# SRCNN x2 at 1024x1024 holds ~0.7 GB of activations per plane on CPU: activations, not the
# volume, set the memory of whole-volume inference (tools/benchmark_infer.py).
AUTO_BATCH_PIXELS = 1 << 20


class TilingError(OneLineError):
  """A tile size that cannot work (too small for the overlap)."""


def _round_up(n: int, m: int) -> int:
  return -(-n // m) * m


def _starts(length: int, size: int, stride: int) -> list[int]:
  """Tile starts along an axis: every `stride`, the last flush with the end."""
  if length <= size:
    return [0]
  starts = list(range(0, length - size, stride))
  return starts + [length - size]


def _kept(start: int, size: int, length: int, overlap: int) -> tuple[int, int]:
  """The part of a tile [start, start + size) that is kept: its interior, or up to an image edge."""
  lo = start + overlap if start > 0 else 0
  hi = start + size - overlap if start + size < length else length
  return lo, hi


def super_resolve(
  predict_fn: Callable,
  lr: np.ndarray,
  scale: int,
  size_multiple: int,
  upsampled_input: bool,
  tile: int = 0,
  overlap: int = 16,
  batch: int = 8,
  *,
  factors: tuple[int, int] | None = None,
  bicubic: np.ndarray | None = None,
  fixed_batch: bool = False,
  progress: Callable[[int], None] | None = None,
  fixed_size: int = 0,
) -> np.ndarray:
  """lr (S, h, w) float32 in [0, 1] -> SR (S, h*fy, w*fx) in [0, 1].

  predict_fn: x (B, H, W, 1) -> (B, H*f, W*f, 1), f = 1 for upsampled-input models, else scale.
  tile: LR tile side (0: whole slices); overlap: LR pixels of context each tile side drops.
  batch: tiles per forward pass; 0 picks it by size (AUTO_BATCH_PIXELS).
  factors: (fy, fx) of the LR grid, (scale, scale) by default; an anisotropic (thick-slice) pair
    such as (scale, 1) needs a model that takes the upsampled input.
  bicubic: the clipped bicubic of `lr` when the caller has it (upsampled-input models eat it).
  fixed_batch: always run `batch` tiles per call (validation keeps one compiled, sharded shape);
    otherwise a stack smaller than `batch` runs as one smaller batch.
  progress: called with the number of slices finished after each batch.
  fixed_size: > 0 for a model with one input side in the HR grid (TransMRSR pads smaller inputs itself):
    slices larger than it run as fixed_size tiles overlapping by fixed_size // 8 HR pixels (`tile` and
    `overlap` are not used).
  """
  lr = np.asarray(lr, np.float32)
  if lr.ndim != 3 or min(lr.shape) < 1:
    raise TilingError(f'super_resolve: expected a non-empty (S, h, w) stack, got shape {lr.shape}')
  if tile < 0 or overlap < 0 or batch < 0:
    raise TilingError(f'tile ({tile}), overlap ({overlap}) and batch ({batch}) must be >= 0')
  n, h, w = lr.shape
  fy, fx = (scale, scale) if factors is None else (int(factors[0]), int(factors[1]))
  if upsampled_input:  # the model eats (and is tiled in) the HR grid
    x = bicubic if bicubic is not None else np.clip(bicubic_resize(lr, h * fy, w * fx), 0.0, 1.0)
    x = np.asarray(x, np.float32)
    if x.shape != (n, h * fy, w * fx):
      raise TilingError(f'super_resolve: bicubic input {x.shape} is not the LR {lr.shape} times {(fy, fx)}')
    f, grid = 1, (fy, fx)
  else:
    if (fy, fx) != (scale, scale):
      raise TilingError(
        f'super_resolve: LR factors {(fy, fx)} need a model that takes the upsampled '
        f'input; this one upsamples both axes by {scale}'
      )
    x, f, grid = lr, scale, (1, 1)
  H, W = x.shape[1:]
  m = max(1, int(size_multiple))
  ovy, ovx = overlap * grid[0], overlap * grid[1]
  if fixed_size > 0:  # the model's own side; it pads a smaller tile itself
    th, tw = min(fixed_size, H), min(fixed_size, W)
    ovy, ovx = (fixed_size // 8 if n_ > fixed_size else 0 for n_ in (H, W))
  elif tile > 0 and (h > tile or w > tile):
    ty, tx = (max(m, (tile * g) // m * m) for g in grid)
    if ty <= 2 * ovy or tx <= 2 * ovx:
      raise TilingError(
        f'tile {tile} (legal size {min(ty // grid[0], tx // grid[1])} for a size multiple '
        f'of {m}) must exceed 2 * overlap = {2 * overlap}; use a larger --tile or a '
        'smaller --overlap'
      )
    th, tw = min(ty, _round_up(H, m)), min(tx, _round_up(W, m))
  else:  # whole slices: one tile each
    th, tw, ovy, ovx = _round_up(H, m), _round_up(W, m), 0, 0
  # edge-pad the bottom/right so a tile never runs past the image (as validation pads)
  x = np.pad(x, [(0, 0), (0, max(0, th - H)), (0, max(0, tw - W))], mode='edge')
  ys, xs = _starts(H, th, th - 2 * ovy), _starts(W, tw, tw - 2 * ovx)
  jobs = [(k, y, xx) for k in range(n) for y in ys for xx in xs]
  out = np.zeros((n, H * f, W * f), np.float32)
  if batch == 0:
    batch = max(1, min(8, AUTO_BATCH_PIXELS // (th * tw * f * f)))
  bsz = batch if fixed_batch else min(batch, len(jobs))  # the last batch is filled by repeats
  for i in range(0, len(jobs), bsz):
    chunk = jobs[i : i + bsz]
    tiles = np.stack([x[k, y : y + th, xx : xx + tw] for k, y, xx in chunk])
    if len(chunk) < bsz:
      tiles = np.concatenate([tiles, np.repeat(tiles[-1:], bsz - len(chunk), axis=0)])
    sr = np.asarray(predict_fn(tiles[..., None]))[: len(chunk), ..., 0]
    for (k, y, xx), o in zip(chunk, sr):
      y0, y1 = _kept(y, th, H, ovy)
      x0, x1 = _kept(xx, tw, W, ovx)
      out[k, y0 * f : y1 * f, x0 * f : x1 * f] = o[(y0 - y) * f : (y1 - y) * f, (x0 - xx) * f : (x1 - xx) * f]
    if progress is not None:
      progress(jobs[i + bsz][0] if i + bsz < len(jobs) else n)  # slices whose tiles are all done
  return np.clip(out, 0.0, 1.0)


def faithful_super_resolve(
  sr_fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, scale: float, factors: tuple[int, int]
) -> np.ndarray:
  """x (S, h, w) in any units -> SR (S, h*fy, w*fx) float32 in the same units, nothing clipped.

  With u = x / scale and c = clip(u, 0, 1) (the part inside the model's range):
      SR = scale * (sr_fn(c) + bicubic(u - c)),
  sr_fn mapping [0, 1] stacks to [0, 1] SR stacks (the model), bicubic the upsampling the model's
  degradation is scored against (`degrade.bicubic_resize`, a = -0.75, what evaluate's baseline is).
  Voxels above `scale` or below 0 keep their excess: it is upsampled bicubically and added back,
  so SR - bicubic(x) = scale * (sr_fn(c) - bicubic(c)), at most about `scale` anywhere, and a model
  equal to bicubic gives exactly bicubic(x). A stack inside [0, scale] is scale * sr_fn(x / scale).
  """
  x = np.asarray(x, np.float32)
  fy, fx = (int(f) for f in factors)
  u = x / np.float32(scale)
  c = np.clip(u, 0.0, 1.0)
  sr = np.asarray(sr_fn(c), np.float32)
  want = (x.shape[0], x.shape[1] * fy, x.shape[2] * fx)
  if sr.shape != want:  # checked here too: a wrong shape would not add up with the residual
    raise TilingError(f'the model returned a stack of shape {sr.shape}, expected {want}')
  residual = u - c
  if np.any(residual):
    sr = sr + bicubic_resize(residual, want[1], want[2])
  return sr * np.float32(scale)
