"""Image degradations in numpy, acting on the last two axes (..., H, W).

* `area_downsample`: block mean, which is what OpenCV's INTER_AREA computes for
  integer factors (the LR images of the training pipeline).
* `bicubic_resize` / `bicubic_upsample`: Keys cubic convolution (a = -0.75),
  half-pixel centres, border replicate: numerically the same as
  `torch.nn.functional.interpolate(mode='bicubic', align_corners=False)` when
  upsampling (no antialiasing). Implemented as two separable weight-matrix
  products, so it costs two small matmuls per image. When shrinking, `bicubic_resize(...,
  antialias=True)` stretches the kernel by the factor (as PIL / MATLAB imresize / torch
  `antialias=True` do), so every input pixel contributes and nothing aliases.
* `gaussian_blur`: separable Gaussian, radius 4*sigma, reflect-101 borders (cv2.GaussianBlur
  with ksize (0, 0), scipy.ndimage.gaussian_filter mode='mirror').
* `make_lr`: a degradation pipeline given as steps, e.g. ('area',) or ('bicubic', 'blur:1.0').
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


def _cubic(t: np.ndarray, a: float = _CUBIC_A) -> np.ndarray:
  """Keys cubic convolution kernel; a = -0.75 as in PyTorch/OpenCV (PIL and torch antialias use -0.5)."""
  t = np.abs(t)
  t2, t3 = t * t, t * t * t
  near = (a + 2) * t3 - (a + 3) * t2 + 1
  far = a * t3 - 5 * a * t2 + 8 * a * t - 4 * a
  return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


@functools.lru_cache(maxsize=64)
def _bicubic_matrix(in_size: int, out_size: int, antialias: bool = False, a: float = _CUBIC_A) -> np.ndarray:
  """(out_size, in_size) float64 matrix M with y = M @ x along one axis."""
  scale = in_size / out_size
  dst = np.arange(out_size, dtype=np.float64)
  src = (dst + 0.5) * scale - 0.5          # half-pixel centres, no clamping (cubic)
  mat = np.zeros((out_size, in_size), dtype=np.float64)
  rows = np.arange(out_size)
  if antialias and scale > 1:
    # PIL / torch antialias=True: the kernel stretched by `scale`, taps inside the image only
    # (no border replicate), weights renormalised to sum to 1.
    centre = (dst + 0.5) * scale
    support = 2.0 * scale
    lo = np.maximum((centre - support + 0.5).astype(np.int64), 0)
    hi = np.minimum((centre + support + 0.5).astype(np.int64), in_size)
    for i in range(out_size):
      j = np.arange(lo[i], hi[i])
      mat[i, j] = _cubic((j - centre[i] + 0.5) / scale, a)
    mat /= mat.sum(axis=1, keepdims=True)
  else:
    base = np.floor(src)
    frac = src - base
    for k in (-1, 0, 1, 2):
      weight = _cubic(frac - k, a)
      idx = np.clip(base.astype(np.int64) + k, 0, in_size - 1)  # border replicate
      np.add.at(mat, (rows, idx), weight)
  mat.setflags(write=False)
  return mat


def bicubic_resize(x, out_h: int, out_w: int, antialias: bool = False, a: float = _CUBIC_A) -> np.ndarray:
  """Bicubic resize of the last two axes to (out_h, out_w).

  Equals torch.nn.functional.interpolate(x, size=(out_h, out_w), mode='bicubic',
  align_corners=False) when upsampling (torch does not antialias there either).
  `antialias` widens the kernel when shrinking (ignored when enlarging); with a=-0.5 it equals
  torch's `antialias=True` (and PIL), which use that kernel.
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
  mh = _bicubic_matrix(h, out_h, antialias, a).astype(dtype)
  mw = _bicubic_matrix(w, out_w, antialias, a).astype(dtype)
  x = x.astype(dtype, copy=False)
  return np.ascontiguousarray(np.matmul(np.matmul(mh, x), mw.T))


def bicubic_upsample(x, scale: int) -> np.ndarray:
  """`bicubic_resize` to (H * scale, W * scale)."""
  x = _check_image(x, 'bicubic_upsample')
  s = _check_factor(scale, 'bicubic_upsample')
  h, w = x.shape[-2:]
  return bicubic_resize(x, h * s, w * s)


def bicubic_downsample(x, scale: int) -> np.ndarray:
  """Antialiased bicubic (a = -0.75) shrink of the last two axes by an integer factor."""
  x = _check_image(x, 'bicubic_downsample')
  s = _check_factor(scale, 'bicubic_downsample')
  h, w = x.shape[-2:]
  if h % s or w % s:
    raise ValueError(f'bicubic_downsample: image shape {tuple(x.shape)} is not divisible by scale {s}')
  return bicubic_resize(x, h // s, w // s, antialias=True)


@functools.lru_cache(maxsize=16)
def _gaussian_taps(sigma: float) -> np.ndarray:
  radius = max(1, int(4.0 * sigma + 0.5))
  t = np.arange(-radius, radius + 1, dtype=np.float64)
  k = np.exp(-0.5 * (t / sigma) ** 2)
  return k / k.sum()


def gaussian_blur(x, sigma: float) -> np.ndarray:
  """Separable Gaussian blur of the last two axes (radius round(4 sigma), reflect-101 borders)."""
  x = _check_image(x, 'gaussian_blur')
  if not sigma > 0:
    raise ValueError(f'gaussian_blur: sigma must be positive, got {sigma!r}')
  k = _gaussian_taps(float(sigma))
  r = len(k) // 2
  dtype = x.dtype if x.dtype in (np.float32, np.float64) else np.dtype(np.float32)
  out = x.astype(np.float64)
  for axis in (-2, -1):
    n = out.shape[axis]
    if n <= r:
      raise ValueError(f'gaussian_blur: image shape {tuple(x.shape)} is too small for sigma {sigma}')
    pad = [(0, 0)] * out.ndim
    pad[axis] = (r, r)
    padded = np.pad(out, pad, mode='reflect')
    out = sum(k[i] * np.take(padded, np.arange(i, i + n), axis=axis) for i in range(len(k)))
  return out.astype(dtype)


def parse_degradation(steps) -> list[tuple[str, float | None]]:
  """('area',) / ('bicubic', 'blur:1.0') -> [(op, arg)]; one downsampling step is required."""
  ops = []
  for step in steps:
    name, _, arg = str(step).partition(':')
    if name in ('area', 'bicubic') and not arg:
      ops.append((name, None))
    elif name == 'blur' and arg:
      try:
        sigma = float(arg)
      except ValueError:
        sigma = -1.0
      if not sigma > 0:
        raise ValueError(f'data.degradation: {step!r}: blur needs a positive sigma, e.g. blur:1.0')
      ops.append((name, sigma))
    else:
      raise ValueError(f'data.degradation: unknown step {step!r}; known: area, bicubic, blur:SIGMA')
  if sum(op in ('area', 'bicubic') for op, _ in ops) != 1:
    raise ValueError(f'data.degradation: {tuple(steps)} must contain exactly one downsampling step '
                     '(area or bicubic)')
  return ops


def make_lr(hr, scale: int, steps=('area',)) -> np.ndarray:
  """The LR image of `hr` (..., H, W): the degradation steps applied in order."""
  x = np.asarray(hr)
  for op, arg in parse_degradation(steps):
    if op == 'area':
      x = area_downsample(x, scale)
    elif op == 'bicubic':
      x = bicubic_downsample(x, scale)
    else:
      x = gaussian_blur(x, arg)
  return x.astype(np.float32)
