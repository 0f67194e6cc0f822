"""Degradation steps: antialiased bicubic, Gaussian blur, k-space truncation, slice thickening, Rician
noise, area resize, the step grammar, and the bicubic-upsampled input the pipeline hands SRCNN/DRRN."""

import dataclasses
import math

import numpy as np
import pytest

from mrisr_jax.data import degrade, pipeline

pytestmark = pytest.mark.unit


def test_antialiased_bicubic_is_torchs_algorithm_with_the_chosen_kernel():
  torch = pytest.importorskip('torch')
  rng = np.random.default_rng(0)
  for h, w, oh, ow in [(20, 24, 5, 6), (17, 9, 4, 3), (48, 48, 12, 12)]:
    x = rng.random((h, w))
    ref = torch.nn.functional.interpolate(
      torch.from_numpy(x[None, None]), size=(oh, ow), mode='bicubic', antialias=True
    ).numpy()[0, 0]
    # torch's antialiased path uses the a = -0.5 kernel; ours is the same algorithm with a parameter.
    np.testing.assert_allclose(degrade.bicubic_resize(x, oh, ow, antialias=True, a=-0.5), ref, atol=1e-12)


def test_bicubic_downsample_keeps_constants_and_uses_every_pixel():
  np.testing.assert_allclose(degrade.bicubic_downsample(np.full((16, 12), 0.3), 4), 0.3, atol=1e-12)
  x = np.zeros((16, 16))
  x[5, 6] = 1.0  # one pixel spreads over a 4x-wide kernel: several outputs, ~1/16 of its mass in all
  y = degrade.bicubic_downsample(x, 4)
  assert (np.abs(y) > 1e-3).sum() >= 4
  assert y.sum() == pytest.approx(1 / 16, rel=0.05)


def test_gaussian_blur_equals_scipy_mirror_mode():
  ndimage = pytest.importorskip('scipy.ndimage')
  x = np.random.default_rng(1).random((2, 20, 23))
  for sigma in (0.5, 1.0, 2.0):
    ref = np.stack([ndimage.gaussian_filter(s, sigma, mode='mirror', truncate=4.0) for s in x])
    np.testing.assert_allclose(degrade.gaussian_blur(x, sigma), ref, atol=1e-12)


def test_make_lr_applies_the_steps_in_order_and_rejects_bad_ones():
  x = np.random.default_rng(2).random((32, 24)).astype(np.float32)
  np.testing.assert_allclose(
    degrade.make_lr(x, 4, ('bicubic', 'blur:1.0')),
    degrade.gaussian_blur(degrade.bicubic_downsample(x, 4), 1.0),
    atol=1e-6,
  )
  np.testing.assert_allclose(degrade.make_lr(x, 2), degrade.area_downsample(x, 2), atol=1e-7)
  for bad, message in [
    (('blur:1.0',), 'exactly one downsampling'),
    (('area', 'bicubic'), 'exactly one'),
    (('area', 'blur:-1'), 'positive sigma'),
    (('nearest',), "unknown step 'nearest'"),
  ]:
    with pytest.raises(ValueError, match=message):
      degrade.make_lr(x, 2, bad)


def test_pipeline_gives_upsampled_input_and_rectangular_crops():
  data = dict(hr_patch_size=(32, 48), degradation=('bicubic', 'blur:1.0'), flips=False)
  plain = next(
    iter(pipeline.make_train_dataset(data, scale=4, global_batch_size=2, seed=3, process_index=0, process_count=1)[0])
  )
  up = next(
    iter(
      pipeline.make_train_dataset(
        data, scale=4, global_batch_size=2, seed=3, process_index=0, process_count=1, upsampled_input=True
      )[0]
    )
  )
  assert plain['hr'].shape == (2, 32, 48, 1) and plain['lr'].shape == (2, 8, 12, 1)
  np.testing.assert_array_equal(up['hr'], plain['hr'])
  assert up['lr'].shape == (2, 32, 48, 1)
  expected = np.clip(degrade.bicubic_upsample(plain['lr'][..., 0], 4), 0, 1)
  np.testing.assert_allclose(up['lr'][..., 0], expected, atol=1e-6)
  np.testing.assert_allclose(
    plain['lr'][..., 0], degrade.make_lr(plain['hr'][..., 0], 4, data['degradation']), atol=1e-6
  )


# ----------------------------------------------------------------------------------------------
# bicubic (a = -0.75) against a plain per-pixel reference
# ----------------------------------------------------------------------------------------------
def _keys(t, a):
  t = abs(t)
  if t <= 1:
    return (a + 2) * t**3 - (a + 3) * t**2 + 1
  if t < 2:
    return a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a
  return 0.0


def _aa_bicubic_1d(x, out_size, a):
  """PIL's precompute_coeffs written out: stretched kernel, taps inside the image, renormalised."""
  n = x.shape[0]
  scale = n / out_size
  out = np.zeros((out_size,) + x.shape[1:])
  for i in range(out_size):
    centre = (i + 0.5) * scale
    lo = max(int(centre - 2 * scale + 0.5), 0)
    hi = min(int(centre + 2 * scale + 0.5), n)
    weights = [_keys((j - centre + 0.5) / scale, a) for j in range(lo, hi)]
    total = sum(weights)
    for j, w in zip(range(lo, hi), weights):
      out[i] += w / total * x[j]
  return out


@pytest.mark.parametrize('scale', [2, 3, 4])
def test_antialiased_bicubic_a075_equals_a_per_pixel_reference(scale):
  x = np.random.default_rng(10).random((24, 36))
  ref = _aa_bicubic_1d(_aa_bicubic_1d(x, 24 // scale, -0.75).T, 36 // scale, -0.75).T
  np.testing.assert_allclose(degrade.bicubic_downsample(x, scale), ref, atol=1e-5)
  np.testing.assert_allclose(degrade.make_lr(x.astype(np.float32), scale, ('bicubic',)), ref, atol=1e-5)
  # along one axis only: the other is untouched
  np.testing.assert_allclose(
    degrade.make_lr(x, scale, ('bicubic:axes=1',)), _aa_bicubic_1d(x.T, 36 // scale, -0.75).T, atol=1e-5
  )


# ----------------------------------------------------------------------------------------------
# k-space truncation
# ----------------------------------------------------------------------------------------------
def _band_limited(shape, band, seed):
  """Real, positive image whose centred spectrum is zero outside the open band |k_axis| < band_axis / 2."""
  rng = np.random.default_rng(seed)
  spec = np.zeros(shape, complex)
  ky = np.arange(shape[0]) - shape[0] // 2
  kx = np.arange(shape[1]) - shape[1] // 2
  inside = (np.abs(ky)[:, None] < band[0] / 2) & (np.abs(kx)[None, :] < band[1] / 2)
  spec[inside] = rng.normal(size=inside.sum()) + 1j * rng.normal(size=inside.sum())
  x = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(spec))).real  # real part: Hermitian, same band
  x = (x - x.min()) / (x.max() - x.min())
  return x + 0.2


def _interpolant(x, ys, xs):
  """The trigonometric (band-limited) interpolant of x at fractional pixel positions."""
  h, w = x.shape
  spec = np.fft.fft2(x) / (h * w)  # x[t] = sum_k spec[k] exp(2 pi i k t / n)
  ky, kx = np.fft.fftfreq(h) * h, np.fft.fftfreq(w) * w
  ey = np.exp(2j * np.pi * np.outer(ys, ky) / h)
  ex = np.exp(2j * np.pi * np.outer(kx, xs) / w)
  return (ey @ spec @ ex).real


@pytest.mark.parametrize('scale', [2, 3, 4])
def test_kspace_truncation_of_a_band_limited_image_samples_it_at_block_centres(scale):
  h, w = 12 * scale, 10 * scale  # kept lengths m = 12 x 10 (even); an odd m below
  x = _band_limited((h, w), (h // scale, w // scale), seed=scale)
  centres = lambda n: np.arange(n // scale) * scale + (scale - 1) / 2
  expected = _interpolant(x, centres(h), centres(w))
  out = degrade.kspace_truncate(x, (scale, scale))
  assert out.shape == (h // scale, w // scale) and out.dtype == np.float64
  np.testing.assert_allclose(out, expected, atol=1e-10)
  # float32 runs in complex64 and is still accurate
  out32 = degrade.kspace_truncate(x.astype(np.float32), (scale, scale))
  assert out32.dtype == np.float32
  np.testing.assert_allclose(out32, expected, atol=1e-5)
  # one axis only: only that axis shrinks; an odd kept length m lands on block centres too
  hr = 9 * scale
  xr = _band_limited((hr, w), (hr // scale, w), seed=scale + 10)
  rows = degrade.kspace_truncate(xr, (scale, 1))
  assert rows.shape == (hr // scale, w)
  np.testing.assert_allclose(rows, _interpolant(xr, centres(hr), np.arange(w)), atol=1e-10)
  assert degrade.make_lr(xr, scale, ('kspace:axes=0',)).shape == (hr // scale, w)


def test_kspace_truncation_keeps_constants_with_every_window():
  x = np.full((2, 32, 40), 0.7, np.float32)
  for window, alpha in [('none', 0.5), ('hamming', 0.5), ('tukey', 0.0), ('tukey', 0.5), ('tukey', 1.0)]:
    for factors in [(2, 2), (4, 1), (1, 4), (4, 2)]:
      out = degrade.kspace_truncate(x, factors, window, alpha)
      assert out.shape == (2, 32 // factors[0], 40 // factors[1])
      np.testing.assert_allclose(out, 0.7, atol=1e-5, err_msg=f'{window} {alpha} {factors}')


def _tukey(size, alpha):
  """scipy.signal.windows.tukey(size, alpha), index form (scipy.signal itself imports too slowly)."""
  if alpha <= 0 or size == 1:
    return np.ones(size)
  if alpha >= 1:
    return np.hanning(size)
  n = np.arange(size)
  width = int(np.floor(alpha * (size - 1) / 2.0))
  w1 = 0.5 * (1 + np.cos(np.pi * (-1 + 2.0 * n[: width + 1] / alpha / (size - 1))))
  w3 = 0.5 * (1 + np.cos(np.pi * (-2.0 / alpha + 1 + 2.0 * n[size - width - 1 :] / alpha / (size - 1))))
  return np.concatenate([w1, np.ones(size - 2 * width - 2), w3])


def _dc_window(m, window, alpha):
  """Symmetric window of odd length centred on DC (index m // 2), truncated to the m kept samples."""
  size = 2 * (m // 2) + 1
  if window == 'none':
    return np.ones(m)
  w = np.hamming(size) if window == 'hamming' else _tukey(size, alpha)
  return w[:m]


@pytest.mark.parametrize('window,alpha', [('none', 0.5), ('hamming', 0.5), ('tukey', 0.3), ('tukey', 1.0)])
def test_kspace_truncation_equals_the_fft_formula(window, alpha):
  x = np.random.default_rng(11).random((32, 48))
  spec = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x), norm='ortho'))  # DC at (16, 24)
  for fy, fx in [(2, 2), (4, 4), (4, 1), (1, 2)]:
    my, mx = 32 // fy, 48 // fx
    block = spec[16 - my // 2 : 16 - my // 2 + my, 24 - mx // 2 : 24 - mx // 2 + mx]
    # block-centre phase (even m: the FFT grid is at j * f, so d = (f - 1) / 2)
    block = block * np.exp(2j * np.pi * (np.arange(my) - my // 2) * (fy - 1) / 2 / 32)[:, None]
    block = block * np.exp(2j * np.pi * (np.arange(mx) - mx // 2) * (fx - 1) / 2 / 48)[None, :]
    if fy > 1:
      block = block * _dc_window(my, window, alpha)[:, None]
    if fx > 1:
      block = block * _dc_window(mx, window, alpha)[None, :]
    ref = np.abs(np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(block), norm='ortho'))) / math.sqrt(fy * fx)
    np.testing.assert_allclose(degrade.kspace_truncate(x, (fy, fx), window, alpha), ref, atol=1e-12)
    out32 = degrade.kspace_truncate(x.astype(np.float32), (fy, fx), window, alpha)
    np.testing.assert_allclose(out32, ref, atol=2e-6)
  # the window is 1 at DC and tapers: hamming keeps the constant but damps fine detail
  if window != 'none':
    assert _dc_window(16, window, alpha)[8] == pytest.approx(1.0)
    plain = degrade.kspace_truncate(x, (2, 2))
    assert np.std(degrade.kspace_truncate(x, (2, 2), window, alpha)) < np.std(plain)


def test_kspace_truncation_is_a_global_step_and_rejects_bad_arguments():
  assert degrade.is_global(('kspace',)) and not degrade.is_global(('area', 'blur:1.0'))
  with pytest.raises(ValueError, match='not divisible'):
    degrade.kspace_truncate(np.zeros((30, 32)), (4, 4))
  with pytest.raises(ValueError, match='window'):
    degrade.kspace_truncate(np.zeros((32, 32)), (2, 2), 'hann')


# ----------------------------------------------------------------------------------------------
# slice thickening
# ----------------------------------------------------------------------------------------------
def test_thick_box_is_the_mean_of_consecutive_rows():
  x = np.random.default_rng(12).random((2, 32, 40)).astype(np.float32)
  for s in (2, 4):
    out = degrade.make_lr(x, s, ('thick',))
    ref = x.reshape(2, 32 // s, s, 40).mean(axis=2)
    assert out.shape == (2, 32 // s, 40)
    np.testing.assert_allclose(out, ref, atol=1e-6)
    np.testing.assert_allclose(degrade.slice_thicken(x, s, 0, 'box'), ref, atol=1e-6)


@pytest.mark.parametrize('scale,fwhm', [(2, None), (4, None), (4, 6.0)])
def test_thick_gaussian_profile_weights(scale, fwhm):
  n = 40
  weights = degrade.slice_thicken(np.eye(n), scale, 0, 'gaussian', fwhm)  # row k = w_k(i)
  assert weights.shape == (n // scale, n)
  np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-12)
  sigma = (fwhm or scale) / (2 * math.sqrt(2 * math.log(2)))
  radius = max(3 * sigma, (scale - 1) / 2)
  i = np.arange(n)
  ramp = degrade.slice_thicken(np.tile(i[:, None].astype(float), (1, 3)), scale, 0, 'gaussian', fwhm)
  interior = 0
  for k, row in enumerate(weights):
    centre = k * scale + (scale - 1) / 2
    support = np.abs(i - centre) <= radius
    assert np.all(row[~support] == 0) and np.all(row[support] > 0)
    if centre - radius < 0 or centre + radius > n - 1:
      continue  # taps cut by the border (renormalised)
    interior += 1
    ref = np.exp(-0.5 * ((i - centre) / sigma) ** 2) * support
    np.testing.assert_allclose(row, ref / ref.sum(), atol=1e-12)
    taps = i[support]
    np.testing.assert_allclose(row[taps], row[(2 * centre - taps).astype(int)], atol=1e-15)  # symmetric
    np.testing.assert_allclose(ramp[k], centre, atol=1e-9)  # a ramp lands on the slab centre
  assert interior >= n // scale - 4


def test_thick_along_axis_1_is_axis_0_of_the_transpose():
  x = np.random.default_rng(13).random((32, 40)).astype(np.float32)
  for steps in [('thick:axis=1',), ('thick:axis=1,profile=gaussian',), ('thick:axis=1,profile=gaussian,fwhm=3',)]:
    out = degrade.make_lr(x, 4, steps)
    assert out.shape == (32, 10)
    np.testing.assert_allclose(out, degrade.make_lr(x.T, 4, (steps[0].replace('axis=1', 'axis=0'),)).T, atol=1e-6)
  np.testing.assert_allclose(
    degrade.make_lr(x, 4, ('thick:axis=1',)), degrade.make_lr(x, 4, ('area:axes=1',)), atol=1e-6
  )


# ----------------------------------------------------------------------------------------------
# Rician noise
# ----------------------------------------------------------------------------------------------
def _rician_mean(a, sigma):
  special = pytest.importorskip('scipy.special')
  t = a * a / (2 * sigma * sigma)
  laguerre = (1 + t) * special.i0e(t / 2) + t * special.i1e(t / 2)  # L_{1/2}(-t), Bessel form
  assert laguerre == pytest.approx(special.hyp1f1(-0.5, 1, -t), rel=1e-10)
  return sigma * math.sqrt(math.pi / 2) * laguerre


@pytest.mark.parametrize('a,sigma', [(0.5, 0.1), (0.1, 0.1), (0.0, 0.05)])
def test_rician_noise_has_the_rician_mean(a, sigma):
  x = np.full((200, 200), a, np.float32)
  y = degrade.rician_noise(x, sigma, np.random.default_rng(14))
  assert y.dtype == np.float32 and y.shape == x.shape
  expected = _rician_mean(a, sigma)
  if a == 0:
    assert expected == pytest.approx(sigma * math.sqrt(math.pi / 2))  # Rayleigh
  assert y.mean() == pytest.approx(expected, rel=0.02)
  assert (y.astype(np.float64) ** 2).mean() == pytest.approx(a * a + 2 * sigma * sigma, rel=0.02)


def test_noise_step_follows_the_rng_and_needs_one():
  x = np.random.default_rng(15).random((32, 40)).astype(np.float32)
  steps = ('bicubic', 'noise:snr=20')
  one = degrade.make_lr(x, 2, steps, rng=np.random.default_rng(3))
  two = degrade.make_lr(x, 2, steps, rng=np.random.default_rng(3))
  other = degrade.make_lr(x, 2, steps, rng=np.random.default_rng(4))
  np.testing.assert_array_equal(one, two)
  assert not np.array_equal(one, other)
  clean = degrade.bicubic_downsample(x, 2)
  assert 0.03 < np.std(one - clean) < 0.07  # sigma = 1/20 (Rician, so not exactly)
  np.testing.assert_allclose(
    degrade.make_lr(x, 2, ('area', 'noise:sigma=0.05'), np.random.default_rng(3)),
    degrade.rician_noise(degrade.area_downsample(x, 2), 0.05, np.random.default_rng(3)),
  )
  with pytest.raises(ValueError, match='noise.*rng'):
    degrade.make_lr(x, 2, steps)


# ----------------------------------------------------------------------------------------------
# the step grammar
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
  'steps,bad,needle',
  [
    (('lanczos',), 'lanczos', "unknown step 'lanczos'; known: area, bicubic, kspace, thick, blur, noise"),
    (('area:scale=2',), 'area:scale=2', "unknown key 'scale' for area; known: axes"),
    (('kspace:window=hann',), 'kspace:window=hann', 'window must be one of none|hamming|tukey'),
    (('kspace:window=tukey,alpha=1.5',), 'kspace:window=tukey,alpha=1.5', 'alpha must be in [0, 1]'),
    (('thick:axis=0', 'area'), 'area', 'reduces axis 0'),
    (('kspace:axes=1', 'bicubic:axes=1'), 'bicubic:axes=1', 'reduces axis 1'),
    (('blur:1.0', 'noise:snr=10'), ('blur:1.0', 'noise:snr=10'), 'no downsampling step'),
    (('area', 'noise:snr=0'), 'noise:snr=0', 'snr must be a positive number'),
    (('area', 'noise:snr=-3'), 'noise:snr=-3', 'snr must be a positive number'),
    (('thick:axis=2',), 'thick:axis=2', 'axis must be one of 0|1'),
    (('area:axes=2',), 'area:axes=2', 'axes must be one of both|0|1'),
    (('thick:fwhm=3',), 'thick:fwhm=3', 'fwhm only applies to profile=gaussian'),
    (('kspace:0.5',), 'kspace:0.5', 'key=value'),
    (('bicubic:matlab,a=-0.5',), 'bicubic:matlab,a=-0.5', 'a=-0.5 does not go with matlab'),
    (('bicubic:a=-0.75, matlab',), 'bicubic:a=-0.75, matlab', 'a=-0.75 does not go with matlab'),
    (('bicubic:cubic',), 'bicubic:cubic', "keys: axes, a) or the flag matlab, got 'cubic'"),
    (('bicubic:axes=0,mat',), 'bicubic:axes=0,mat', "or the flag matlab, got 'mat'"),
    (('bicubic:matlab,matlab',), 'bicubic:matlab,matlab', "flag 'matlab' given twice"),
    (('area:matlab',), 'area:matlab', "area takes key=value arguments (keys: axes), got 'matlab'"),
  ],
)
def test_parse_errors_name_the_step(steps, bad, needle):
  with pytest.raises(ValueError) as err:
    degrade.parse_degradation(steps)
  msg = str(err.value)
  assert '\n' not in msg and msg.startswith(f'data.degradation: {bad!r}: ') and needle in msg, msg


def test_parse_fills_defaults_and_keeps_the_old_syntax():
  (blur,) = degrade.parse_degradation(('area', 'blur:1.5'))[1:]
  assert blur == degrade.parse_degradation(('area', 'blur:sigma=1.5'))[1] and blur.param('sigma') == 1.5
  assert blur.axes == ()
  assert degrade.parse_degradation('kspace') == degrade.parse_degradation(('kspace:window=none,axes=both',))
  k, n = degrade.parse_degradation(('kspace:window=tukey', 'noise:snr=20'))
  assert k == degrade.Step('kspace', (0, 1), (('alpha', 0.5), ('window', 'tukey')))
  assert n.name == 'noise' and n.param('sigma') == pytest.approx(0.05)
  (t,) = degrade.parse_degradation(('thick:profile=gaussian,axis=1, fwhm=3',))
  assert t.axes == (1,) and t.param('fwhm') == 3.0 and t.param('profile') == 'gaussian'
  assert degrade.parse_degradation(('bicubic',))[0].param('a') == -0.75
  assert degrade.parse_degradation(('bicubic:a=-0.5,axes=0',))[0] == degrade.Step('bicubic', (0,), (('a', -0.5),))
  matlab = degrade.Step('bicubic', (0, 1), (('a', -0.5), ('matlab', True)))
  assert degrade.parse_degradation('bicubic:matlab') == (matlab,)
  assert degrade.parse_degradation(('bicubic:axes=1, matlab',))[0] == dataclasses.replace(matlab, axes=(1,))


def test_lr_factors_is_global_needs_rng():
  cases = [
    (('area',), (4, 4), False, False),
    (('thick:axis=0',), (4, 1), False, False),
    (('thick:axis=1,profile=gaussian', 'noise:snr=30'), (1, 4), False, True),
    (('kspace:window=hamming,axes=0', 'area:axes=1'), (4, 4), True, False),
    (('blur:1.0', 'bicubic:axes=1', 'noise:sigma=0.02'), (1, 4), False, True),
    (('bicubic:matlab,axes=0', 'noise:snr=30'), (4, 1), False, True),
  ]
  x = np.random.default_rng(16).random((32, 40)).astype(np.float32)
  for steps, factors, glob, rng in cases:
    assert degrade.lr_factors(steps, 4) == factors, steps
    assert degrade.is_global(steps) is glob and degrade.needs_rng(steps) is rng, steps
    assert degrade.make_lr(x, 4, steps, np.random.default_rng(0)).shape == (32 // factors[0], 40 // factors[1])
  assert degrade.lr_factors(('area',), 1) == (1, 1)


def test_mixed_axes_chain_applies_each_step_to_its_axis():
  x = np.random.default_rng(17).random((32, 40)).astype(np.float32)
  out = degrade.make_lr(x, 4, ('area:axes=0', 'bicubic:axes=1'))
  rows = x.reshape(8, 4, 40).mean(axis=1)
  np.testing.assert_allclose(out, _aa_bicubic_1d(rows.T.astype(np.float64), 10, -0.75).T, atol=1e-5)
  with pytest.raises(ValueError, match='not divisible'):
    degrade.make_lr(np.zeros((30, 40), np.float32), 4, ('thick:axis=0',))


# ----------------------------------------------------------------------------------------------
# area resize (OpenCV INTER_AREA)
# ----------------------------------------------------------------------------------------------
def test_area_resize_integer_factors_equal_area_downsample():
  x = np.random.default_rng(18).random((2, 24, 36)).astype(np.float32)
  for s in (2, 3, 4):
    np.testing.assert_allclose(degrade.area_resize(x, 24 // s, 36 // s), degrade.area_downsample(x, s), atol=1e-6)
  # different integer factors per axis go through the weight matrices
  np.testing.assert_allclose(degrade.area_resize(x, 12, 9), x.reshape(2, 12, 2, 9, 4).mean(axis=(2, 4)), atol=1e-6)


def test_area_resize_uses_exact_fractional_overlaps():
  x = np.random.default_rng(19).random((10, 7))
  # 10 -> 4: footprints of 2.5 pixels, [0, 2.5), [2.5, 5), [5, 7.5), [7.5, 10)
  hand = np.stack(
    [
      (x[0] + x[1] + 0.5 * x[2]) / 2.5,
      (0.5 * x[2] + x[3] + x[4]) / 2.5,
      (x[5] + x[6] + 0.5 * x[7]) / 2.5,
      (0.5 * x[7] + x[8] + x[9]) / 2.5,
    ]
  )
  np.testing.assert_allclose(degrade.area_resize(x, 4, 7), hand, atol=1e-12)
  for n, m in [(10, 4), (37, 11), (96, 70), (7, 7)]:
    weights = degrade.area_resize(np.eye(n), m, n)  # rows = the weight matrix
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(weights.sum(axis=0), m / n, atol=1e-12)  # every pixel counts equally
  with pytest.raises(ValueError, match='enlarging'):
    degrade.area_resize(x, 12, 7)
