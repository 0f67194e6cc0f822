"""Whole-slice super-resolution in batches, optionally in overlapping tiles to bound memory.

Without tiling a slice is run as validation runs it (evaluation.Validator.super_resolve): edge-padded
at the bottom/right to the model's size multiple, the output cropped back. With tiling, every tile
has one shape (the tile size, legal for the size multiple), so the jitted predict compiles once;
tiles start every tile - 2 * overlap pixels, the last one flush with the bottom/right edge, and
each keeps only its interior (an overlap-wide border is dropped except at the image edges). When
the model's receptive field fits in the overlap, tiled and untiled outputs agree to rounding.

Models that take the bicubic-upsampled LR (SRCNN, DRRN) are tiled in the HR grid: `tile` and
`overlap` are given in LR pixels and scaled by the scale there.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from mrisr_jax.data.degrade import bicubic_resize


class TilingError(ValueError):
  """A tile size that cannot work (too small for the overlap)."""


_JITTED = None


def make_predict_fn(model, variables) -> Callable[[np.ndarray], np.ndarray]:
  """x (B, H, W, C) -> numpy SR. One module-level jit with the (hashable) model static, so each
  model and tile/batch shape compiles once per process, however many files are processed."""
  global _JITTED
  import jax
  from mrisr_jax import steps
  if _JITTED is None:
    _JITTED = jax.jit(steps.predict, static_argnames='g_model')
  variables = jax.device_put(variables)
  return lambda x: np.asarray(_JITTED(variables, x, g_model=model))


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


def super_resolve(predict_fn: Callable, lr: np.ndarray, scale: int, size_multiple: int,
                  upsampled_input: bool, tile: int = 0, overlap: int = 16,
                  batch: int = 8) -> np.ndarray:
  """lr (S, h, w) float32 in [0, 1] -> SR (S, h*scale, w*scale) in [0, 1].

  predict_fn: x (B, H, W, 1) -> (B, H*f, W*f, 1), f = 1 for upsampled-input models, else scale.
  tile: LR tile side (0: whole slices); overlap: LR pixels of context each tile side drops.
  """
  lr = np.asarray(lr, np.float32)
  if lr.ndim != 3 or min(lr.shape) < 1:
    raise TilingError(f'super_resolve: expected a non-empty (S, h, w) stack, got shape {lr.shape}')
  if tile < 0 or overlap < 0 or batch < 1:
    raise TilingError(f'tile ({tile}) and overlap ({overlap}) must be >= 0 and batch ({batch}) >= 1')
  n, h, w = lr.shape
  if upsampled_input:   # the model eats (and is tiled in) the HR grid
    x = np.clip(bicubic_resize(lr, h * scale, w * scale), 0.0, 1.0).astype(np.float32)
    f, grid = 1, scale
  else:
    x, f, grid = lr, scale, 1
  H, W = x.shape[1:]
  m = max(1, int(size_multiple))
  ov = overlap * grid
  if tile > 0 and (h > tile or w > tile):
    t = max(m, (tile * grid) // m * m)
    if t <= 2 * ov:
      raise TilingError(f'tile {tile} (legal size {t // grid} for a size multiple of {m}) must exceed '
                        f'2 * overlap = {2 * overlap}; use a larger --tile or a smaller --overlap')
    th, tw = min(t, _round_up(H, m)), min(t, _round_up(W, m))
  else:   # whole slices: one tile each
    th, tw, ov = _round_up(H, m), _round_up(W, m), 0
  # edge-pad the bottom/right so a tile never runs past the image (as validation pads)
  x = np.pad(x, [(0, 0), (0, max(0, th - H)), (0, max(0, tw - W))], mode='edge')
  ys, xs = _starts(H, th, th - 2 * ov), _starts(W, tw, tw - 2 * ov)
  jobs = [(k, y, xx) for k in range(n) for y in ys for xx in xs]
  out = np.zeros((n, H * f, W * f), np.float32)
  bsz = min(batch, len(jobs))   # one batch shape per call: the last batch is filled by repeats
  for i in range(0, len(jobs), bsz):
    chunk = jobs[i:i + bsz]
    tiles = np.stack([x[k, y:y + th, xx:xx + tw] for k, y, xx in chunk])
    if len(chunk) < bsz:
      tiles = np.concatenate([tiles, np.repeat(tiles[-1:], bsz - len(chunk), axis=0)])
    sr = np.asarray(predict_fn(tiles[..., None]))[:len(chunk), ..., 0]
    for (k, y, xx), o in zip(chunk, sr):
      y0, y1 = _kept(y, th, H, ov)
      x0, x1 = _kept(xx, tw, W, ov)
      out[k, y0 * f:y1 * f, x0 * f:x1 * f] = o[(y0 - y) * f:(y1 - y) * f, (x0 - xx) * f:(x1 - xx) * f]
  return np.clip(out, 0.0, 1.0)
