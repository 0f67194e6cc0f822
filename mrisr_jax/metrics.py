"""Image-quality metrics for MRI super-resolution (fastMRI conventions).

Everything here is plain numpy and computed in float64, whatever the input dtype.

* :func:`psnr` — peak signal-to-noise ratio, identical to
  ``skimage.metrics.peak_signal_noise_ratio(gt, pred, data_range=...)``.
* :func:`ssim` — structural similarity of a 2-D slice, identical to
  ``skimage.metrics.structural_similarity(gt, pred, data_range=...)`` with its defaults
  (7x7 uniform window, K1=0.01, K2=0.03, sample covariance, mean over the map cropped by
  3 pixels at every border).
* :func:`nmse` — normalised mean squared error ``||gt - pred||^2 / ||gt||^2``.
* :func:`volume_metrics` — the three metrics of a volume ``(S, H, W)`` following the
  fastMRI evaluation script: ``data_range = gt.max()`` of the whole volume, PSNR and NMSE
  over the whole volume, SSIM averaged over slices.
* :func:`mean_metrics` — average a list of metric dicts key by key.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from numbers import Number

import numpy as np

__all__ = ['psnr', 'ssim', 'nmse', 'volume_metrics', 'mean_metrics']

SSIM_WIN_SIZE = 7
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _pair(gt, pred) -> tuple[np.ndarray, np.ndarray]:
  gt = np.asarray(gt, dtype=np.float64)
  pred = np.asarray(pred, dtype=np.float64)
  if gt.shape != pred.shape:
    raise ValueError(f'shape mismatch: gt {gt.shape} vs pred {pred.shape}')
  return gt, pred


def psnr(gt, pred, data_range) -> float:
  """Peak signal-to-noise ratio in dB.

  ``PSNR = 10 * log10(data_range**2 / MSE)`` with ``MSE = mean((gt - pred)**2)`` over the
  whole array. fastMRI calls this with ``data_range = gt.max()``.

  Identical inputs (``MSE == 0``) give ``float('inf')`` (skimage gives the same value,
  plus a divide-by-zero warning; here there is no warning).
  """
  gt, pred = _pair(gt, pred)
  data_range = float(data_range)
  mse = float(np.mean((gt - pred) ** 2))
  if mse == 0.0:
    return math.inf
  return float(10.0 * np.log10(data_range**2 / mse))


def _box_sum_valid(x: np.ndarray, win: int) -> np.ndarray:
  """Sum of ``x`` over every ``win x win`` window fully inside the image.

  Separable cumulative sums (one axis at a time, so intermediate sums stay small):
  ``out[i, j] = sum(x[i:i+win, j:j+win])``, shape ``(H - win + 1, W - win + 1)``.
  """
  for axis in (0, 1):
    c = np.cumsum(x, axis=axis)
    zero = np.zeros_like(np.take(c, [0], axis=axis))
    c = np.concatenate([zero, c], axis=axis)
    n = c.shape[axis]
    x = np.take(c, np.arange(win, n), axis=axis) - np.take(c, np.arange(0, n - win), axis=axis)
  return x


def ssim(gt, pred, data_range) -> float:
  """Mean structural similarity of two 2-D images (skimage defaults).

  With ``mu``/``v`` local means/sample (co)variances over a 7x7 uniform window
  (``v = N/(N-1) * (E[xy] - E[x]E[y])``, ``N = 49``), ``C1 = (0.01 R)^2``,
  ``C2 = (0.03 R)^2`` and ``R = data_range``::

      S = (2 mu_x mu_y + C1)(2 v_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(v_x + v_y + C2))

  and the result is the mean of ``S`` over the map cropped by ``(7 - 1) // 2 = 3``
  pixels at each border. Those cropped pixels are exactly the window positions that lie
  fully inside the image, so the boundary mode of skimage's filter (scipy ``reflect``)
  never matters, and the box means are computed with cumulative sums over the valid
  positions only. Matches ``skimage.metrics.structural_similarity(gt, pred,
  data_range=data_range)`` to ~1e-12 for float64 inputs. Identical inputs give 1.0.
  """
  gt, pred = _pair(gt, pred)
  if gt.ndim != 2:
    raise ValueError(f'ssim expects 2-D slices, got shape {gt.shape}')
  win = SSIM_WIN_SIZE
  if min(gt.shape) < win:
    raise ValueError(f'image {gt.shape} smaller than the {win}x{win} SSIM window')
  data_range = float(data_range)
  n = win * win
  cov_norm = n / (n - 1.0)

  def mean(a):
    return _box_sum_valid(a, win) / n

  ux, uy = mean(gt), mean(pred)
  uxx, uyy, uxy = mean(gt * gt), mean(pred * pred), mean(gt * pred)
  vx = cov_norm * (uxx - ux * ux)
  vy = cov_norm * (uyy - uy * uy)
  vxy = cov_norm * (uxy - ux * uy)

  c1 = (SSIM_K1 * data_range) ** 2
  c2 = (SSIM_K2 * data_range) ** 2
  a1 = 2.0 * ux * uy + c1
  a2 = 2.0 * vxy + c2
  b1 = ux**2 + uy**2 + c1
  b2 = vx + vy + c2
  s = (a1 * a2) / (b1 * b2)
  return float(s.mean(dtype=np.float64))


def nmse(gt, pred) -> float:
  """Normalised mean squared error ``||gt - pred||_2^2 / ||gt||_2^2`` (fastMRI).

  Computed over the whole array (all slices of a volume together).
  """
  gt, pred = _pair(gt, pred)
  return float(np.sum((gt - pred) ** 2) / np.sum(gt**2))


def volume_metrics(gt, pred, *, data_range: float | None = None) -> dict:
  """PSNR / SSIM / NMSE of a volume ``(S, H, W)`` with the fastMRI convention.

  * ``R = gt.max()`` over the whole volume (unless ``data_range`` is given),
  * ``psnr = 10 log10(R^2 / mean((gt - pred)^2))`` over the whole volume,
  * ``ssim = (1/S) * sum_s ssim(gt[s], pred[s], R)``,
  * ``nmse = ||gt - pred||^2 / ||gt||^2`` over the whole volume.

  A 2-D input is treated as a single-slice volume. Returns
  ``{'psnr': float, 'ssim': float, 'nmse': float}``.
  """
  gt, pred = _pair(gt, pred)
  if gt.ndim == 2:
    gt, pred = gt[None], pred[None]
  if gt.ndim != 3:
    raise ValueError(f'volume_metrics expects (S, H, W) or (H, W), got {gt.shape}')
  r = float(gt.max()) if data_range is None else float(data_range)
  return {
    'psnr': psnr(gt, pred, r),
    'ssim': float(np.mean([ssim(g, p, r) for g, p in zip(gt, pred)])),
    'nmse': nmse(gt, pred),
  }


def mean_metrics(rows: Sequence[Mapping]) -> dict:
  """Average metric dicts key by key: ``out[k] = (1/n_k) * sum_i rows[i][k]``.

  ``n_k`` is the number of rows that have key ``k`` (keys keep first-seen order).
  Numeric values (including numpy scalars) are averaged; nested dicts — such as the
  ``{'volume': ..., 'model': {...}, 'bicubic': {...}}`` per-volume rows — are averaged
  recursively; anything else (names, strings) is skipped. An ``inf`` PSNR makes the mean
  ``inf``. An empty list gives ``{}``.
  """
  out: dict = {}
  keys: list = []
  for row in rows:
    for k in row:
      if k not in keys:
        keys.append(k)
  for k in keys:
    vals = [row[k] for row in rows if k in row]
    if all(isinstance(v, Mapping) for v in vals):
      out[k] = mean_metrics(vals)
    elif all(isinstance(v, (Number, np.number)) and not isinstance(v, bool) for v in vals):
      out[k] = float(np.mean(np.asarray(vals, dtype=np.float64)))
  return out
