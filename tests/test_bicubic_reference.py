"""What each bicubic variant equals: `bicubic` (a = -0.75), `bicubic:a=-0.5` and `bicubic:matlab` against a
numpy transcription of MATLAB's `imresize`, PIL's BICUBIC and torch's bicubic `interpolate`.

The numbers in docs/degradations.md come from `python -m tests.test_bicubic_reference` (it prints the table);
the tests below pin them.
"""

import math

import numpy as np
import pytest

from mrisr_jax.data import degrade

pytestmark = pytest.mark.unit


# ----------------------------------------------------------------------------------------------
# MATLAB imresize, transcribed
# ----------------------------------------------------------------------------------------------
# A transcription of the algorithm of MATLAB's imresize (bicubic, 'Antialiasing' true: the default),
# as documented in imresize.m: `contributions` computes, per output pixel, P = ceil(kernel_width) + 2
# input indices and their normalised weights; out-of-range indices are mirrored; `resizeAlongDim`
# applies them along one dimension; dimensions go in the order of `sort(scale)` (the dimension with the
# smaller scale first). Indices are kept 1-based as in MATLAB. (BasicSR's `matlab_functions.imresize`
# is a public port of the same code; this one is written from the algorithm, not copied.)
def _matlab_cubic(x):
  """MATLAB imresize's `cubic`: Keys' kernel with a = -0.5."""
  absx = np.abs(x)
  absx2 = absx**2
  absx3 = absx**3
  return (1.5 * absx3 - 2.5 * absx2 + 1) * (absx <= 1) + (-0.5 * absx3 + 2.5 * absx2 - 4 * absx + 2) * (
    (1 < absx) & (absx <= 2)
  )


def _contributions(in_length, out_length, scale, kernel, kernel_width, antialiasing):
  if scale < 1 and antialiasing:
    # Use a modified kernel that simultaneously interpolates and antialiases.
    def h(x):
      return scale * kernel(scale * x)

    kernel_width = kernel_width / scale
  else:
    h = kernel
  # Output-space coordinates, and the input-space coordinates they map to (1-based).
  x = np.arange(1, out_length + 1, dtype=np.float64)[:, None]
  u = x / scale + 0.5 * (1 - 1 / scale)
  # The left-most pixel that can be involved in the computation.
  left = np.floor(u - kernel_width / 2)
  # The maximum number of pixels that can be involved (+2: both ends).
  p = int(math.ceil(kernel_width)) + 2
  indices = left + np.arange(p)[None, :]  # bsxfun(@plus, left, 0:P-1)
  weights = h(u - indices)
  weights = weights / weights.sum(axis=1, keepdims=True)  # normalise per output pixel
  # Clamp out-of-range indices: mirror, aux = [1:in_length, in_length:-1:1].
  aux = np.concatenate([np.arange(1, in_length + 1), np.arange(in_length, 0, -1)])
  indices = aux[np.mod(indices.astype(np.int64) - 1, aux.size)]
  # Drop columns of all-zero weights.
  kill = np.any(weights != 0, axis=0)
  return weights[:, kill], indices[:, kill]


def _resize_along_dim(a, dim, weights, indices):
  """out(k) = sum_p weights(k, p) * in(indices(k, p)) along `dim` (MATLAB's resizeAlongDim)."""
  a = np.moveaxis(a, dim, 0)
  out = np.einsum('kp,kp...->k...', weights, a[indices - 1])
  return np.moveaxis(out, 0, dim)


def matlab_imresize(img, scale=None, output_size=None):
  """MATLAB `imresize(img, scale)` or `imresize(img, output_size)`, 'bicubic', antialiasing on, in float64."""
  img = np.asarray(img, np.float64)
  in_size = img.shape[:2]
  if output_size is None:  # imresize(A, scale): output size ceil(scale * input size), scale kept as given
    scales = (float(scale), float(scale))
    output_size = tuple(int(math.ceil(scale * n)) for n in in_size)
  else:  # imresize(A, [rows cols]): scale = output_size ./ input_size
    scales = tuple(o / n for o, n in zip(output_size, in_size))
  order = np.argsort(scales, kind='stable')  # [~, order] = sort(scale)
  for k in order:
    weights, indices = _contributions(in_size[k], output_size[k], scales[k], _matlab_cubic, 4.0, True)
    img = _resize_along_dim(img, k, weights, indices)
  return img


# ----------------------------------------------------------------------------------------------
# test images and the other references
# ----------------------------------------------------------------------------------------------
def _random(h, w, seed=0):
  return np.random.default_rng(seed).random((h, w))


def _smooth(h, w):
  """A smooth image in [0, 1]: a Gaussian blob plus a slow ramp and a low-frequency cosine."""
  y, x = np.mgrid[0:h, 0:w] / np.array([h, w], np.float64)[:, None, None]
  blob = np.exp(-((y - 0.4) ** 2 + (x - 0.6) ** 2) / 0.08)
  return 0.5 * blob + 0.3 * x + 0.2 * (0.5 + 0.5 * np.cos(2 * np.pi * (y + 0.5 * x)))


def _pil(x, oh, ow):
  """PIL `Image.resize((ow, oh), BICUBIC)` on a float ('F', float32) image."""
  image = pytest.importorskip('PIL.Image')
  out = image.fromarray(np.asarray(x, np.float32), mode='F').resize((ow, oh), image.Resampling.BICUBIC)
  return np.asarray(out, np.float64)


def _torch(x, oh, ow, antialias):
  torch = pytest.importorskip('torch')
  t = torch.from_numpy(np.asarray(x, np.float64)[None, None])
  out = torch.nn.functional.interpolate(t, size=(oh, ow), mode='bicubic', align_corners=False, antialias=antialias)
  return out.numpy()[0, 0]


def _interior(d, margin):
  """Drop `margin` pixels at each side."""
  return d[margin:-margin, margin:-margin]


VARIANTS = {  # what `make_lr(hr, s, (step,))` does, in float64
  'bicubic (a=-0.75)': lambda x, oh, ow: degrade.bicubic_resize(x, oh, ow, antialias=True),
  'bicubic:a=-0.5': lambda x, oh, ow: degrade.bicubic_resize(x, oh, ow, antialias=True, a=-0.5),
  'bicubic:matlab': degrade.bicubic_resize_matlab,
}
REFERENCES = {
  'MATLAB imresize': lambda x, oh, ow: matlab_imresize(x, output_size=(oh, ow)),
  'PIL BICUBIC': _pil,
  'torch antialias': lambda x, oh, ow: _torch(x, oh, ow, True),
  'torch no antialias': lambda x, oh, ow: _torch(x, oh, ow, False),
}
UP_VARIANTS = {  # enlarging: bicubic_resize without antialias (evaluation baseline, upsampled input)
  'bicubic_resize (a=-0.75)': degrade.bicubic_resize,
  'bicubic_resize(a=-0.5)': lambda x, oh, ow: degrade.bicubic_resize(x, oh, ow, a=-0.5),
  'bicubic_resize_matlab': degrade.bicubic_resize_matlab,
}
IMAGES = {'random 48x48': _random(48, 48), 'smooth 48x48': _smooth(48, 48)}
UP_IMAGES = {'random 16x16': _random(16, 16, seed=1), 'smooth 16x16': _smooth(16, 16)}


def max_differences(variant, reference, scales=(2, 3, 4), images=None, enlarge=False):
  """(whole, interior) max |variant - reference| over `images` shrunk (enlarged) by each of `scales`.

  The interior leaves out 2 LR pixels at each side (2 s HR pixels when enlarging): there the kernel
  (2 s HR pixels each way when shrinking, 2 LR pixels when enlarging) stays inside the image.
  """
  variants, images = (UP_VARIANTS, images or UP_IMAGES) if enlarge else (VARIANTS, images or IMAGES)
  whole = inner = 0.0
  for x in images.values():
    for s in scales:
      oh, ow = (x.shape[0] * s, x.shape[1] * s) if enlarge else (x.shape[0] // s, x.shape[1] // s)
      d = np.abs(variants[variant](x, oh, ow) - REFERENCES[reference](x, oh, ow))
      whole, inner = max(whole, d.max()), max(inner, _interior(d, 2 * s if enlarge else 2).max())
  return whole, inner


# ----------------------------------------------------------------------------------------------
# the transcription itself
# ----------------------------------------------------------------------------------------------
def test_transcription_keeps_constants_and_mirrors_at_the_border():
  np.testing.assert_allclose(matlab_imresize(np.full((13, 20), 0.7), 1 / 3), 0.7, atol=1e-12)
  assert matlab_imresize(np.zeros((13, 20)), 1 / 3).shape == (5, 7)  # ceil(13 / 3), ceil(20 / 3)
  # 1-D x2 shrink of 8 samples: output 1 sits at u = 1.5 and reads (1-based) indices -2..5, the ones
  # below 1 mirrored (0 -> 1, -1 -> 2, -2 -> 3); of P = ceil(8) + 2 = 10 columns the two all-zero ones go
  w, idx = _contributions(8, 4, 0.5, _matlab_cubic, 4.0, True)
  assert idx[0].tolist() == [3, 2, 1, 1, 2, 3, 4, 5] and idx[3].tolist() == [4, 5, 6, 7, 8, 8, 7, 6]
  offsets = np.array([3.5, 2.5, 1.5, 0.5, -0.5, -1.5, -2.5, -3.5])  # u - index
  np.testing.assert_allclose(w, np.broadcast_to(_matlab_cubic(offsets / 2) / 2, (4, 8)), atol=1e-15)


# ----------------------------------------------------------------------------------------------
# bicubic:matlab equals MATLAB imresize
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize('scale', [2, 3, 4])
@pytest.mark.parametrize('image', ['random', 'smooth'])
def test_bicubic_matlab_step_equals_matlab_imresize(scale, image):
  for h, w in [(48, 48), (24, 36), (12, 60), (2 * scale, 3 * scale)]:  # the last: the kernel wraps twice
    x = _random(h, w, seed=h + w) if image == 'random' else _smooth(h, w)
    ref = matlab_imresize(x, 1 / scale)
    assert ref.shape == (h // scale, w // scale)
    np.testing.assert_allclose(ref, matlab_imresize(x, output_size=ref.shape), atol=1e-13)
    np.testing.assert_allclose(degrade.make_lr(x, scale, ('bicubic:matlab',)), ref, atol=1e-6)
    np.testing.assert_allclose(degrade.bicubic_resize_matlab(x, *ref.shape), ref, atol=1e-12)
    # one axis only: MATLAB resizing rows alone
    rows = matlab_imresize(x, output_size=(h // scale, w))
    np.testing.assert_allclose(degrade.make_lr(x, scale, ('bicubic:matlab,axes=0',)), rows, atol=1e-6)


@pytest.mark.parametrize(
  'in_shape,out_shape',
  [((17, 23), (5, 7)), ((20, 30), (7, 9)), ((9, 11), (27, 33)), ((10, 13), (23, 5)), ((31, 8), (31, 3))],
)
def test_bicubic_resize_matlab_equals_imresize_to_any_size(in_shape, out_shape):
  """Factors that are not integers, enlarging (no antialias there), and mixed: imresize(x, [rows cols])."""
  for x in (_random(*in_shape, seed=3), _smooth(*in_shape)):
    ref = matlab_imresize(x, output_size=out_shape)
    np.testing.assert_allclose(degrade.bicubic_resize_matlab(x, *out_shape), ref, atol=1e-12)
    got32 = degrade.bicubic_resize_matlab(x.astype(np.float32), *out_shape)
    assert got32.dtype == np.float32
    np.testing.assert_allclose(got32, ref, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# how the variants differ (the numbers in docs/degradations.md)
# ----------------------------------------------------------------------------------------------
def test_default_bicubic_is_not_matlab_and_a05_is_matlab_inside():
  whole, inner = max_differences('bicubic (a=-0.75)', 'MATLAB imresize')
  assert 1e-2 < inner <= whole < 0.1, (whole, inner)  # the kernel differs everywhere
  whole, inner = max_differences('bicubic:a=-0.5', 'MATLAB imresize')
  assert inner <= 1e-6 < 1e-3 < whole, (whole, inner)  # same kernel; only the borders differ
  # the smooth image alone: borders still differ clearly, the default kernel by less
  smooth = {'smooth': IMAGES['smooth 48x48']}
  assert max_differences('bicubic:a=-0.5', 'MATLAB imresize', images=smooth)[0] > 1e-3
  assert max_differences('bicubic (a=-0.75)', 'MATLAB imresize', images=smooth)[1] > 1e-4


def test_a05_equals_pil_and_torch_antialias_and_matlab_equals_them_inside():
  for ref in ('PIL BICUBIC', 'torch antialias'):
    whole, inner = max_differences('bicubic:a=-0.5', ref)
    assert whole <= (1e-6 if ref == 'PIL BICUBIC' else 1e-12), (ref, whole)  # PIL: float32 arithmetic
    whole, inner = max_differences('bicubic:matlab', ref)
    assert inner <= 1e-6 < 1e-3 < whole, (ref, whole, inner)
    whole, inner = max_differences('bicubic (a=-0.75)', ref)
    assert inner > 1e-2, (ref, inner)


def test_no_shrink_variant_is_torch_without_antialias():
  """torch's bicubic without antialias keeps 4 taps when shrinking (it aliases): no variant is close."""
  for variant in VARIANTS:
    whole, inner = max_differences(variant, 'torch no antialias', images={'random': IMAGES['random 48x48']})
    assert inner > 0.1, (variant, inner)


def test_enlarging_default_is_torch_and_matlab_differs_by_kernel_and_border():
  """Upsampling (bicubic_resize without antialias = the upsampled-input / evaluation baseline)."""
  x = _random(16, 12, seed=5)
  for oh, ow in [(32, 24), (48, 36), (64, 48)]:
    default = degrade.bicubic_resize(x, oh, ow)
    np.testing.assert_allclose(default, _torch(x, oh, ow, False), atol=1e-12)
    matlab = degrade.bicubic_resize_matlab(x, oh, ow)
    np.testing.assert_allclose(matlab, matlab_imresize(x, output_size=(oh, ow)), atol=1e-12)
    assert np.abs(default - matlab).max() > 1e-2
    # a = -0.5 without antialias equals MATLAB's enlargement away from the border (replicate vs mirror)
    a05 = degrade.bicubic_resize(x, oh, ow, a=-0.5)
    m = 2 * (oh // 16)  # 2 LR pixels
    np.testing.assert_allclose(a05[m:-m, m:-m], matlab[m:-m, m:-m], atol=1e-12)


def _table(enlarge):
  """A markdown table of docs/degradations.md: max abs difference, whole image / interior."""
  lines = [f'| {"enlarging" if enlarge else "shrinking"} | ' + ' | '.join(REFERENCES) + ' |']
  lines.append('|---|' + '---|' * len(REFERENCES))
  for variant in UP_VARIANTS if enlarge else VARIANTS:
    cells = ['{:.1e} / {:.1e}'.format(*max_differences(variant, ref, enlarge=enlarge)) for ref in REFERENCES]
    lines.append(f'| `{variant}` | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


if __name__ == '__main__':
  print(_table(False) + '\n\n' + _table(True))
