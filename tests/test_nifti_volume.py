"""mrisr_jax.nifti_volume: whole NIfTI volumes through a 2-D "model", plane chunk by plane chunk.

The models are numpy stand-ins (nearest-neighbour repeats, or tiling.super_resolve around an
identity / repeat predict function), so outputs are known exactly and no JAX compile is paid.
"""

from __future__ import annotations

import gzip
import os
import pathlib

import nibabel as nib
import numpy as np
import pytest

from mrisr_jax import nifti_volume, tiling
from mrisr_jax.data.degrade import bicubic_resize
from mrisr_jax.nifti_volume import VolumeError

pytestmark = pytest.mark.unit

SHAPE = (10, 12, 6)
ZOOMS = (0.9, 1.1, 3.0)
ORIGIN = (-20.5, 13.0, 7.25)


def _oblique_affine(zooms=ZOOMS, origin=ORIGIN) -> np.ndarray:
  """A rotated (not axis-aligned), left-handed affine with anisotropic voxels."""
  a, b = np.deg2rad(20.0), np.deg2rad(-12.0)
  rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
  rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
  aff = np.eye(4)
  aff[:3, :3] = rz @ rx @ np.diag([-1.0, 1.0, 1.0]) @ np.diag(zooms)
  aff[:3, 3] = origin
  return aff


def _volume(shape=SHAPE, seed=0) -> np.ndarray:
  """int16 magnitudes with a few bright outliers, so clipping at the 99.5th percentile matters."""
  rng = np.random.default_rng(seed)
  vol = rng.integers(0, 1000, shape).astype(np.int16)
  vol.flat[rng.choice(vol.size, 3, replace=False)] = 4000
  return vol


def _save(path, vol, affine=None, zooms=ZOOMS, codes=(1, 2)) -> pathlib.Path:
  """Saves with (sform, qform) codes `codes` (scanner, aligned by default)."""
  affine = _oblique_affine(zooms) if affine is None else affine
  img = nib.Nifti1Image(vol, affine)
  img.set_sform(affine, code=codes[0])
  img.set_qform(affine, code=codes[1])
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  nib.save(img, str(path))
  return path


def _nearest(s, calls=None):
  """In-plane "model": nearest-neighbour upsampling of both plane axes by s."""

  def sr_stack(stack):
    assert stack.dtype == np.float32 and stack.ndim == 3
    assert stack.min() >= 0.0 and stack.max() <= 1.0
    if calls is not None:
      calls.append(stack.shape)
    return np.repeat(np.repeat(stack, s, axis=1), s, axis=2)

  return sr_stack


def _split(vol, hi) -> tuple[np.ndarray, np.ndarray]:
  """(c, r): the part of vol / hi the model sees, clip(vol / hi, 0, 1), and the rest (float32)."""
  u = vol.astype(np.float32) / np.float32(hi)
  c = np.clip(u, 0.0, 1.0)
  return c, u - c


def _bicubic_axes(x, factors) -> np.ndarray:
  """The bicubic upsampling (degrade.bicubic_resize) of stored axis i by factors[i], one axis at a time."""
  for axis, f in enumerate(factors):
    if f > 1:
      moved = np.moveaxis(x, axis, -2)
      x = np.moveaxis(bicubic_resize(moved, moved.shape[-2] * f, moved.shape[-1]), -2, axis)
  return x


def _repeat_axes(x, factors) -> np.ndarray:
  for axis, f in enumerate(factors):
    x = np.repeat(x, f, axis=axis)
  return x


def _faithful_nearest(vol, hi, factors) -> np.ndarray:
  """What the module writes for a nearest-neighbour "model": hi * (nearest(c) + bicubic(r))."""
  c, r = _split(vol, hi)
  return np.float32(hi) * (_repeat_axes(c, factors) + _bicubic_axes(r, factors))


def _assert_faithful_nearest(data, vol, hi, factors):
  np.testing.assert_allclose(data, _faithful_nearest(vol, hi, factors), rtol=1e-5, atol=1e-3)


def _centres_consistent(old_aff, new_aff, factors, shape):
  """New voxel j lands on old index (j + 0.5) / f - 0.5 along every axis (identity where f = 1)."""
  rng = np.random.default_rng(1)
  f = np.asarray(factors, np.float64)
  j = np.concatenate([np.zeros((1, 3)), np.asarray(shape)[None] - 1, rng.integers(0, shape, (8, 3))]).astype(np.float64)
  np.testing.assert_allclose(
    nib.affines.apply_affine(new_aff, j), nib.affines.apply_affine(old_aff, (j + 0.5) / f - 0.5), atol=1e-4
  )


# ------------------------------------------------------------------------------ in-plane geometry


@pytest.mark.parametrize('suffix', ['.nii', '.nii.gz'])
def test_in_plane_round_trip_keeps_geometry_and_values(tmp_path, suffix):
  vol = _volume()
  src = _save(tmp_path / 'in' / f'vol{suffix}', vol)
  dst = tmp_path / 'out' / f'sr{suffix}'
  dst.parent.mkdir()
  s = 2
  # through tiling.super_resolve, as infer does, with a nearest-neighbour "network"
  predict = lambda x: np.repeat(np.repeat(x, s, axis=1), s, axis=2)  # noqa: E731
  done = nifti_volume.super_resolve_volume(
    src, dst, lambda st: tiling.super_resolve(predict, st, s, 1, False), (s, s), chunk=4, progress=False
  )

  hi = float(np.percentile(vol, nifti_volume.PERCENTILE))
  assert done['hi'] == pytest.approx(hi, rel=1e-6)
  assert done['mode'] == 'in-plane' and done['axis'] == 2 and done['factors'] == (s, s, 1)
  out_shape = (SHAPE[0] * s, SHAPE[1] * s, SHAPE[2])
  assert done['shape'] == out_shape
  assert done['zooms'] == pytest.approx((ZOOMS[0] / s, ZOOMS[1] / s, ZOOMS[2]), rel=1e-6)
  assert sorted(os.listdir(dst.parent)) == [dst.name]  # no temporaries left behind
  assert sorted(os.listdir(src.parent)) == [src.name]

  old, new = nib.load(str(src)), nib.load(str(dst))
  assert new.shape == out_shape
  assert new.get_data_dtype() == np.float32
  assert new.header.get_zooms() == pytest.approx(done['zooms'], rel=1e-6)
  assert nib.aff2axcodes(new.affine) == nib.aff2axcodes(old.affine)
  assert nib.aff2axcodes(new.affine) == nib.aff2axcodes(_oblique_affine())
  assert int(new.header['sform_code']) == 1 and int(new.header['qform_code']) == 2
  _centres_consistent(old.get_sform(), new.get_sform(), done['factors'], out_shape)
  _centres_consistent(old.get_qform(), new.get_qform(), done['factors'], out_shape)

  data = np.asarray(new.dataobj)
  assert data.dtype == np.float32
  _assert_faithful_nearest(data, vol, done['hi'], (s, s, 1))
  # the outliers (4000, 4x the percentile) are not flattened at hi: their bicubic peaks survive
  assert vol.max() > 3.9 * hi and data.max() > 3 * hi
  inside = vol <= hi  # voxels inside [0, hi] whose 4x4 bicubic footprint has no outlier
  for ax in (0, 1):
    inside &= np.roll(inside, 1, ax) & np.roll(inside, -1, ax) & np.roll(inside, 2, ax) & np.roll(inside, -2, ax)
  nearest = _repeat_axes(vol.astype(np.float32), (s, s, 1))
  keep = _repeat_axes(inside, (s, s, 1))
  np.testing.assert_allclose(data[keep], nearest[keep], rtol=1e-5)  # exactly hi * model(x / hi) there


@pytest.mark.parametrize('slice_axis', [0, 1])
def test_in_plane_slice_axis_refines_the_other_two(tmp_path, slice_axis):
  vol = _volume()
  src = _save(tmp_path / 'vol.nii', vol)
  dst = tmp_path / 'sr.nii'
  calls = []
  done = nifti_volume.super_resolve_volume(
    src, dst, _nearest(3, calls), (3, 3), slice_axis=slice_axis, chunk=4, progress=False
  )
  rows, cols = (a for a in range(3) if a != slice_axis)
  factors = [3, 3, 3]
  factors[slice_axis] = 1
  assert done['factors'] == tuple(factors) and done['axis'] == slice_axis
  # planes are (n, rows, cols) of the stored axes, in chunks of at most 4 along slice_axis
  assert {c[1:] for c in calls} == {(SHAPE[rows], SHAPE[cols])}
  assert sum(c[0] for c in calls) == SHAPE[slice_axis] and max(c[0] for c in calls) == 4

  out_shape = tuple(n * f for n, f in zip(SHAPE, factors))
  new, old = nib.load(str(dst)), nib.load(str(src))
  assert new.shape == out_shape
  assert new.header.get_zooms() == pytest.approx([z / f for z, f in zip(ZOOMS, factors)], rel=1e-6)
  _centres_consistent(old.affine, new.affine, factors, out_shape)
  _assert_faithful_nearest(np.asarray(new.dataobj), vol, done['hi'], factors)


# ------------------------------------------------------------------------- through-plane geometry


@pytest.mark.parametrize('lr_factors', [(4, 1), (1, 4)])
def test_through_plane_refines_the_thick_axis_only(tmp_path, lr_factors):
  shape, zooms = (6, 7, 5), (1.0, 1.0, 4.0)  # distinct sizes: the planes' layout is visible
  vol = _volume(shape, seed=2)
  src = _save(tmp_path / 'thick.nii.gz', vol, _oblique_affine(zooms), zooms)
  dst = tmp_path / 'sr.nii.gz'
  calls = []

  def sr_stack(stack):  # thick axis (2) on rows for (s, 1), on columns for (1, s); other axis 0
    calls.append(stack.shape)
    assert stack.shape[1:] == ((5, 6) if lr_factors == (4, 1) else (6, 5))
    return np.repeat(np.repeat(stack, lr_factors[0], axis=1), lr_factors[1], axis=2)

  done = nifti_volume.super_resolve_volume(src, dst, sr_stack, lr_factors, chunk=3, progress=False)
  assert done['mode'] == 'through-plane' and done['factors'] == (1, 1, 4)
  assert done['axis'] == 1  # planes are taken across the last axis that is not thick
  assert [c[0] for c in calls] == [3, 3, 1]
  new, old = nib.load(str(dst)), nib.load(str(src))
  assert new.shape == (6, 7, 20) and done['shape'] == (6, 7, 20)
  assert new.header.get_zooms() == pytest.approx((1.0, 1.0, 1.0), rel=1e-6)
  np.testing.assert_allclose(new.affine[:3, :2], old.affine[:3, :2], atol=1e-6)
  np.testing.assert_allclose(new.affine[:3, 2], old.affine[:3, 2] / 4, atol=1e-6)
  _centres_consistent(old.affine, new.affine, (1, 1, 4), new.shape)
  _assert_faithful_nearest(np.asarray(new.dataobj), vol, done['hi'], (1, 1, 4))
  assert sorted(os.listdir(tmp_path)) == ['sr.nii.gz', 'thick.nii.gz']


def test_through_plane_bicubic_model_through_tiling(tmp_path):
  """An upsampled-input "model" (identity on the bicubic) tiled with factors (s, 1): the volume
  is the bicubic of each (thick, other) plane along the thick axis only."""
  shape, zooms = (6, 7, 5), (1.0, 1.0, 4.0)
  vol = _volume(shape, seed=3)
  src = _save(tmp_path / 'thick.nii', vol, _oblique_affine(zooms), zooms)
  dst = tmp_path / 'sr.nii'
  done = nifti_volume.super_resolve_volume(
    src,
    dst,
    lambda st: tiling.super_resolve(lambda x: x, st, 4, 1, True, factors=(4, 1)),
    (4, 1),
    chunk=4,
    progress=False,
  )
  hi = np.float32(done['hi'])
  c, r = (a.transpose(1, 2, 0) for a in _split(vol, hi))  # (Y, Z, X) planes
  sr = (np.clip(bicubic_resize(c, 20, 6), 0.0, 1.0) + bicubic_resize(r, 20, 6)) * hi
  np.testing.assert_allclose(np.asarray(nib.load(str(dst)).dataobj), sr.transpose(2, 0, 1), rtol=1e-5, atol=1e-3)


def test_thick_axis_ambiguous_explicit_and_misused(tmp_path):
  zooms = (2.0, 2.0, 1.0)  # two equally thick axes: no single thick one
  vol = _volume((6, 5, 4), seed=4)
  src = _save(tmp_path / 'amb.nii', vol, _oblique_affine(zooms), zooms)
  dst = tmp_path / 'sr.nii'
  with pytest.raises(VolumeError, match='thick_axis') as e:
    nifti_volume.super_resolve_volume(src, dst, _nearest(2), (2, 1), progress=False)
  assert 'amb.nii' in str(e.value)
  assert not dst.exists()

  calls = []

  def sr_stack(stack):  # thick axis 0 on rows; slices across axis 2; other axis 1 on columns
    calls.append(stack.shape)
    return np.repeat(stack, 2, axis=1)

  done = nifti_volume.super_resolve_volume(src, dst, sr_stack, (2, 1), thick_axis=0, progress=False)
  assert done['factors'] == (2, 1, 1) and done['axis'] == 2
  assert calls == [(4, 6, 5)]
  new = nib.load(str(dst))
  assert new.shape == (12, 5, 4)
  assert new.header.get_zooms() == pytest.approx((1.0, 2.0, 1.0), rel=1e-6)
  _centres_consistent(nib.load(str(src)).affine, new.affine, (2, 1, 1), new.shape)
  _assert_faithful_nearest(np.asarray(new.dataobj), vol, done['hi'], (2, 1, 1))

  with pytest.raises(VolumeError, match='thick_axis') as e:  # an in-plane model has no thick axis
    nifti_volume.super_resolve_volume(src, tmp_path / 'x.nii', _nearest(2), (2, 2), thick_axis=0, progress=False)
  assert 'amb.nii' in str(e.value) and not (tmp_path / 'x.nii').exists()
  with pytest.raises(VolumeError, match='slice_axis and thick_axis'):
    nifti_volume.super_resolve_volume(
      src, tmp_path / 'x.nii', _nearest(2), (2, 1), thick_axis=0, slice_axis=0, progress=False
    )
  with pytest.raises(VolumeError, match='different amounts'):
    nifti_volume.super_resolve_volume(src, tmp_path / 'x.nii', _nearest(2), (2, 3), progress=False)
  with pytest.raises(VolumeError, match='slice_axis 3'):
    nifti_volume.super_resolve_volume(src, tmp_path / 'x.nii', _nearest(2), (2, 2), slice_axis=3, progress=False)
  assert sorted(os.listdir(tmp_path)) == ['amb.nii', 'sr.nii']


# -------------------------------------------------------------------- chunking, compression, safety


def test_chunk_size_does_not_change_the_output(tmp_path):
  vol = _volume((8, 9, 12), seed=5)
  src = _save(tmp_path / 'vol.nii', vol)
  predict = lambda x: np.repeat(np.repeat(x, 2, axis=1), 2, axis=2) ** 0.5  # noqa: E731
  outputs = []
  for chunk in (1, 5, 12, 50):
    calls = []

    def sr_stack(st):
      calls.append(st.shape[0])
      return tiling.super_resolve(predict, st, 2, 1, False)

    dst = tmp_path / f'sr{chunk}.nii'
    nifti_volume.super_resolve_volume(src, dst, sr_stack, (2, 2), chunk=chunk, progress=False)
    assert calls == [min(chunk, 12 - i) for i in range(0, 12, chunk)]
    outputs.append(np.asarray(nib.load(str(dst)).dataobj).copy())
  for other in outputs[1:]:
    np.testing.assert_array_equal(other, outputs[0])
  assert outputs[0].shape == (16, 18, 12) and np.ptp(outputs[0]) > 0


def test_nii_and_gz_inputs_and_outputs_agree(tmp_path):
  vol = _volume(seed=6)
  plain = _save(tmp_path / 'vol.nii', vol)
  packed = _save(tmp_path / 'vol.nii.gz', vol)
  a, b, c = tmp_path / 'a.nii', tmp_path / 'b.nii', tmp_path / 'c.nii.gz'
  ra = nifti_volume.super_resolve_volume(plain, a, _nearest(2), (2, 2), progress=False)
  rb = nifti_volume.super_resolve_volume(packed, b, _nearest(2), (2, 2), progress=False)
  rc = nifti_volume.super_resolve_volume(plain, c, _nearest(2), (2, 2), progress=False)
  assert ra == rb == rc
  assert a.read_bytes() == b.read_bytes()  # same header and voxels, byte for byte
  raw = c.read_bytes()
  assert raw[:2] == b'\x1f\x8b'  # really gzipped
  assert gzip.decompress(raw) == a.read_bytes()
  na, nc = nib.load(str(a)), nib.load(str(c))
  np.testing.assert_array_equal(np.asarray(nc.dataobj), np.asarray(na.dataobj))
  np.testing.assert_array_equal(nc.affine, na.affine)
  assert sorted(os.listdir(tmp_path)) == ['a.nii', 'b.nii', 'c.nii.gz', 'vol.nii', 'vol.nii.gz']


class _Boom(RuntimeError):
  pass


@pytest.mark.parametrize('src_suffix', ['.nii', '.nii.gz'])
@pytest.mark.parametrize('dst_suffix', ['.nii', '.nii.gz'])
def test_failure_midway_leaves_no_output_and_no_temporaries(tmp_path, src_suffix, dst_suffix):
  src = _save(tmp_path / 'in' / f'vol{src_suffix}', _volume(seed=7))
  out = tmp_path / 'out'
  out.mkdir()
  dst = out / f'sr{dst_suffix}'
  seen = []

  def failing(stack):
    seen.append(sorted(os.listdir(out)))  # the temporaries exist while it runs
    if len(seen) == 2:
      raise _Boom('model crashed')
    return np.repeat(np.repeat(stack, 2, axis=1), 2, axis=2)

  with pytest.raises(_Boom):
    nifti_volume.super_resolve_volume(src, dst, failing, (2, 2), chunk=2, progress=False)
  assert any(name.startswith(f'.{dst.name}.') for name in seen[0])
  assert any(name.startswith('.decompressed.') for name in seen[0]) == (src_suffix == '.nii.gz')
  assert not dst.exists()
  assert os.listdir(out) == []
  assert os.listdir(src.parent) == [src.name]

  # an existing output is left as it was when the run fails
  dst.write_bytes(b'previous result')
  seen.clear()
  with pytest.raises(_Boom):
    nifti_volume.super_resolve_volume(src, dst, failing, (2, 2), chunk=2, progress=False)
  assert dst.read_bytes() == b'previous result'
  assert os.listdir(out) == [dst.name]

  # ...and replaced when it succeeds
  nifti_volume.super_resolve_volume(src, dst, _nearest(2), (2, 2), progress=False)
  assert nib.load(str(dst)).shape == (20, 24, 6)
  assert os.listdir(out) == [dst.name]


# --------------------------------------------------------------------------------- intensity scale


def test_intensity_scale_exact_and_strided(monkeypatch):
  rng = np.random.default_rng(8)
  small = rng.uniform(0.0, 500.0, (5, 7, 9)).astype(np.float32)
  img = nib.Nifti1Image(small, np.eye(4))
  exact = float(np.percentile(small, nifti_volume.PERCENTILE))
  assert nifti_volume.intensity_scale(img, 'small.nii') == pytest.approx(exact, rel=1e-6)
  assert nifti_volume.intensity_scale(img, 'small.nii', chunk=2) == pytest.approx(exact, rel=1e-6)

  # 315 voxels, at most 40 samples: every 8th voxel in stored (Fortran) order, across chunks of
  # planes whose sizes (35 or 70 voxels) are not multiples of the stride
  monkeypatch.setattr(nifti_volume, 'PERCENTILE_SAMPLES', 40)
  strided = float(np.percentile(small.ravel(order='F')[::8], nifti_volume.PERCENTILE))
  for chunk in (1, 2, 16):
    assert nifti_volume.intensity_scale(img, 'small.nii', chunk=chunk) == pytest.approx(strided, rel=1e-6)
  assert strided != pytest.approx(exact, rel=1e-6)

  monkeypatch.setattr(nifti_volume, 'PERCENTILE_SAMPLES', 1000)
  big = rng.uniform(0.0, 1000.0, (40, 40, 30)).astype(np.float32)
  big_exact = float(np.percentile(big, nifti_volume.PERCENTILE))
  got = nifti_volume.intensity_scale(nib.Nifti1Image(big, np.eye(4)), 'big.nii')
  assert got == pytest.approx(big_exact, rel=0.02)
  assert got == pytest.approx(float(np.percentile(big.ravel(order='F')[::48], 99.5)), rel=1e-6)


# ------------------------------------------------------------------------------------- bad inputs


def _bad_inputs(tmp_path):
  vol4 = _save(tmp_path / 'four_d.nii', np.ones((4, 4, 4, 2), np.int16), np.eye(4))
  junk = tmp_path / 'junk.nii'
  junk.write_bytes(b'this is not a NIfTI file\n' * 40)
  junk_gz = tmp_path / 'junk.nii.gz'
  junk_gz.write_bytes(b'not gzip either')
  nan_vol = np.ones((4, 4, 4), np.float32)
  nan_vol[1, 2, 3] = np.nan
  nan = _save(tmp_path / 'has_nan.nii', nan_vol, np.eye(4))
  zero = _save(tmp_path / 'all_zero.nii.gz', np.zeros((4, 4, 4), np.int16), np.eye(4))
  return [(vol4, '3-D'), (junk, 'NIfTI'), (junk_gz, 'decompress'), (nan, 'non-finite'), (zero, 'percentile')]


def test_bad_inputs_raise_volume_error_naming_the_file(tmp_path):
  src_dir, out = tmp_path / 'in', tmp_path / 'out'
  src_dir.mkdir()
  out.mkdir()
  for src, words in _bad_inputs(src_dir):
    dst = out / 'sr.nii.gz'
    with pytest.raises(VolumeError, match=words) as e:
      nifti_volume.super_resolve_volume(src, dst, _nearest(2), (2, 2), progress=False)
    assert src.name in str(e.value) and '\n' not in str(e.value)
    assert os.listdir(out) == []


def test_singleton_fourth_dimension_is_a_volume(tmp_path):
  """(X, Y, Z, 1) is read as a volume; an unset sform (code 0) stays unset, the qform moves."""
  vol = _volume((4, 5, 3), seed=9)[..., None]
  aff = np.diag([1.0, 2.0, 3.0, 1.0])
  aff[:3, 3] = (4.0, -5.0, 6.0)
  src = _save(tmp_path / 'v4.nii', vol, aff, (1.0, 2.0, 3.0), codes=(0, 1))
  dst = tmp_path / 'sr.nii'
  done = nifti_volume.super_resolve_volume(src, dst, _nearest(2), (2, 2), progress=False)
  new = nib.load(str(dst))
  assert new.shape == done['shape'] == (8, 10, 3)
  assert new.header.get_zooms() == pytest.approx((0.5, 1.0, 3.0))
  assert int(new.header['sform_code']) == 0 and int(new.header['qform_code']) == 1
  _centres_consistent(aff, new.affine, (2, 2, 1), new.shape)
  _assert_faithful_nearest(np.asarray(new.dataobj), vol[..., 0], done['hi'], (2, 2, 1))


def _with_sform(path, srow, qform_code=0) -> pathlib.Path:
  """A volume whose header sform (code 1) has rows `srow`, written field by field: nibabel will not
  build an image around a singular affine, but files with one exist."""
  img = nib.Nifti1Image(_volume((6, 5, 3), seed=10), np.eye(4))
  h = img.header.copy()
  h['sform_code'], h['qform_code'] = 1, qform_code
  h['srow_x'], h['srow_y'], h['srow_z'] = srow
  h.set_data_offset(352)
  with open(path, 'wb') as f:
    h.write_to(f)
    f.write(np.asarray(img.dataobj).astype(h.get_data_dtype()).tobytes(order='F'))
  return path


def test_singular_affine_is_one_line_naming_the_file(tmp_path):
  out = tmp_path / 'out'
  out.mkdir()
  zero = _with_sform(tmp_path / 'zero.nii', ([0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]))
  flat = _with_sform(tmp_path / 'flat.nii', ([1, 0, 0, 0], [2, 0, 0, 0], [0, 0, 1, 0]))  # rank 2
  for src in (zero, flat):
    with pytest.raises(VolumeError, match='has a singular sform') as e:
      nifti_volume.super_resolve_volume(src, out / 'sr.nii.gz', _nearest(2), (2, 2), progress=False)
    assert str(e.value).startswith(f'{src}: ') and '\n' not in str(e.value)
    assert os.listdir(out) == []
  ok = _with_sform(tmp_path / 'ok.nii', ([0, 0, 2, 1], [0, 3, 0, 2], [-1, 0, 0, 3]))  # permuted, flipped: fine
  nifti_volume.super_resolve_volume(ok, out / 'sr.nii', _nearest(2), (2, 2), progress=False)
  _centres_consistent(nib.load(str(ok)).affine, nib.load(str(out / 'sr.nii')).affine, (2, 2, 1), (12, 10, 3))


@pytest.mark.parametrize('mask', [0o022, 0o077])
@pytest.mark.parametrize('suffix', ['.nii', '.nii.gz'])
def test_output_mode_honours_the_umask(tmp_path, mask, suffix):
  src = _save(tmp_path / 'vol.nii.gz', _volume((6, 5, 3), seed=11))
  old = os.umask(mask)
  try:
    nifti_volume.super_resolve_volume(src, tmp_path / f'sr{suffix}', _nearest(2), (2, 2), progress=False)
  finally:
    os.umask(old)
  assert (tmp_path / f'sr{suffix}').stat().st_mode & 0o777 == 0o666 & ~mask


def test_bicubic_model_gives_the_bicubic_volume_whatever_the_range(tmp_path):
  """The intensity rule is linear around the model: a model that is bicubic (unclipped) on [0, 1]
  gives the bicubic upsampling of the whole volume, bright outliers and negative voxels included."""
  vol = _volume((12, 10, 4), seed=12).astype(np.float32)
  vol[2:4, 3:5, 1] = -700.0
  src = _save(tmp_path / 'vol.nii', vol)
  done = nifti_volume.super_resolve_volume(
    src, tmp_path / 'sr.nii', lambda st: bicubic_resize(st, st.shape[1] * 3, st.shape[2] * 3), (3, 3), progress=False
  )
  assert done['below'] == pytest.approx(4 / vol.size) and done['above'] == pytest.approx(3 / vol.size)
  data = np.asarray(nib.load(str(tmp_path / 'sr.nii')).dataobj)
  np.testing.assert_allclose(data, _bicubic_axes(vol, (3, 3, 1)), rtol=1e-5, atol=2e-3)
  assert data.max() > 3500 and data.min() < -600  # neither flattened at the percentile nor zeroed
