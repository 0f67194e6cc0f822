"""Image degradations in numpy, acting on the last two axes (..., H, W) = (rows, columns).

`make_lr(hr, scale, steps, rng)` builds the LR image by applying `steps` in order; the step
grammar (config `data.degradation`) is in `parse_degradation` and docs/degradations.md. s is the
integer scale; axis 0 means H (rows, axis -2) and axis 1 means W (columns, axis -1).

Shape-reducing steps (each axis may be reduced by exactly one of them, by s):

* `area` (`area_downsample`): block mean, LR[k] = (1/s) sum_{i=ks}^{ks+s-1} HR[i] per axis;
  what OpenCV's INTER_AREA computes for integer factors. `area_resize` is the same average for
  non-integer factors: output i is the mean over [i*n/m, (i+1)*n/m) with fractional overlaps.
* `bicubic` (`bicubic_resize(..., antialias=True)`): Keys cubic convolution
      k(t) = (a+2)|t|^3 - (a+3)|t|^2 + 1           for |t| <= 1
             a|t|^3 - 5a|t|^2 + 8a|t| - 4a          for 1 < |t| < 2,   0 otherwise,
  a = -0.75 (PyTorch/OpenCV; PIL, MATLAB and torch antialias use -0.5). Shrinking by s stretches the
  kernel (as PIL / torch antialias=True do): LR[k] = sum_i k((i + 0.5 - c_k) / s) HR[i] /
  sum_i k(...), c_k = (k + 0.5) s, over the pixels i inside the image (renormalised at borders).
  With `a=-0.5` this is PIL's BICUBIC and torch's antialias=True. `bicubic:matlab`
  (`bicubic_resize_matlab`) is MATLAB's imresize: a = -0.5, the same stretch, but taps outside the
  image mirrored onto it (HR[-1 - i] = HR[i]) instead of dropped; inside (2 LR pixels from the
  borders) it equals a=-0.5. Without antialias (upsampling, `bicubic_upsample`) it is torch's
  `mode='bicubic', align_corners=False`: half-pixel centres, 4 taps, border replicate. Two
  weight-matrix products. Measured differences: docs/degradations.md.
* `kspace` (`kspace_truncate`): what a scanner does when it acquires a smaller matrix. Per reduced
  axis of length n, m = n/s: K = fftshift(fft(ifftshift(x)), norm='ortho'); keep K[n//2 - m//2 :
  n//2 - m//2 + m] (DC stays at the block's index m//2); multiply by the window w (separable) and by
  the linear phase exp(2 pi i k d / n), k = index - m//2, d = (s-1)/2 - (n//2 - (m//2) s), which puts
  LR sample j on HR position j s + (s-1)/2 (block centres, as area/bicubic/thick);
  LR = |fftshift(ifft(ifftshift(K_kept)), norm='ortho')| / sqrt(prod of the factors), which keeps a
  constant image constant. The window is symmetric about DC with w(DC) = 1: the length-L symmetric
  window, L = 2(m//2) + 1, of which the first m samples are kept (for even m the unpaired Nyquist
  sample gets the edge value). Hamming: 0.54 - 0.46 cos(2 pi j / (L-1)); Tukey(alpha) with
  t = |j - (L-1)/2| / ((L-1)/2): 1 for t <= 1 - alpha, else (1 + cos(pi (t - 1 + alpha) / alpha)) / 2
  (alpha = 0 rectangular, 1 Hann). Global: it needs the whole slice.
* `thick` (`slice_thicken`): slice-thickening along one axis, LR[k] = sum_i w_k(i) HR[i], slab centre
  c_k = ks + (s-1)/2. box: w_k = 1/s on [ks, (k+1)s) (= area on that axis); gaussian:
  w_k(i) ~ exp(-(i - c_k)^2 / (2 sigma^2)), sigma = FWHM / (2 sqrt(2 ln 2)), FWHM = s by default,
  taps |i - c_k| <= max(3 sigma, (s-1)/2) inside the image, renormalised to sum 1.

Shape-preserving steps:

* `blur` (`gaussian_blur`): separable Gaussian, taps exp(-t^2 / (2 sigma^2)) / sum, t in
  [-round(4 sigma), round(4 sigma)], reflect-101 borders (cv2.GaussianBlur with ksize (0, 0),
  scipy.ndimage.gaussian_filter mode='mirror').
* `noise` (`rician_noise`): magnitude-image noise y = sqrt((x + sigma n1)^2 + (sigma n2)^2),
  n1, n2 ~ N(0, 1) iid; sigma = 1 / snr with snr the peak SNR (volumes are normalised to max 1).
  Needs a numpy Generator; the output is not clipped.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator
from typing import Any

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
    raise ValueError(f'area_downsample: image shape {tuple(x.shape)} (H={h}, W={w}) is not divisible by scale {s}')
  if not np.issubdtype(x.dtype, np.floating):
    x = x.astype(np.float32)
  if s == 1:
    return x.copy()
  blocks = x.reshape(*x.shape[:-2], h // s, s, w // s, s)
  return blocks.mean(axis=(-3, -1), dtype=np.float64).astype(x.dtype)


@functools.lru_cache(maxsize=64)
def _area_matrix(in_size: int, out_size: int) -> np.ndarray:
  """(out_size, in_size) float64 matrix: output i averages the input over [i*r, (i+1)*r), r = in/out."""
  edges = np.arange(out_size + 1, dtype=np.float64) * in_size / out_size  # footprint boundaries
  j = np.arange(in_size, dtype=np.float64)
  # exact overlap of input pixel [j, j+1) with footprint [edges[i], edges[i+1])
  overlap = np.minimum(j + 1, edges[1:, None]) - np.maximum(j, edges[:-1, None])
  mat = np.clip(overlap, 0.0, None)
  mat /= mat.sum(axis=1, keepdims=True)  # = overlap / r; renormalised against rounding
  mat.setflags(write=False)
  return mat


def area_resize(x, out_h: int, out_w: int) -> np.ndarray:
  """Area-average shrink of the last two axes to (out_h, out_w), for any (non-integer) factors.

  Output pixel i is the mean of the input over its footprint [i*H/out_h, (i+1)*H/out_h) (likewise
  along W), counting partially covered pixels by their exact overlap: OpenCV's
  `cv2.resize(..., interpolation=cv2.INTER_AREA)` when shrinking (OpenCV additionally drops
  overlaps below 1e-3 pixel). Integer factors equal `area_downsample`.
  Float32/float64 inputs keep their dtype; others come back as float32.

  Raises:
    ValueError: an output side is larger than the input side (INTER_AREA enlarging is bilinear,
      which this function does not imitate) or not positive.
  """
  x = _check_image(x, 'area_resize')
  out_h = operator.index(out_h)
  out_w = operator.index(out_w)
  h, w = x.shape[-2:]
  if not (1 <= out_h <= h and 1 <= out_w <= w):
    raise ValueError(
      f'area_resize: can only shrink: image shape {tuple(x.shape)} -> ({out_h}, {out_w}); '
      'enlarging is not supported (OpenCV INTER_AREA enlarges bilinearly)'
    )
  if h % out_h == 0 and w % out_w == 0 and h // out_h == w // out_w:
    out = area_downsample(x, h // out_h)  # the fast reshape-mean
    return out if out.dtype in (np.float32, np.float64) else out.astype(np.float32)
  dtype = x.dtype if x.dtype in (np.float32, np.float64) else np.dtype(np.float32)
  x = x.astype(dtype, copy=False)
  if out_h != h:
    x = np.matmul(_area_matrix(h, out_h).astype(dtype), x)
  if out_w != w:
    x = np.matmul(x, _area_matrix(w, out_w).T.astype(dtype))
  return np.ascontiguousarray(x)


def _cubic(t: np.ndarray, a: float = _CUBIC_A) -> np.ndarray:
  """Keys cubic convolution kernel; a = -0.75 as in PyTorch/OpenCV (PIL, MATLAB, torch antialias: -0.5)."""
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
  src = (dst + 0.5) * scale - 0.5  # half-pixel centres, no clamping (cubic)
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


def _resize_args(x, out_h, out_w, name: str):
  """(image, out_h, out_w) checked for a resize: an image with non-empty last two axes, positive integer sizes."""
  x = _check_image(x, name)
  out_h, out_w = operator.index(out_h), operator.index(out_w)
  if out_h < 1 or out_w < 1:
    raise ValueError(f'{name}: output size must be positive, got ({out_h}, {out_w})')
  if min(x.shape[-2:]) < 1:
    raise ValueError(f'{name}: empty image of shape {tuple(x.shape)}')
  return x, out_h, out_w


def bicubic_resize(x, out_h: int, out_w: int, antialias: bool = False, a: float = _CUBIC_A) -> np.ndarray:
  """Bicubic resize of the last two axes to (out_h, out_w).

  Equals torch.nn.functional.interpolate(x, size=(out_h, out_w), mode='bicubic',
  align_corners=False) when upsampling (torch does not antialias there either).
  `antialias` widens the kernel when shrinking (ignored when enlarging); with a=-0.5 it equals
  torch's `antialias=True` (and PIL), which use that kernel.
  Float32/float64 inputs keep their dtype; others come back as float32.
  """
  x, out_h, out_w = _resize_args(x, out_h, out_w, 'bicubic_resize')
  h, w = x.shape[-2:]
  dtype = x.dtype if x.dtype in (np.float32, np.float64) else np.dtype(np.float32)
  mh = _bicubic_matrix(h, out_h, antialias, a).astype(dtype)
  mw = _bicubic_matrix(w, out_w, antialias, a).astype(dtype)
  x = x.astype(dtype, copy=False)
  return np.ascontiguousarray(np.matmul(np.matmul(mh, x), mw.T))


@functools.lru_cache(maxsize=64)
def _matlab_matrix(in_size: int, out_size: int) -> np.ndarray:
  """(out_size, in_size) float64 matrix of MATLAB's imresize(x, [out_size, ...]) (bicubic) along one axis.

  Same sample positions as `_bicubic_matrix` (src = (dst + 0.5) r - 0.5, r = in / out); a = -0.5; the
  kernel stretched by r when shrinking (MATLAB's default antialiasing); taps outside the image are
  mirrored half-sample symmetrically (-1 -> 0, n -> n - 1, periodic in 2n) onto pixels inside, and
  the weights are normalised to sum to 1 before mirroring, as MATLAB's `contributions` does.
  """
  r = in_size / out_size
  stretch = max(r, 1.0)  # antialiasing widens the kernel only when shrinking
  src = (np.arange(out_size, dtype=np.float64) + 0.5) * r - 0.5
  first = np.floor(src - 2.0 * stretch).astype(np.int64)
  taps = first[:, None] + np.arange(int(math.ceil(4.0 * stretch)) + 2)
  weights = _cubic((taps - src[:, None]) / stretch, -0.5)
  weights /= weights.sum(axis=1, keepdims=True)
  period = np.mod(taps, 2 * in_size)
  inside = np.where(period < in_size, period, 2 * in_size - 1 - period)
  mat = np.zeros((out_size, in_size), dtype=np.float64)
  np.add.at(mat, (np.broadcast_to(np.arange(out_size)[:, None], taps.shape), inside), weights)
  mat.setflags(write=False)
  return mat


def bicubic_resize_matlab(x, out_h: int, out_w: int) -> np.ndarray:
  """MATLAB's `imresize(x, [out_h, out_w])` (bicubic, antialiasing on) of the last two axes.

  The `bicubic:matlab` degradation. Keys kernel with a = -0.5, stretched by the factor when shrinking
  (no stretch when enlarging), half-pixel centres like `bicubic_resize`, and MATLAB's border rule:
  taps outside the image are mirrored symmetrically onto the pixels inside (x[-1] = x[0],
  x[n] = x[n - 1]), the weights normalised to sum 1. Away from the borders it equals
  `bicubic_resize(x, out_h, out_w, antialias=True, a=-0.5)` (PIL's BICUBIC, torch's antialias=True);
  they differ only within the kernel's reach (2 r input pixels, r = in / out >= 1) of the borders.
  MATLAB's `imresize(x, 1/s)` is the same when s divides the sides (otherwise MATLAB keeps the
  scale 1/s for ceil(n/s) outputs, which an output size cannot say). Float32/float64 inputs keep
  their dtype; others come back as float32.
  """
  x, out_h, out_w = _resize_args(x, out_h, out_w, 'bicubic_resize_matlab')
  h, w = x.shape[-2:]
  x = x.astype(_float_dtype(x), copy=False)
  return np.ascontiguousarray(_along(_along(x, _matlab_matrix(h, out_h), 0), _matlab_matrix(w, out_w), 1))


def spline_resize(x, out_h: int, out_w: int) -> np.ndarray:
  """Cubic B-spline interpolation of the last two axes to (out_h, out_w) (scipy.ndimage.zoom, order 3),
  on the same pixel-centre grid as `bicubic_resize` (LR sample j at HR position j s + (s - 1) / 2) with
  half-sample symmetric borders: the thick-slice literature's other baseline (TransMRSR's suggested resampler).
  float32 out."""
  from scipy import ndimage

  x = np.asarray(_check_image(x, 'spline_resize'), np.float64)
  h, w = x.shape[-2:]
  zoom = (1.0,) * (x.ndim - 2) + (out_h / h, out_w / w)
  out = ndimage.zoom(x, zoom, order=3, mode='reflect', grid_mode=True)
  return np.ascontiguousarray(out[..., :out_h, :out_w], np.float32)


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


# ---------------------------------------------------------------------------------------------
# k-space truncation, slice thickening, Rician noise
# ---------------------------------------------------------------------------------------------
_WINDOWS = ('none', 'hamming', 'tukey')


def _float_dtype(x: np.ndarray) -> np.dtype:
  return x.dtype if x.dtype in (np.float32, np.float64) else np.dtype(np.float32)


def _divisible(x: np.ndarray, scale: int, axis: int, fn: str) -> int:
  """Length of axis 0 (H) / 1 (W); raises unless it is divisible by `scale`."""
  n = x.shape[axis - 2]
  if n % scale:
    raise ValueError(
      f'{fn}: image shape {tuple(x.shape)}: {"HW"[axis]}={n} (axis {axis}) is not divisible by scale {scale}'
    )
  return n


def _along(x: np.ndarray, mat: np.ndarray, axis: int) -> np.ndarray:
  """y = mat @ x along axis 0 (H) or 1 (W) of the last two; mat cast to x's dtype."""
  mat = mat.astype(x.dtype, copy=False)
  return np.matmul(mat, x) if axis == 0 else np.matmul(x, mat.T)


def _block_mean(x: np.ndarray, scale: int, axis: int) -> np.ndarray:
  """`area_downsample` along one axis only (reshape-mean, no matrix)."""
  if scale == 1:
    return x.copy()
  _divisible(x, scale, axis, 'area')
  h, w = x.shape[-2:]
  if axis == 0:
    blocks, red = x.reshape(*x.shape[:-2], h // scale, scale, w), -2
  else:
    blocks, red = x.reshape(*x.shape[:-2], h, w // scale, scale), -1
  return blocks.mean(axis=red, dtype=np.float64).astype(x.dtype)


@functools.lru_cache(maxsize=64)
def _window(m: int, kind: str, alpha: float) -> np.ndarray:
  """Length-m k-space window, symmetric about DC (index m//2) where it is 1 (float64)."""
  size = 2 * (m // 2) + 1  # odd: centred on DC; for even m the extra +Nyquist sample is dropped
  if kind == 'none' or size == 1:
    w = np.ones(size)
  elif kind == 'hamming':
    w = np.hamming(size)
  else:  # tukey, written out: flat over the central 1 - alpha, cosine taper to 0 at the edges
    t = np.abs(np.arange(size) - (size - 1) / 2) / ((size - 1) / 2)
    w = np.ones(size)
    if alpha > 0:
      taper = t > 1 - alpha
      w[taper] = 0.5 * (1 + np.cos(np.pi * (t[taper] - 1 + alpha) / alpha))
  w = w[:m].copy()
  w.setflags(write=False)
  return w


def kspace_truncate(x, factors: tuple[int, int], window: str = 'none', alpha: float = 0.5) -> np.ndarray:
  """Keep the central 1/f of the centred k-space along each axis (f = factors = (fy, fx)).

  The magnitude of the inverse transform, divided by sqrt(fy * fx) so intensities (and constants)
  are kept; axes with factor 1 are left alone. `window` ('none', 'hamming', 'tukey' with `alpha`
  in [0, 1]) apodises the kept block, 1 at DC. float32 runs in complex64, float64 in complex128;
  other inputs come back as float32. See the module docstring for the exact formula.
  """
  x = _check_image(x, 'kspace_truncate')
  fy, fx = (_check_factor(f, 'kspace_truncate') for f in factors)
  if window not in _WINDOWS:
    raise ValueError(f'kspace_truncate: window must be one of {", ".join(_WINDOWS)}, got {window!r}')
  if not 0 <= alpha <= 1:
    raise ValueError(f'kspace_truncate: alpha must be in [0, 1], got {alpha!r}')
  dtype = _float_dtype(x)
  x = x.astype(dtype, copy=False)
  axes = tuple(ax - 2 for ax, f in ((0, fy), (1, fx)) if f > 1)
  if not axes:
    return x.copy()
  kept = [slice(None)] * x.ndim
  for axis, f in ((0, fy), (1, fx)):
    if f > 1:
      n = _divisible(x, f, axis, 'kspace_truncate')
      m = n // f
      kept[axis - 2] = slice(n // 2 - m // 2, n // 2 - m // 2 + m)
  k = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(x, axes=axes), axes=axes, norm='ortho'), axes=axes)
  k = k[tuple(kept)]
  for axis, f in ((0, fy), (1, fx)):
    if f > 1:  # linear phase: LR sample j lands on HR position j*f + (f-1)/2, the block centre
      n, m = x.shape[axis - 2], k.shape[axis - 2]
      shift = (f - 1) / 2 - (n // 2 - (m // 2) * f)
      phase = np.exp(2j * np.pi * (np.arange(m) - m // 2) * shift / n).astype(k.dtype)
      k = k * (phase[:, None] if axis == 0 else phase)
  if window != 'none':
    for axis, f in ((0, fy), (1, fx)):
      if f > 1:
        m = k.shape[axis - 2]
        w = _window(m, window, float(alpha) if window == 'tukey' else 0.0).astype(dtype)
        k = k * (w[:, None] if axis == 0 else w)
  out = np.fft.fftshift(np.fft.ifftn(np.fft.ifftshift(k, axes=axes), axes=axes, norm='ortho'), axes=axes)
  out = np.abs(out)
  out *= dtype.type(1.0 / math.sqrt(fy * fx))
  return out.astype(dtype, copy=False)


@functools.lru_cache(maxsize=64)
def _thick_matrix(n: int, scale: int, profile: str, fwhm: float | None) -> np.ndarray:
  """(n // scale, n) float64 slice-profile weights; row k is slab k centred at k*s + (s-1)/2."""
  m = n // scale
  i = np.arange(n, dtype=np.float64)
  centre = np.arange(m, dtype=np.float64) * scale + (scale - 1) / 2
  d = i[None, :] - centre[:, None]
  if profile == 'box':
    mat = (np.arange(n)[None, :] // scale == np.arange(m)[:, None]).astype(np.float64)
  else:
    sigma = (scale if fwhm is None else fwhm) / (2 * math.sqrt(2 * math.log(2)))
    radius = max(3 * sigma, (scale - 1) / 2)  # at least the box support
    mat = np.where(np.abs(d) <= radius + 1e-9, np.exp(-0.5 * (d / sigma) ** 2), 0.0)
  mat /= mat.sum(axis=1, keepdims=True)  # taps outside the image are dropped, hence renormalise
  mat.setflags(write=False)
  return mat


def slice_thicken(x, scale: int, axis: int, profile: str = 'box', fwhm: float | None = None) -> np.ndarray:
  """Thick slices along `axis` (0 = H, axis -2; 1 = W, axis -1): the length shrinks by `scale`.

  box: mean of `scale` consecutive rows (= area on that axis). gaussian: Gaussian slice profile of
  full width at half maximum `fwhm` (default `scale`, the slice thickness) centred on each slab.
  """
  x = _check_image(x, 'slice_thicken')
  s = _check_factor(scale, 'slice_thicken')
  if axis not in (0, 1):
    raise ValueError(f'slice_thicken: axis must be 0 (H) or 1 (W), got {axis!r}')
  if profile not in ('box', 'gaussian'):
    raise ValueError(f'slice_thicken: profile must be box or gaussian, got {profile!r}')
  if fwhm is not None and not fwhm > 0:
    raise ValueError(f'slice_thicken: fwhm must be positive, got {fwhm!r}')
  x = x.astype(_float_dtype(x), copy=False)
  n = _divisible(x, s, axis, 'slice_thicken')
  if profile == 'box':
    return _block_mean(x, s, axis)
  mat = _thick_matrix(n, s, profile, None if fwhm is None else float(fwhm))
  return np.ascontiguousarray(_along(x, mat, axis))


def rician_noise(x, sigma: float, rng: np.random.Generator) -> np.ndarray:
  """Magnitude (Rician) noise: sqrt((x + sigma n1)^2 + (sigma n2)^2), n1, n2 ~ N(0, 1); not clipped.

  The draws follow `rng` (same seed, shape and dtype -> same output); float64 stays float64,
  everything else is float32.
  """
  x = _check_image(x, 'rician_noise')
  if not (math.isfinite(sigma) and sigma > 0):
    raise ValueError(f'rician_noise: sigma must be positive, got {sigma!r}')
  if not isinstance(rng, np.random.Generator):
    raise ValueError(f'rician_noise: rng must be a numpy.random.Generator, got {type(rng).__name__}')
  dtype = _float_dtype(x)
  x = x.astype(dtype, copy=False)
  n = rng.standard_normal((2,) + x.shape, dtype=dtype)
  sigma = dtype.type(sigma)
  return np.hypot(x + sigma * n[0], sigma * n[1])


# ---------------------------------------------------------------------------------------------
# the step grammar
# ---------------------------------------------------------------------------------------------
_KEYS = {  # step -> accepted keys; the first four reduce the image
  'area': ('axes',),
  'bicubic': ('axes', 'a'),
  'kspace': ('window', 'alpha', 'axes'),
  'thick': ('axis', 'profile', 'fwhm'),
  'blur': ('sigma',),
  'noise': ('snr', 'sigma'),
}
_FLAGS = {'bicubic': ('matlab',)}  # bare words accepted among the key=value pairs
_REDUCING = ('area', 'bicubic', 'kspace', 'thick')
_AXES = {'both': (0, 1), '0': (0,), '1': (1,)}


@dataclasses.dataclass(frozen=True)
class Step:
  """One parsed degradation step.

  `axes`: the axes it reduces by the scale (0 = H, 1 = W; () for blur / noise). `params`: sorted
  (key, value) pairs with the defaults filled in (hashable), e.g. kspace -> (('window', 'none'),),
  noise:snr=20 -> (('sigma', 0.05),); thick's `fwhm` is present only when given.
  """

  name: str
  axes: tuple[int, ...] = ()
  params: tuple[tuple[str, Any], ...] = ()

  def param(self, key: str, default=None):
    return dict(self.params).get(key, default)


def _parse_step(spec) -> Step:
  text = str(spec)

  def fail(problem: str):
    raise ValueError(f'data.degradation: {text!r}: {problem}')

  name, colon, args = text.partition(':')
  name = name.strip()
  if name not in _KEYS:
    fail(f'unknown step {name!r}; known: {", ".join(_KEYS)} (e.g. area, kspace:window=hamming, blur:1.0, noise:snr=30)')
  keys = _KEYS[name]
  flags = _FLAGS.get(name, ())
  raw: dict[str, str] = {}
  given: set[str] = set()  # bare flags, e.g. bicubic:matlab
  if colon:
    pieces = [p.strip() for p in args.split(',')]
    if len(pieces) == 1 and '=' not in pieces[0] and name == 'blur':  # a bare number: blur:SIGMA only
      raw['sigma'] = pieces[0]
    else:
      for piece in pieces:
        if '=' not in piece and (len(pieces) == 1 or (flags and piece)):  # a flag (or a misplaced bare word)
          if piece not in flags:
            also = f' or the flag {"|".join(flags)}' if flags else ''
            fail(f'{name} takes key=value arguments (keys: {", ".join(keys)}){also}, got {piece!r}')
          if piece in given:
            fail(f'flag {piece!r} given twice')
          given.add(piece)
          continue
        key, eq, value = (part.strip() for part in piece.partition('='))
        if not eq or not key or not value:
          fail(f'expected key=value, got {piece!r}')
        if key not in keys:
          fail(f'unknown key {key!r} for {name}; known: {", ".join(keys)}')
        if key in raw:
          fail(f'key {key!r} given twice')
        raw[key] = value

  def number(key: str, positive: bool = True, problem: str = '') -> float:
    try:
      value = float(raw[key])
    except ValueError:
      value = math.nan
    if not math.isfinite(value) or (positive and value <= 0):
      fail(f'{problem or key + " must be a " + ("positive " if positive else "") + "number"}, got {raw[key]!r}')
    return value

  def choice(key: str, options, default: str) -> str:
    value = raw.get(key, default)
    if value not in options:
      fail(f'{key} must be one of {"|".join(options)}, got {value!r}')
    return value

  axes = _AXES[choice('axes', _AXES, 'both')] if name in ('area', 'bicubic', 'kspace') else ()
  params: dict[str, Any] = {}
  if name == 'bicubic':
    if 'matlab' in given:
      if 'a' in raw:
        fail(f'a={raw["a"]} does not go with matlab, which fixes a = -0.5 (MATLAB imresize); drop one of them')
      params['a'], params['matlab'] = -0.5, True
    else:
      params['a'] = number('a', positive=False) if 'a' in raw else _CUBIC_A
  elif name == 'kspace':
    params['window'] = choice('window', _WINDOWS, 'none')
    if 'alpha' in raw:
      if params['window'] != 'tukey':
        fail('alpha only applies to window=tukey')
      params['alpha'] = number('alpha', positive=False)
      if not 0 <= params['alpha'] <= 1:
        fail(f'alpha must be in [0, 1], got {raw["alpha"]!r}')
    elif params['window'] == 'tukey':
      params['alpha'] = 0.5
  elif name == 'thick':
    axes = (int(choice('axis', ('0', '1'), '0')),)
    params['profile'] = choice('profile', ('box', 'gaussian'), 'box')
    if 'fwhm' in raw:
      if params['profile'] != 'gaussian':
        fail('fwhm only applies to profile=gaussian')
      params['fwhm'] = number('fwhm')
  elif name == 'blur':
    if 'sigma' not in raw:
      fail('blur needs a positive sigma, e.g. blur:1.0')
    params['sigma'] = number('sigma', problem='blur needs a positive sigma, e.g. blur:1.0')
  elif name == 'noise':
    if len(raw) != 1:
      fail('noise needs exactly one of snr=S (peak SNR, sigma = 1/S) or sigma=SIGMA')
    params['sigma'] = 1.0 / number('snr') if 'snr' in raw else number('sigma')
  return Step(name, axes, tuple(sorted(params.items())))


@functools.lru_cache(maxsize=128)
def _parse_chain(steps: tuple) -> tuple[Step, ...]:
  chain = tuple(s if isinstance(s, Step) else _parse_step(s) for s in steps)
  reduced_by: dict[int, Any] = {}
  for spec, step in zip(steps, chain):
    for axis in step.axes:
      if axis in reduced_by:
        raise ValueError(
          f'data.degradation: {str(spec)!r}: reduces axis {axis} ({"HW"[axis]}), which '
          f'{str(reduced_by[axis])!r} already reduced; each reduced axis takes exactly one '
          'downsampling step'
        )
      reduced_by[axis] = spec
  if not reduced_by:
    raise ValueError(
      f'data.degradation: {tuple(str(s) for s in steps)!r}: no downsampling step; needs '
      f'exactly one downsampling step ({", ".join(_REDUCING)}) for each reduced axis'
    )
  return chain


def _specs(steps) -> tuple[str, ...]:
  return tuple(str(s) for s in ((steps,) if isinstance(steps, (str, Step)) else steps))


def parse_degradation(steps) -> tuple[Step, ...]:
  """Parse and check a degradation chain, e.g. ('area',), ('bicubic', 'blur:1.0'), ('kspace:window=hamming',).

  Each step is NAME or NAME:ARGS, ARGS being comma-separated key=value pairs (blur also takes a bare
  sigma). Steps and keys (defaults first):
    area[:axes=both|0|1]                  block mean by the scale
    bicubic[:axes=both|0|1,a=-0.75]       antialiased Keys cubic shrink
    bicubic:matlab[,axes=both|0|1]        MATLAB imresize (a = -0.5, mirrored borders); no a=
    kspace[:window=none|hamming|tukey,alpha=0.5,axes=both|0|1]   central k-space crop
    thick[:axis=0|1,profile=box|gaussian,fwhm=SCALE]             slice thickening along one axis
    blur:SIGMA | blur:sigma=SIGMA         Gaussian blur (shape-preserving)
    noise:snr=S | noise:sigma=SIGMA       Rician noise, sigma = 1/S (shape-preserving)
  At least one axis must be reduced and no axis twice. A bare string counts as one step; Step
  objects pass through. Results are cached.

  Raises:
    ValueError: 'data.degradation: <step>: <problem>' (one line) for a bad step or chain.
  """
  steps = (steps,) if isinstance(steps, (str, Step)) else tuple(steps)
  try:
    hash(steps)
  except TypeError:
    return _parse_chain.__wrapped__(steps)
  return _parse_chain(steps)


def lr_factors(steps, scale: int) -> tuple[int, int]:
  """Per-axis reduction (fy, fx) of the chain: ('area',) -> (s, s), ('thick:axis=0',) -> (s, 1)."""
  s = _check_factor(scale, 'lr_factors')
  axes = {axis for step in parse_degradation(steps) for axis in step.axes}
  return (s if 0 in axes else 1, s if 1 in axes else 1)


def is_global(steps) -> bool:
  """True when a step needs the whole slice (kspace): apply it before cropping patches."""
  return any(step.name == 'kspace' for step in parse_degradation(steps))


def needs_rng(steps) -> bool:
  """True when a step draws random numbers (noise): make_lr then needs `rng`."""
  return any(step.name == 'noise' for step in parse_degradation(steps))


def _reduce(x: np.ndarray, step: Step, scale: int) -> np.ndarray:
  if step.name == 'area':
    return area_downsample(x, scale) if step.axes == (0, 1) else _block_mean(x, scale, step.axes[0])
  if step.name == 'bicubic':
    for axis in step.axes:
      n = _divisible(x, scale, axis, 'bicubic')
      mat = (
        _matlab_matrix(n, n // scale) if step.param('matlab') else _bicubic_matrix(n, n // scale, True, step.param('a'))
      )
      x = _along(x, mat, axis)
    return np.ascontiguousarray(x)
  if step.name == 'kspace':
    factors = tuple(scale if axis in step.axes else 1 for axis in (0, 1))
    return kspace_truncate(x, factors, step.param('window'), step.param('alpha', 0.5))
  return slice_thicken(x, scale, step.axes[0], step.param('profile'), step.param('fwhm'))


def make_lr(hr, scale: int, steps=('area',), rng: np.random.Generator | None = None) -> np.ndarray:
  """The float32 LR image of `hr` (..., H, W): the degradation steps applied in order.

  The result is (..., H / fy, W / fx) with (fy, fx) = lr_factors(steps, scale). `rng` is needed
  (and only used) by noise steps.

  Raises:
    ValueError: a bad chain (see parse_degradation), a reduced side not divisible by `scale`, or a
      noise step without `rng`.
  """
  s = _check_factor(scale, 'make_lr')
  chain = parse_degradation(steps)
  x = _check_image(hr, 'make_lr')
  if rng is None and any(step.name == 'noise' for step in chain):
    raise ValueError(f'make_lr: the noise step of {_specs(steps)!r} needs rng, a numpy.random.Generator')
  if not np.issubdtype(x.dtype, np.floating):
    x = x.astype(np.float32)
  for step in chain:
    if step.axes:
      x = _reduce(x, step, s)
    elif step.name == 'blur':
      x = gaussian_blur(x, step.param('sigma'))
    else:
      x = rician_noise(x, step.param('sigma'), rng)
  return x.astype(np.float32, copy=False)
