"""NiftiSliceSource: RAS reorientation, normalisation, slice skipping, caching, bad files."""

from __future__ import annotations

import concurrent.futures
import logging
import pathlib
import pickle
import re

import nibabel as nib
import numpy as np
import pytest

from mrisr_jax.data import nifti
from mrisr_jax.data.errors import DataError

pytestmark = pytest.mark.unit

SHAPE = (12, 10, 8)  # RAS (X, Y, Z)
ZOOMS = (0.9, 1.2, 3.0)
ORIGIN = np.array([-5.0, 7.0, 2.5])


def _ras_volume(seed: int = 0) -> np.ndarray:
  """A positive float32 volume with signal in every slice (and a few outliers)."""
  rng = np.random.default_rng(seed)
  vol = rng.uniform(1.0, 100.0, SHAPE).astype(np.float32)
  vol[0, 0, 0] = 1000.0  # outlier above the 99.5th percentile
  return vol


def _ras_affine() -> np.ndarray:
  aff = np.diag(list(ZOOMS) + [1.0])
  aff[:3, 3] = ORIGIN
  return aff


def _to_psl(ras: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(stored array, affine) of the same image stored with axes (P, S, L), written out by hand.

  stored[i, j, k] = ras[X-1-k, Y-1-i, j]: stored axis 0 runs A->P, axis 1 I->S, axis 2 R->L.
  """
  x, y, _ = ras.shape
  stored = np.transpose(ras, (1, 2, 0))[::-1, :, ::-1].copy()
  aff = np.zeros((4, 4))
  aff[0, 2] = -ZOOMS[0]  # world x = ox + 0.9 * (X-1-k)
  aff[1, 0] = -ZOOMS[1]  # world y = oy + 1.2 * (Y-1-i)
  aff[2, 1] = ZOOMS[2]  # world z = oz + 3.0 * j
  aff[:3, 3] = ORIGIN + [ZOOMS[0] * (x - 1), ZOOMS[1] * (y - 1), 0.0]
  aff[3, 3] = 1.0
  return stored, aff


def _save(path: pathlib.Path, data, affine=None) -> pathlib.Path:
  nib.Nifti1Image(np.asarray(data), _ras_affine() if affine is None else affine).to_filename(str(path))
  return path


def _expected(ras: np.ndarray, percentiles=(0.0, 99.5)) -> np.ndarray:
  lo, hi = np.percentile(ras, percentiles)
  return np.clip((ras.astype(np.float64) - lo) / (hi - lo), 0, 1)


def _slices(src, v: int = 0) -> np.ndarray:
  return src.read_volume(v)


def test_non_ras_file_gives_the_same_slices_as_ras(tmp_path):
  ras = _ras_volume()
  stored, aff = _to_psl(ras)
  ras_file = _save(tmp_path / 'ras.nii', ras)
  psl_nii = _save(tmp_path / 'psl.nii', stored, aff)
  psl_gz = _save(tmp_path / 'pslgz.nii.gz', stored, aff)
  # The hand-written fixture really is the same image as nibabel sees it.
  canon = nib.as_closest_canonical(nib.load(str(psl_nii)))
  np.testing.assert_array_equal(canon.get_fdata(), ras)
  np.testing.assert_allclose(canon.affine, _ras_affine(), atol=1e-6)
  expected = _expected(ras)
  for axis in (0, 1, 2):
    src = nifti.NiftiSliceSource([ras_file, psl_nii, psl_gz], slice_axis=axis, min_foreground=0)
    assert [v.num_slices for v in src.volumes] == [SHAPE[axis]] * 3
    want = np.moveaxis(expected, axis, 0)
    for v in range(3):
      assert src.volumes[v].shape == tuple(n for i, n in enumerate(SHAPE) if i != axis)
      np.testing.assert_allclose(_slices(src, v), want, atol=1e-6)
    np.testing.assert_array_equal(_slices(src, 1), _slices(src, 0))
    np.testing.assert_array_equal(_slices(src, 2), _slices(src, 0))
    meta = src.volumes[1].metadata
    assert meta['orientation'] == ('P', 'S', 'L')
    assert src.volumes[0].metadata['orientation'] == ('R', 'A', 'S')
    np.testing.assert_allclose(meta['affine'], canon.affine, atol=1e-6)
    assert meta['shape'] == SHAPE and meta['slice_axis'] == axis
    assert set(src._cache) == {2}  # .nii slices come from the memmap, never the volume cache


def test_voxel_sizes_are_ras_zooms(tmp_path):
  stored, aff = _to_psl(_ras_volume())
  path = _save(tmp_path / 'psl.nii', stored, aff)
  assert nib.load(str(path)).header.get_zooms() == pytest.approx((1.2, 3.0, 0.9))
  canon_zooms = nib.as_closest_canonical(nib.load(str(path))).header.get_zooms()
  for axis, in_plane in ((0, (1.2, 3.0)), (1, (0.9, 3.0)), (2, (0.9, 1.2))):
    meta = nifti.NiftiSliceSource([path], slice_axis=axis).volumes[0].metadata
    assert meta['voxel_size'] == pytest.approx(ZOOMS)
    assert meta['voxel_size'] == pytest.approx(canon_zooms)
    assert meta['slice_voxel_size'] == pytest.approx(in_plane)


def test_percentile_normalisation(tmp_path):
  ras = _ras_volume(1)
  ras[3, 4, 5] = -20.0  # slightly negative (interpolation): clips to 0
  path = _save(tmp_path / 'v.nii', ras)
  pct = (1.0, 99.0)
  src = nifti.NiftiSliceSource([path], percentiles=pct, min_foreground=0)
  lo, hi = np.percentile(ras, pct)
  meta = src.volumes[0].metadata
  assert (meta['lo'], meta['hi']) == pytest.approx((lo, hi))
  got = np.moveaxis(_slices(src), 0, -1)
  np.testing.assert_allclose(got, np.clip((ras - lo) / (hi - lo), 0, 1), atol=1e-6)
  assert got.dtype == np.float32 and got.min() == 0.0 and got.max() == 1.0
  np.testing.assert_array_equal(src.read_normalised_volume(0), got)


def test_scl_slope_is_applied(tmp_path):
  ras = _ras_volume(2) * 7.0
  img = nib.Nifti1Image(ras, _ras_affine())
  img.set_data_dtype(np.int16)  # nibabel stores int16 with a scale factor
  img.to_filename(str(tmp_path / 'scaled.nii'))
  loaded = nib.load(str(tmp_path / 'scaled.nii'))
  assert loaded.dataobj.slope != 1.0
  src = nifti.NiftiSliceSource([tmp_path / 'scaled.nii'], min_foreground=0)
  want = _expected(loaded.get_fdata().astype(np.float32))
  assert src.volumes[0].metadata['hi'] > 300  # scaled values, not the raw int16
  np.testing.assert_allclose(np.moveaxis(_slices(src), 0, -1), want, atol=1e-6)


def test_slices_without_signal_are_skipped(tmp_path):
  ras = _ras_volume(3)
  ras[..., 0] = 0.0
  ras[..., -1] = 0.0
  ras[..., 1] = 0.0
  ras[0, 0, 1] = 100.0  # one bright pixel: 1/120 < min_foreground 0.01
  path = _save(tmp_path / 'v.nii.gz', ras)
  src = nifti.NiftiSliceSource([path])
  z = SHAPE[2]
  assert src.volumes[0].metadata['slice_index'] == list(range(2, z - 1))
  assert len(src) == z - 3
  expected = _expected(ras)
  assert src[0]['slice'] == 0
  np.testing.assert_allclose(src[0]['image'], expected[..., 2], atol=1e-6)
  np.testing.assert_allclose(src[-1]['image'], expected[..., z - 2], atol=1e-6)
  assert nifti.NiftiSliceSource([path], min_foreground=0).volumes[0].num_slices == z
  assert nifti.NiftiSliceSource([path], min_foreground=0.005).volumes[0].num_slices == z - 2
  # Skipped slices are still in the whole volume.
  assert src.read_normalised_volume(0).shape == SHAPE
  with pytest.raises(DataError, match=r'v\.nii\.gz: no slice has signal above'):
    nifti.NiftiSliceSource([path], min_foreground=1.0)


def test_trailing_singleton_4d_is_3d(tmp_path):
  ras = _ras_volume(4)
  a = nifti.NiftiSliceSource([_save(tmp_path / 'a.nii', ras)])
  b = nifti.NiftiSliceSource([_save(tmp_path / 'b.nii', ras[..., None])])
  c = nifti.NiftiSliceSource([_save(tmp_path / 'c.nii.gz', ras[..., None])])
  assert b.volumes[0].metadata['shape'] == SHAPE
  np.testing.assert_array_equal(_slices(b), _slices(a))
  np.testing.assert_array_equal(_slices(c), _slices(a))


def test_gz_and_nii_identical_and_pickling(tmp_path, caplog):
  ras = _ras_volume(5)
  stored, aff = _to_psl(ras)
  gz = _save(tmp_path / 'a.nii.gz', stored, aff)
  nii = _save(tmp_path / 'b.nii', stored, aff)
  gz2 = _save(tmp_path / 'c.nii.gz', _ras_volume(6))
  with caplog.at_level(logging.WARNING):
    src = nifti.NiftiSliceSource([gz, nii, gz2], cache_volumes=1)
  assert 'Decompress them to .nii' in caplog.text
  assert [v.name for v in src.volumes] == ['a', 'b', 'c']
  np.testing.assert_array_equal(_slices(src, 0), _slices(src, 1))
  n = src.volumes[0].num_slices
  before = [src[i]['image'] for i in range(len(src))]
  assert len(src._cache) == 1  # LRU holds cache_volumes volumes
  src[0]  # pylint: disable=pointless-statement
  restored = pickle.loads(pickle.dumps(src))
  assert not restored._cache and not restored._images  # caches are not pickled
  for i in range(len(src)):
    np.testing.assert_array_equal(restored[i]['image'], before[i])
    assert restored[i]['volume'] == src[i]['volume']
  assert restored[n]['volume'] == 'b'
  # Concurrent reads (grain threads) through a one-volume cache give the same slices.
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    order = list(range(len(src))) * 3
    got = list(pool.map(lambda i: restored[i]['image'], order))
  for i, image in zip(order, got):
    np.testing.assert_array_equal(image, before[i])
  # Slices handed out are copies: changing one does not change the cache.
  src[0]['image'][:] = 5.0
  np.testing.assert_array_equal(src[0]['image'], before[0])
  src.close()
  np.testing.assert_array_equal(src[n]['image'], before[n])


def _bad_files(tmp_path: pathlib.Path) -> dict[str, tuple[pathlib.Path, str]]:
  """name -> (path, pattern its error must match)."""
  ras = _ras_volume(7)
  bad = {}
  bad['4d'] = (
    _save(tmp_path / 'four.nii', np.stack([ras] * 3, axis=-1)),
    r'shape \(12, 10, 8, 3\); expected a 3-D volume',
  )
  bad['2d'] = (_save(tmp_path / 'two.nii', ras[..., 0]), r'shape \(12, 10\); expected a 3-D volume')
  garbage = tmp_path / 'x.nii'
  garbage.write_bytes(b'this is not a NIfTI file\n' * 40)
  bad['garbage'] = (garbage, 'cannot read as NIfTI')
  good_gz = _save(tmp_path / 'full.nii.gz', ras)
  truncated = tmp_path / 'trunc.nii.gz'
  truncated.write_bytes(good_gz.read_bytes()[: good_gz.stat().st_size // 2])
  good_gz.unlink()
  bad['truncated_gz'] = (truncated, 'cannot read')
  short = _save(tmp_path / 'short.nii', ras)
  short.write_bytes(short.read_bytes()[:1000])
  bad['truncated_nii'] = (short, 'cannot read')
  bad['zero'] = (_save(tmp_path / 'zero.nii', np.zeros(SHAPE, np.float32)), 'has no signal')
  header = nib.Nifti1Image(ras, _ras_affine()).header  # a zero sform: nibabel will not save one
  header['srow_x'] = header['srow_y'] = header['srow_z'] = np.zeros(4)
  header['sform_code'], header['qform_code'] = 1, 0
  header.set_data_offset(352)
  with open(tmp_path / 'zero_affine.nii', 'wb') as f:
    header.write_to(f)
    f.write(ras.astype(header.get_data_dtype()).tobytes(order='F'))
  bad['zero_affine'] = (tmp_path / 'zero_affine.nii', 'has a degenerate affine')
  nan = ras.copy()
  nan[1, 2, 3] = np.nan
  nan[4, 5, 6] = np.inf
  bad['nan'] = (_save(tmp_path / 'nan.nii', nan), r'2 non-finite value\(s\)')
  return bad


def test_bad_files_raise_one_line_errors_or_are_skipped(tmp_path):
  bad = _bad_files(tmp_path)
  for name, (path, pattern) in bad.items():
    with pytest.raises(DataError) as info:
      nifti.NiftiSliceSource([path])
    msg = str(info.value)
    assert msg.startswith(f'{path}: '), (name, msg)
    assert '\n' not in msg
    assert re.search(pattern, msg), (name, msg)
  good = _save(tmp_path / 'good.nii', _ras_volume(8))
  paths = [p for p, _ in bad.values()]
  src = nifti.NiftiSliceSource(paths + [good], skip_bad_files=True)
  assert [v.name for v in src.volumes] == ['good']
  assert len(src.skipped) == len(bad)
  assert [p for p, _ in src.skipped] == paths
  assert all(msg.startswith(f'{p}: ') for p, msg in src.skipped)
  with pytest.raises(DataError, match='no usable volumes'):
    nifti.NiftiSliceSource(paths, skip_bad_files=True)


def test_list_files(tmp_path):
  for name in ('b.nii.gz', 'a.nii', 'c.txt', 'd.nii.gz.bak', 'e.img', 'C.NII'):
    (tmp_path / name).write_bytes(b'')
  (tmp_path / 'dir.nii').mkdir()
  (tmp_path / 'sub').mkdir()
  (tmp_path / 'sub' / 'f.nii').write_bytes(b'')
  assert [p.name for p in nifti.list_files(tmp_path)] == ['C.NII', 'a.nii', 'b.nii.gz']
  with pytest.raises(DataError, match=r'missing: no \.nii/\.nii\.gz files .*does not exist'):
    nifti.list_files(tmp_path / 'missing')
  with pytest.raises(DataError, match=r'sub2: no \.nii/\.nii\.gz files'):
    (tmp_path / 'sub2').mkdir()
    nifti.list_files(tmp_path / 'sub2')
  assert nifti.volume_name(pathlib.Path('x/brain.T1.nii.gz')) == 'brain.T1'
  assert nifti.volume_name(pathlib.Path('x/brain.nii')) == 'brain'
