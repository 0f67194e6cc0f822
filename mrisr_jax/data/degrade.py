"""Image degradations in numpy, acting on the last two axes (..., H, W).

* `area_downsample`: block mean, which is what OpenCV's INTER_AREA computes for
  integer factors (the LR images of the training pipeline).
* `bicubic_resize` / `bicubic_upsample`: Keys cubic convolution (a = -0.75),
  half-pixel centres, border replicate: numerically the same as
  `torch.nn.functional.interpolate(mode='bicubic', align_corners=False)` when
  upsampling (no antialiasing). Implemented as two separable weight-matrix
  products, so it costs two small matmuls per image.
"""
from __future__ import annotations

import functools
import operator

import numpy as np

_CUBIC_A = -0.75


def _check_image(x: np.ndarray, fn: str) -> np.ndarray:
  x = np.asarray(x)
  if x.ndim < 2:
    raise ValueError(f'{fn}: expected an array (..., H, W), got shape {x.shape}')
  return x


def _check_factor(scale, fn: str) -> int:
  try:
    s = operator.index(scale)
  except TypeError:
    raise ValueError(f'{fn}: scale must be a positive integer, got {scale!r}') from None
  if s < 1:
    raise ValueError(f'{fn}: scale must be a positive integer, got {scale!r}')
  return s


def area_downsample(x, scale: int) -> np.ndarray:
  """Mean over non-overlapping scale x scale blocks of the last two axes.

  Equals OpenCV `cv2.resize(..., interpolation=cv2.INTER_AREA)` for integer factors.
  Floating inputs keep their dtype; integer inputs come back as float32.

  Raises:
    ValueError: H or W is not divisible by `scale` (the message names the shape).
  """
  x = _check_image(x, 'area_downsample')
  s = _check_factor(scale, 'area_downsample')
  h, w = x.shape[-2:]
  if h % s or w % s:
    raise ValueError(f'area_downsample: image shape {tuple(x.shape)} (H={h}, W={w}) '
                     f'is not divisible by scale {s}')
  if not np.issubdtype(x.dtype, np.floating):
    x = x.astype(np.float32)
  if s == 1:
    return x.copy()
  blocks = x.reshape(*x.shape[:-2], h // s, s, w // s, s)
  return blocks.mean(axis=(-3, -1), dtype=np.float64).astype(x.dtype)


def _cubic(t: np.ndarray) -> np.ndarray:
  """Keys cubic convolution kernel with a = -0.75 (as in PyTorch/OpenCV)."""
  a = _CUBIC_A
  t = np.abs(t)
  t2, t3 = t * t, t * t * t
  near = (a + 2) * t3 - (a + 3) * t2 + 1
  far = a * t3 - 5 * a * t2 + 8 * a * t - 4 * a
  return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


@functools.lru_cache(maxsize=64)
def _bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
  """(out_size, in_size) float64 matrix M with y = M @ x along one axis."""
  scale = in_size / out_size
  dst = np.arange(out_size, dtype=np.float64)
  src = (dst + 0.5) * scale - 0.5          # half-pixel centres, no clamping (cubic)
  base = np.floor(src)
  frac = src - base
  mat = np.zeros((out_size, in_size), dtype=np.float64)
  rows = np.arange(out_size)
  for k in (-1, 0, 1, 2):
    weight = _cubic(frac - k)
    idx = np.clip(base.astype(np.int64) + k, 0, in_size - 1)  # border replicate
    np.add.at(mat, (rows, idx), weight)
  mat.setflags(write=False)
  return mat


def bicubic_resize(x, out_h: int, out_w: int) -> np.ndarray:
  """Bicubic resize of the last two axes to (out_h, out_w).

  Equals torch.nn.functional.interpolate(x, size=(out_h, out_w), mode='bicubic',
  align_corners=False) when upsampling (torch does not antialias there either).
  Float32/float64 inputs keep their dtype; others come back as float32.
  """
  x = _check_image(x, 'bicubic_resize')
  out_h = operator.index(out_h)
  out_w = operator.index(out_w)
  if out_h < 1 or out_w < 1:
    raise ValueError(f'bicubic_resize: output size must be positive, got ({out_h}, {out_w})')
  h, w = x.shape[-2:]
  if h < 1 or w < 1:
    raise ValueError(f'bicubic_resize: empty image of shape {tuple(x.shape)}')
  dtype = x.dtype if x.dtype in (np.float32, np.float64) else np.dtype(np.float32)
  mh = _bicubic_matrix(h, out_h).astype(dtype)
  mw = _bicubic_matrix(w, out_w).astype(dtype)
  x = x.astype(dtype, copy=False)
  return np.ascontiguousarray(np.matmul(np.matmul(mh, x), mw.T))


def bicubic_upsample(x, scale: int) -> np.ndarray:
  """`bicubic_resize` to (H * scale, W * scale)."""
  x = _check_image(x, 'bicubic_upsample')
  s = _check_factor(scale, 'bicubic_upsample')
  h, w = x.shape[-2:]
  return bicubic_resize(x, h * s, w * s)
