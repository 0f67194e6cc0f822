"""mrisr_jax.metrics against skimage.metrics (skimage is a test-only dependency)."""

import math

import numpy as np
import pytest

skm = pytest.importorskip('skimage.metrics')

from mrisr_jax.metrics import mean_metrics, nmse, psnr, ssim, volume_metrics  # noqa: E402

pytestmark = pytest.mark.unit

SHAPES = [(7, 7), (8, 13), (31, 17), (64, 64), (97, 120)]


def _smooth(shape, rng):
  """A smooth image: sum of random low-frequency sinusoids, scaled to [0, 1]."""
  yy, xx = np.meshgrid(np.linspace(0, 1, shape[0]), np.linspace(0, 1, shape[1]), indexing='ij')
  img = np.zeros(shape)
  for _ in range(4):
    fy, fx, ph = rng.uniform(0.5, 3.0), rng.uniform(0.5, 3.0), rng.uniform(0, 2 * np.pi)
    img += np.sin(2 * np.pi * (fy * yy + fx * xx) + ph)
  return (img - img.min()) / (img.max() - img.min())


def _pairs(shape, rng):
  a = rng.random(shape)
  yield 'random', a, rng.random(shape)
  yield 'random-noisy', a, a + 0.05 * rng.standard_normal(shape)
  s = _smooth(shape, rng)
  yield 'smooth', s, np.clip(s + 0.02 * rng.standard_normal(shape), 0, 1)
  # MRI-like magnitude scale (fastMRI volumes are ~1e-4)
  yield 'small-scale', 3e-4 * s, 3e-4 * np.clip(s + 0.03 * rng.standard_normal(shape), 0, 1)


@pytest.mark.parametrize('shape', SHAPES)
def test_psnr_ssim_match_skimage(shape):
  rng = np.random.default_rng(sum(shape))
  for name, gt, pred in _pairs(shape, rng):
    for dr in (1.0, float(gt.max()), 2.5 * float(gt.max())):
      ref_p = skm.peak_signal_noise_ratio(gt, pred, data_range=dr)
      ref_s = skm.structural_similarity(gt, pred, data_range=dr)
      assert psnr(gt, pred, dr) == pytest.approx(ref_p, abs=1e-6), name
      assert ssim(gt, pred, dr) == pytest.approx(ref_s, abs=1e-6), name
      assert isinstance(psnr(gt, pred, dr), float)
      assert isinstance(ssim(gt, pred, dr), float)


def test_ssim_float32_input_computed_in_float64():
  rng = np.random.default_rng(3)
  gt = _smooth((40, 50), rng)
  pred = np.clip(gt + 0.05 * rng.standard_normal(gt.shape), 0, 1)
  ref = skm.structural_similarity(gt, pred, data_range=1.0)  # float64 reference
  assert ssim(gt.astype(np.float32), pred.astype(np.float32), 1.0) == pytest.approx(
    skm.structural_similarity(
      gt.astype(np.float32).astype(np.float64),
      pred.astype(np.float32).astype(np.float64),
      data_range=1.0,
    ),
    abs=1e-9,
  )
  assert ssim(gt, pred, 1.0) == pytest.approx(ref, abs=1e-12)


def test_ssim_large_image_precision():
  rng = np.random.default_rng(7)
  gt = _smooth((320, 320), rng) * 5e-4
  pred = gt + 1e-5 * rng.standard_normal(gt.shape)
  dr = gt.max()
  assert ssim(gt, pred, dr) == pytest.approx(skm.structural_similarity(gt, pred, data_range=dr), abs=1e-9)


def test_ssim_rejects_bad_inputs():
  with pytest.raises(ValueError):
    ssim(np.zeros((6, 10)), np.zeros((6, 10)), 1.0)
  with pytest.raises(ValueError):
    ssim(np.zeros((3, 8, 8)), np.zeros((3, 8, 8)), 1.0)
  with pytest.raises(ValueError):
    ssim(np.zeros((8, 8)), np.zeros((8, 9)), 1.0)


def test_nmse_formula():
  rng = np.random.default_rng(1)
  gt, pred = rng.random((3, 20, 24)), rng.random((3, 20, 24))
  expect = np.linalg.norm(gt - pred) ** 2 / np.linalg.norm(gt) ** 2
  assert nmse(gt, pred) == pytest.approx(expect, rel=1e-12)
  assert nmse(gt, 2 * gt) == pytest.approx(1.0)


def test_identical_inputs():
  rng = np.random.default_rng(2)
  x = rng.random((33, 40))
  assert ssim(x, x, 1.0) == pytest.approx(1.0, abs=1e-12)
  assert nmse(x, x) == 0.0
  # documented: PSNR of identical inputs is +inf (MSE = 0), without a warning
  with np.errstate(all='raise'):
    assert psnr(x, x, 1.0) == math.inf
  vol = rng.random((2, 16, 16))
  m = volume_metrics(vol, vol.copy())
  assert m['psnr'] == math.inf and m['nmse'] == 0.0
  assert m['ssim'] == pytest.approx(1.0, abs=1e-12)


def _fastmri_reference(gt, pred):
  """The fastMRI evaluate.py computation, written directly with skimage."""
  maxval = gt.max()
  p = skm.peak_signal_noise_ratio(gt, pred, data_range=maxval)
  s = sum(skm.structural_similarity(gt[i], pred[i], data_range=maxval) for i in range(gt.shape[0])) / gt.shape[0]
  n = np.linalg.norm(gt - pred) ** 2 / np.linalg.norm(gt) ** 2
  return {'psnr': p, 'ssim': s, 'nmse': n}


def test_volume_metrics_fastmri_convention():
  rng = np.random.default_rng(4)
  # slices with different brightness, so a per-slice data_range would differ
  gt = np.stack([_smooth((40, 36), rng) * a for a in (1e-4, 3e-4, 2e-4, 0.5e-4)])
  pred = np.abs(gt + 1e-5 * rng.standard_normal(gt.shape))
  got = volume_metrics(gt, pred)
  ref = _fastmri_reference(gt, pred)
  assert set(got) == {'psnr', 'ssim', 'nmse'}
  for k in ref:
    assert got[k] == pytest.approx(ref[k], abs=1e-6, rel=1e-9), k
  # per-slice data_range would give a different SSIM: the convention matters
  per_slice = np.mean([skm.structural_similarity(g, p, data_range=g.max()) for g, p in zip(gt, pred)])
  assert abs(per_slice - got['ssim']) > 1e-4
  # explicit data_range override and 2-D input
  assert volume_metrics(gt, pred, data_range=1.0)['psnr'] == pytest.approx(
    skm.peak_signal_noise_ratio(gt, pred, data_range=1.0), abs=1e-6
  )
  two_d = volume_metrics(gt[1], pred[1])
  assert two_d['ssim'] == pytest.approx(skm.structural_similarity(gt[1], pred[1], data_range=gt[1].max()), abs=1e-6)


def test_mean_metrics():
  rows = [
    {'psnr': 30.0, 'ssim': 0.8, 'nmse': 0.02},
    {'psnr': 34.0, 'ssim': np.float32(0.9), 'nmse': 0.04},
  ]
  m = mean_metrics(rows)
  assert m == pytest.approx({'psnr': 32.0, 'ssim': 0.85, 'nmse': 0.03})
  nested = [
    {'volume': 'a', 'model': {'psnr': 30.0}, 'bicubic': {'psnr': 28.0}},
    {'volume': 'b', 'model': {'psnr': 32.0}, 'bicubic': {'psnr': 27.0}},
  ]
  assert mean_metrics(nested) == {'model': {'psnr': 31.0}, 'bicubic': {'psnr': 27.5}}
  assert mean_metrics([]) == {}
  assert mean_metrics([{'psnr': math.inf}, {'psnr': 30.0}])['psnr'] == math.inf
